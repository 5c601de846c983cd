"""Shutting a worker down: grace period, interrupted jobs, signals and fatal errors.

Whatever the way a worker stops, no job may be lost or left locked by it, and
an interrupted attempt is not counted.
"""

from __future__ import annotations

import asyncio
import dataclasses
import signal
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.rows import dict_row

import gwcore
from gwcore import hookimpl

ADD_PLUGINS = gwcore.create_plugin_manager(builtins=False, entry_points=False)
WORKER_PROCESS = Path(__file__).with_name("worker_process.py")
WAIT_TIMEOUT = 20.0


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------


class ShutdownRecorder:
    def __init__(self) -> None:
        self.completed: list[int] = []
        self.interrupted: list[tuple[int, str]] = []
        self.shutdowns: list[Any] = []

    @hookimpl
    def gw_job_complete(self, ctx: Any) -> None:
        self.completed.append(ctx.job.id)

    @hookimpl
    def gw_job_interrupted(self, ctx: Any) -> None:
        self.interrupted.append((ctx.job.id, ctx.reason))

    @hookimpl
    def gw_worker_shutdown(self, ctx: Any) -> None:
        self.shutdowns.append(ctx)


def make_worker(
    url: str,
    schema: str,
    tasks: Mapping[str, Callable[..., Any]],
    *,
    plugins: Sequence[object] = (),
    **options: Any,
) -> gwcore.Worker:
    return gwcore.Worker(
        url,
        schema=schema,
        tasks=tasks,
        plugin_manager=gwcore.create_plugin_manager(plugins, entry_points=False),
        **options,
    )


async def add(
    conn: psycopg.AsyncConnection[Any], schema: str, identifier: str, payload: Any = None, **options: Any
) -> gwcore.Job:
    job = await gwcore.add_job(conn, identifier, payload, schema=schema, plugins=ADD_PLUGINS, **options)
    assert job is not None
    return job


async def job_row(conn: psycopg.AsyncConnection[Any], schema: str, job_id: int) -> dict[str, Any] | None:
    query = sql.SQL("select * from {}._private_jobs where id = %s").format(sql.Identifier(schema))
    async with conn.cursor(row_factory=dict_row) as cursor:
        await cursor.execute(query, [job_id])
        return await cursor.fetchone()


async def locked_by(conn: psycopg.AsyncConnection[Any], schema: str, worker_id: str) -> tuple[int, int]:
    """Return how many jobs and queues are still locked by ``worker_id``."""
    query = sql.SQL(
        "select (select count(*) from {schema}._private_jobs where locked_by = %(worker_id)s),"
        " (select count(*) from {schema}._private_job_queues where locked_by = %(worker_id)s)"
    ).format(schema=sql.Identifier(schema))
    cursor = await conn.execute(query, {"worker_id": worker_id})
    row = await cursor.fetchone()
    assert row is not None
    return row[0], row[1]


async def wait_until(
    condition: Callable[[], Awaitable[bool]], what: str, wait_seconds: float = WAIT_TIMEOUT
) -> None:
    deadline = time.monotonic() + wait_seconds
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {wait_seconds} s waiting for {what}")
        await asyncio.sleep(0.05)


async def wait_event(event: threading.Event | asyncio.Event, what: str) -> None:
    if isinstance(event, asyncio.Event):
        await asyncio.wait_for(event.wait(), WAIT_TIMEOUT)
    elif not await asyncio.to_thread(event.wait, WAIT_TIMEOUT):
        raise AssertionError(f"timed out after {WAIT_TIMEOUT} s waiting for {what}")


# ---------------------------------------------------------------------------
# In-process shutdown
# ---------------------------------------------------------------------------


async def test_stop_lets_job_finish(
    gw_database_url: str, gw_schema: str, gw_conn: psycopg.AsyncConnection[Any]
) -> None:
    recorder = ShutdownRecorder()
    started = asyncio.Event()
    release = asyncio.Event()
    aborted_at_end: list[bool] = []

    async def slow(payload: Any, ctx: gwcore.JobContext) -> None:
        started.set()
        await release.wait()
        aborted_at_end.append(ctx.aborted)

    job = await add(gw_conn, gw_schema, "slow", queue_name="finishing")
    worker = make_worker(
        gw_database_url,
        gw_schema,
        {"slow": slow},
        plugins=[recorder],
        grace_period=30,
        worker_id="worker-grace",
    )
    run_task = asyncio.create_task(worker.run())
    await wait_event(started, "the job to start")

    worker.stop()
    await asyncio.sleep(0.2)
    assert not run_task.done()  # the worker waits for the running job
    release.set()
    await asyncio.wait_for(run_task, WAIT_TIMEOUT)

    assert aborted_at_end == [False]
    assert await job_row(gw_conn, gw_schema, job.id) is None
    assert recorder.completed == [job.id]
    assert recorder.interrupted == []
    assert recorder.shutdowns[0].reason == "graceful"
    assert await locked_by(gw_conn, gw_schema, "worker-grace") == (0, 0)


async def test_grace_period_expiry_interrupts(
    gw_database_url: str, gw_schema: str, gw_conn: psycopg.AsyncConnection[Any]
) -> None:
    recorder = ShutdownRecorder()
    async_started = asyncio.Event()
    sync_started = threading.Event()
    sync_finished = threading.Event()
    abort_seen: dict[str, bool] = {}

    async def endless_async(payload: Any, ctx: gwcore.JobContext) -> None:
        async_started.set()
        try:
            await asyncio.sleep(120)
        except asyncio.CancelledError:
            abort_seen["async"] = ctx.abort_signal.is_set()
            raise

    def endless_sync(payload: Any, ctx: gwcore.JobContext) -> None:
        sync_started.set()
        deadline = time.monotonic() + 60
        # A thread cannot be cancelled, so a plain def task polls its abort signal.
        while not ctx.aborted and time.monotonic() < deadline:
            time.sleep(0.02)
        abort_seen["sync"] = ctx.aborted
        sync_finished.set()

    fresh = await add(gw_conn, gw_schema, "endless_async", queue_name="interrupted")
    retried = await add(gw_conn, gw_schema, "endless_sync")
    # A job that already failed twice: the interrupted third attempt must not count.
    await gw_conn.execute(
        sql.SQL("update {}._private_jobs set attempts = 2 where id = %s").format(sql.Identifier(gw_schema)),
        [retried.id],
    )
    worker = make_worker(
        gw_database_url,
        gw_schema,
        {"endless_async": endless_async, "endless_sync": endless_sync},
        plugins=[recorder],
        concurrency=2,
        grace_period=0.5,
        worker_id="worker-expired",
    )
    run_task = asyncio.create_task(worker.run())
    await wait_event(async_started, "the async job to start")
    await wait_event(sync_started, "the sync job to start")

    worker.stop()
    await asyncio.wait_for(run_task, WAIT_TIMEOUT)
    # run() does not wait for task threads, so the plain def task may still be returning.
    await wait_event(sync_finished, "the sync task to return")

    assert abort_seen == {"async": True, "sync": True}
    fresh_row = await job_row(gw_conn, gw_schema, fresh.id)
    assert fresh_row is not None
    assert fresh_row["attempts"] == 0
    assert fresh_row["locked_by"] is None
    assert fresh_row["locked_at"] is None
    assert fresh_row["last_error"] is None
    retried_row = await job_row(gw_conn, gw_schema, retried.id)
    assert retried_row is not None
    assert retried_row["attempts"] == 2
    assert retried_row["locked_by"] is None
    assert sorted(recorder.interrupted) == sorted([(fresh.id, "shutdown"), (retried.id, "shutdown")])
    assert recorder.completed == []
    assert await locked_by(gw_conn, gw_schema, "worker-expired") == (0, 0)


async def test_immediate_stop_skips_grace(
    gw_database_url: str, gw_schema: str, gw_conn: psycopg.AsyncConnection[Any]
) -> None:
    recorder = ShutdownRecorder()
    started = asyncio.Event()
    abort_seen: list[bool] = []

    async def endless(payload: Any, ctx: gwcore.JobContext) -> None:
        started.set()
        try:
            await asyncio.sleep(120)
        except asyncio.CancelledError:
            abort_seen.append(ctx.aborted)
            raise

    job = await add(gw_conn, gw_schema, "endless")
    worker = make_worker(
        gw_database_url,
        gw_schema,
        {"endless": endless},
        plugins=[recorder],
        grace_period=100,
        worker_id="worker-immediate",
    )
    run_task = asyncio.create_task(worker.run())
    await wait_event(started, "the job to start")

    worker.stop(immediate=True)
    # Waiting the 100 s grace period would exceed this timeout.
    await asyncio.wait_for(run_task, WAIT_TIMEOUT)

    assert abort_seen == [True]
    row = await job_row(gw_conn, gw_schema, job.id)
    assert row is not None
    assert row["attempts"] == 0
    assert row["locked_by"] is None
    assert recorder.interrupted == [(job.id, "shutdown")]
    assert await locked_by(gw_conn, gw_schema, "worker-immediate") == (0, 0)


async def test_cancelled_run_hands_back(
    gw_database_url: str, gw_schema: str, gw_conn: psycopg.AsyncConnection[Any]
) -> None:
    recorder = ShutdownRecorder()
    started = asyncio.Event()

    async def endless(payload: Any, ctx: gwcore.JobContext) -> None:
        started.set()
        await asyncio.sleep(120)

    job = await add(gw_conn, gw_schema, "endless", queue_name="cancelled")
    worker = make_worker(
        gw_database_url,
        gw_schema,
        {"endless": endless},
        plugins=[recorder],
        grace_period=100,
        worker_id="worker-cancelled",
    )
    run_task = asyncio.create_task(worker.run())
    await wait_event(started, "the job to start")

    run_task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(run_task, WAIT_TIMEOUT)

    row = await job_row(gw_conn, gw_schema, job.id)
    assert row is not None
    assert row["attempts"] == 0
    assert row["locked_by"] is None
    assert recorder.interrupted == [(job.id, "shutdown")]
    assert await locked_by(gw_conn, gw_schema, "worker-cancelled") == (0, 0)


async def test_untracked_lock_handed_back(
    gw_database_url: str, gw_schema: str, gw_conn: psycopg.AsyncConnection[Any]
) -> None:
    # A fetch whose reply never arrived leaves a job locked by the worker without the worker
    # knowing it. The last unlock at shutdown must hand it back with its attempt given back.
    job = await add(gw_conn, gw_schema, "unknown_to_worker", queue_name="lost_reply")
    worker = make_worker(
        gw_database_url, gw_schema, {"noop": lambda payload, ctx: None}, worker_id="worker-lost-reply"
    )
    run_task = asyncio.create_task(worker.run())
    await wait_until(lambda: _worker_listening(gw_conn, worker), "the worker to start")
    await gw_conn.execute(
        sql.SQL(
            "with locked as (update {s}._private_jobs set locked_by = %(w)s, locked_at = now(),"
            " attempts = attempts + 1 where id = %(id)s returning job_queue_id)"
            " update {s}._private_job_queues as q set locked_by = %(w)s, locked_at = now()"
            " from locked where q.id = locked.job_queue_id"
        ).format(s=sql.Identifier(gw_schema)),
        {"w": "worker-lost-reply", "id": job.id},
    )

    worker.stop()
    await asyncio.wait_for(run_task, WAIT_TIMEOUT)

    row = await job_row(gw_conn, gw_schema, job.id)
    assert row is not None
    assert row["attempts"] == 0
    assert row["locked_by"] is None
    assert await locked_by(gw_conn, gw_schema, "worker-lost-reply") == (0, 0)


async def _worker_listening(conn: psycopg.AsyncConnection[Any], worker: gwcore.Worker) -> bool:
    listener = worker._listener
    return listener is not None and listener.connected.is_set()


async def test_unwritten_outcome_stays_locked(
    gw_database_url: str,
    gw_schema: str,
    gw_conn: psycopg.AsyncConnection[Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A job whose task succeeded but whose completion cannot be written must not be handed
    # back, or it would run a second time: it stays locked for the stale-lock sweep.
    monkeypatch.setattr("gwcore.worker.OUTCOME_WRITE_DEADLINE", 0.5)
    ran: list[int] = []

    async def succeeds(payload: Any, ctx: gwcore.JobContext) -> None:
        ran.append(ctx.id)

    job = await add(gw_conn, gw_schema, "succeeds")
    worker = make_worker(gw_database_url, gw_schema, {"succeeds": succeeds}, worker_id="worker-unwritten")
    # Every completion fails as a dropped connection would, with a psycopg error.
    broken = dataclasses.replace(worker._queries, complete_jobs=b"select 1 / 0")
    monkeypatch.setattr(worker, "_queries", broken)
    run_task = asyncio.create_task(worker.run())
    await wait_until(lambda: _ran(ran), "the task to run")

    worker.stop()
    await asyncio.wait_for(run_task, WAIT_TIMEOUT)

    row = await job_row(gw_conn, gw_schema, job.id)
    assert ran == [job.id]
    assert row is not None
    assert row["locked_by"] == "worker-unwritten"
    assert row["attempts"] == 1


async def _ran(ran: list[int]) -> bool:
    return bool(ran)


async def test_schema_too_new_raises(
    gw_database_url: str, gw_schema: str, gw_conn: psycopg.AsyncConnection[Any]
) -> None:
    calls: list[int] = []

    async def never(payload: Any, ctx: gwcore.JobContext) -> None:
        calls.append(ctx.id)

    job = await add(gw_conn, gw_schema, "never")
    await gw_conn.execute(
        sql.SQL("insert into {}.migrations (id, breaking) values (999, true)").format(
            sql.Identifier(gw_schema)
        )
    )
    worker = make_worker(gw_database_url, gw_schema, {"never": never}, worker_id="worker-too-new")

    with pytest.raises(gwcore.SchemaTooNewError) as raised:
        await asyncio.wait_for(worker.run(), WAIT_TIMEOUT)

    assert raised.value.latest_breaking == 999
    assert calls == []
    row = await job_row(gw_conn, gw_schema, job.id)
    assert row is not None
    assert row["attempts"] == 0
    assert row["locked_by"] is None
    assert await locked_by(gw_conn, gw_schema, "worker-too-new") == (0, 0)


# ---------------------------------------------------------------------------
# Signals, with the worker in an OS process of its own
# ---------------------------------------------------------------------------


class WorkerProcess:
    """A worker started from tests/worker_process.py, with its stderr collected as it arrives."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.lines: list[str] = []
        self._reader = asyncio.create_task(self._read_stderr())

    @classmethod
    async def start(cls, url: str, schema: str, worker_id: str, *options: str) -> WorkerProcess:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            str(WORKER_PROCESS),
            url,
            schema,
            worker_id,
            *options,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        return cls(process)

    async def _read_stderr(self) -> None:
        assert self.process.stderr is not None
        async for raw in self.process.stderr:
            self.lines.append(raw.decode(errors="replace").rstrip())

    def output(self) -> str:
        return "\n".join(self.lines[-40:])

    async def wait_for_line(self, text: str) -> None:
        async def seen() -> bool:
            if self.process.returncode is not None and not any(text in line for line in self.lines):
                raise AssertionError(f"the worker exited before logging {text!r}:\n{self.output()}")
            return any(text in line for line in self.lines)

        await wait_until(seen, f"the worker to log {text!r}")

    def send(self, signum: signal.Signals) -> None:
        self.process.send_signal(signum)

    async def wait_exit(self) -> int:
        code = await asyncio.wait_for(self.process.wait(), 30)
        await asyncio.wait_for(self._reader, 10)
        return code

    async def kill(self) -> None:
        """Kill the process if it still runs (cleanup after a failed test)."""
        if self.process.returncode is None:
            self.process.kill()
            await self.process.wait()
        self._reader.cancel()


async def create_runs_table(conn: psycopg.AsyncConnection[Any], schema: str) -> None:
    await conn.execute(
        sql.SQL("create table {}.runs (job_id bigint not null, worker_id text not null)").format(
            sql.Identifier(schema)
        )
    )


async def run_ids(conn: psycopg.AsyncConnection[Any], schema: str) -> list[int]:
    cursor = await conn.execute(
        sql.SQL("select job_id from {}.runs order by job_id").format(sql.Identifier(schema))
    )
    return [row[0] for row in await cursor.fetchall()]


async def test_sigterm_finishes_job(
    gw_database_url: str, gw_schema: str, gw_conn: psycopg.AsyncConnection[Any]
) -> None:
    await create_runs_table(gw_conn, gw_schema)
    job = await add(gw_conn, gw_schema, "hold", {"seconds": 2})
    worker = await WorkerProcess.start(gw_database_url, gw_schema, "worker-sigterm", "--grace-period", "30")
    try:

        async def job_started() -> bool:
            return await run_ids(gw_conn, gw_schema) == [job.id]

        await wait_until(job_started, "the job to start")
        worker.send(signal.SIGTERM)
        code = await worker.wait_exit()
    finally:
        await worker.kill()

    assert code == 0, worker.output()
    received = [index for index, line in enumerate(worker.lines) if "received SIGTERM" in line]
    completed = [index for index, line in enumerate(worker.lines) if f"completed hold job {job.id}" in line]
    assert len(received) == 1, worker.output()
    assert len(completed) == 1, worker.output()
    assert received[0] < completed[0], worker.output()  # the signal arrived while the job ran
    assert await job_row(gw_conn, gw_schema, job.id) is None
    assert await run_ids(gw_conn, gw_schema) == [job.id]
    assert await locked_by(gw_conn, gw_schema, "worker-sigterm") == (0, 0)


async def test_double_sigint_hands_back(
    gw_database_url: str, gw_schema: str, gw_conn: psycopg.AsyncConnection[Any]
) -> None:
    await create_runs_table(gw_conn, gw_schema)
    job = await add(gw_conn, gw_schema, "hold", {"seconds": 120}, queue_name="sigint")
    worker = await WorkerProcess.start(gw_database_url, gw_schema, "worker-sigint", "--grace-period", "100")
    try:

        async def job_started() -> bool:
            return await run_ids(gw_conn, gw_schema) == [job.id]

        await wait_until(job_started, "the job to start")
        worker.send(signal.SIGINT)
        await worker.wait_for_line("received SIGINT: finishing running jobs")
        worker.send(signal.SIGINT)
        # The 100 s grace period would exceed the 30 s that wait_exit allows.
        code = await worker.wait_exit()
    finally:
        await worker.kill()

    assert code == 0, worker.output()
    assert any("received SIGINT again" in line for line in worker.lines), worker.output()
    row = await job_row(gw_conn, gw_schema, job.id)
    assert row is not None
    assert row["attempts"] == 0
    assert row["locked_by"] is None
    assert row["locked_at"] is None
    assert await locked_by(gw_conn, gw_schema, "worker-sigint") == (0, 0)
