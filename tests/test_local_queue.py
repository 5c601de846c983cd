"""The worker's local queue: batch fetches, modes, hand-backs, the refetch delay and its options.

The worker tests run a real worker with ``local_queue=`` against a schema (or
database) of their own and check the job rows (attempts, locked_by,
locked_at), the named queues' locks, and the ``gw_local_queue_*`` hook calls
that a recording plugin receives. The option tests build a `Worker` without
running it, or run ``gw worker`` in a subprocess.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo
from psycopg.rows import dict_row

import gwcore
from gwcore import LocalQueueMode as Mode
from gwcore import LocalQueueOptions, RefetchDelay, hookimpl
from gwcore.migrate import migrate
from gwcore.testing import new_schema_name

# Adds jobs without the built-in or installed plugins.
ADD_PLUGINS = gwcore.create_plugin_manager(builtins=False, entry_points=False)
WAIT_TIMEOUT = 20.0


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------


class QueueRecorder:
    """Records every ``gw_local_queue_*`` call in order, as a tuple that starts with a short kind."""

    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []
        self.worker_ids: set[str] = set()

    def _record(self, worker_id: str, *event: Any) -> None:
        self.worker_ids.add(worker_id)
        self.events.append(event)

    @hookimpl
    def gw_local_queue_init(self, ctx: Any) -> None:
        self._record(ctx.worker_id, "init", ctx.worker_id)

    @hookimpl
    def gw_local_queue_set_mode(self, ctx: Any) -> None:
        self._record(ctx.worker_id, "mode", ctx.old_mode, ctx.new_mode)

    @hookimpl
    def gw_local_queue_get_jobs_complete(self, ctx: Any) -> None:
        self._record(ctx.worker_id, "fetched", ctx.jobs_count)

    @hookimpl
    def gw_local_queue_return_jobs(self, ctx: Any) -> None:
        self._record(ctx.worker_id, "returned", ctx.jobs_count)

    @hookimpl
    def gw_local_queue_refetch_delay_start(self, ctx: Any) -> None:
        self._record(ctx.worker_id, "delay_start", ctx.duration, ctx.threshold, ctx.abort_threshold)

    @hookimpl
    def gw_local_queue_refetch_delay_abort(self, ctx: Any) -> None:
        self._record(ctx.worker_id, "delay_abort", ctx.count, ctx.abort_threshold)

    @hookimpl
    def gw_local_queue_refetch_delay_expired(self, ctx: Any) -> None:
        self._record(ctx.worker_id, "delay_expired")

    def of(self, kind: str) -> list[tuple[Any, ...]]:
        return [event for event in self.events if event[0] == kind]

    def modes(self) -> list[tuple[Mode, Mode]]:
        return [(event[1], event[2]) for event in self.of("mode")]

    def fetch_counts(self) -> list[int]:
        return [event[1] for event in self.of("fetched")]

    def return_counts(self) -> list[int]:
        return [event[1] for event in self.of("returned")]


class Gate:
    """The task ``work``: records each job it starts, and blocks jobs whose payload contains ``block``."""

    def __init__(self) -> None:
        self.started: list[int] = []
        self.any_started = asyncio.Event()
        self.opened = asyncio.Event()

    async def work(self, payload: Any, ctx: gwcore.JobContext) -> None:
        self.started.append(ctx.id)
        self.any_started.set()
        if isinstance(payload, dict) and payload.get("block"):
            await asyncio.wait_for(self.opened.wait(), WAIT_TIMEOUT)


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


@contextlib.asynccontextmanager
async def running(worker: gwcore.Worker) -> AsyncIterator[asyncio.Task[None]]:
    """Run ``worker.run()`` in a task; stop the worker at once if the test left it running."""
    task = asyncio.create_task(worker.run())
    try:
        yield task
    finally:
        # A stop requested before run() has begun is reset by it, so ask again until the run ends.
        deadline = time.monotonic() + WAIT_TIMEOUT
        while not task.done() and time.monotonic() < deadline:
            worker.stop(immediate=True)
            await asyncio.wait([task], timeout=0.1)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def stop(worker: gwcore.Worker, task: asyncio.Task[None]) -> None:
    worker.stop()
    await asyncio.wait_for(task, WAIT_TIMEOUT)


async def add(
    conn: psycopg.AsyncConnection[Any], schema: str, payload: Any = None, **options: Any
) -> gwcore.Job:
    job = await gwcore.add_job(conn, "work", payload, schema=schema, plugins=ADD_PLUGINS, **options)
    assert job is not None
    return job


async def add_many(
    conn: psycopg.AsyncConnection[Any], schema: str, specs: Sequence[gwcore.JobSpec]
) -> list[gwcore.Job]:
    return await gwcore.add_jobs(conn, specs, schema=schema, plugins=ADD_PLUGINS)


async def set_attempts(
    conn: psycopg.AsyncConnection[Any], schema: str, job_ids: Sequence[int], attempts: int
) -> None:
    query = sql.SQL("update {}._private_jobs set attempts = %s where id = any(%s)").format(
        sql.Identifier(schema)
    )
    await conn.execute(query, [attempts, list(job_ids)])


async def job_rows(conn: psycopg.AsyncConnection[Any], schema: str) -> dict[int, dict[str, Any]]:
    """Return every job by id: attempts, locked_by, locked_at, and its named queue's name and lock."""
    query = sql.SQL(
        "select jobs.id, jobs.attempts, jobs.locked_by, jobs.locked_at, queues.queue_name,"
        " queues.locked_by as queue_locked_by, queues.locked_at as queue_locked_at"
        " from {schema}._private_jobs as jobs"
        " left join {schema}._private_job_queues as queues on queues.id = jobs.job_queue_id"
        " order by jobs.id"
    ).format(schema=sql.Identifier(schema))
    async with conn.cursor(row_factory=dict_row) as cursor:
        await cursor.execute(query)
        return {row["id"]: row for row in await cursor.fetchall()}


async def no_jobs_left(conn: psycopg.AsyncConnection[Any], schema: str) -> bool:
    return await job_rows(conn, schema) == {}


async def queue_locks(conn: psycopg.AsyncConnection[Any], schema: str) -> dict[str, tuple[Any, Any]]:
    """Return each named queue's (locked_by, locked_at)."""
    query = sql.SQL("select queue_name, locked_by, locked_at from {}._private_job_queues").format(
        sql.Identifier(schema)
    )
    cursor = await conn.execute(query)
    return {row[0]: (row[1], row[2]) for row in await cursor.fetchall()}


async def wait_until(condition: Callable[[], Awaitable[bool] | bool], description: str) -> None:
    deadline = time.monotonic() + WAIT_TIMEOUT
    while True:
        result = condition()
        if isinstance(result, Awaitable):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {WAIT_TIMEOUT} s waiting for {description}")
        await asyncio.sleep(0.02)


def listening(worker: gwcore.Worker) -> bool:
    return worker._listener is not None and worker._listener.connected.is_set()


def job_fetch_index(recorder: QueueRecorder) -> int:
    """Return the index, among the fetches, of the first fetch that found one job (past the end if none)."""
    counts = recorder.fetch_counts()
    return counts.index(1) if 1 in counts else len(counts)


def assert_mode_chain(modes: Sequence[tuple[Mode, Mode]]) -> None:
    """Check that each change of mode starts from the mode that the previous one entered."""
    assert modes[0][0] is Mode.STARTING
    for previous, current in itertools.pairwise(modes):
        assert current[0] is previous[1], f"{current} does not follow {previous}"


def assert_fetches_inside_polling(events: Sequence[tuple[Any, ...]]) -> None:
    """Check that every batch fetch is reported between entering POLLING and leaving it."""
    mode: Mode | None = None
    for event in events:
        if event[0] == "mode":
            mode = event[2]
        elif event[0] == "fetched":
            assert mode is Mode.POLLING, f"a fetch of {event[1]} job(s) was reported in mode {mode}"


@dataclass
class OwnDatabase:
    url: str
    schema: str
    conn: psycopg.AsyncConnection[Any]


@pytest.fixture
async def own_database(gw_database_url: str) -> AsyncIterator[OwnDatabase]:
    """A database of this test's own with a migrated schema, dropped afterwards.

    NOTIFY channels belong to a database, not a schema, so ``jobs:insert`` sent
    by tests in other schemas would reach the worker too.
    """
    name = new_schema_name("gwtest_db")
    async with await psycopg.AsyncConnection.connect(gw_database_url, autocommit=True) as admin:
        await admin.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
    url = make_conninfo(gw_database_url, dbname=name)
    try:
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            schema = new_schema_name()
            await migrate(conn, schema)
            yield OwnDatabase(url, schema, conn)
    finally:
        async with await psycopg.AsyncConnection.connect(gw_database_url, autocommit=True) as admin:
            await admin.execute(
                sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name))
            )


# ---------------------------------------------------------------------------
# Modes and fetches
# ---------------------------------------------------------------------------


async def test_modes_follow_start_jobs_stop(own_database: OwnDatabase) -> None:
    url, schema, conn = own_database.url, own_database.schema, own_database.conn
    recorder = QueueRecorder()
    gate = Gate()
    # The long poll interval leaves the notification of the new job as the only reason to fetch it.
    worker = make_worker(
        url, schema, {"work": gate.work}, plugins=[recorder], poll_interval=10, local_queue={"size": 10}
    )

    async with running(worker) as task:
        await wait_until(lambda: recorder.modes()[-1:] == [(Mode.POLLING, Mode.WAITING)], "the first fetch")
        await wait_until(lambda: listening(worker), "the LISTEN connection")
        job = await add(conn, schema)
        await wait_until(lambda: gate.started == [job.id], "the job to start")
        await wait_until(
            lambda: 0 in recorder.fetch_counts()[job_fetch_index(recorder) :], "a fetch after the job"
        )
        await stop(worker, task)

    events = recorder.events
    modes = recorder.modes()
    assert events[0] == ("init", worker.worker_id)
    assert len(recorder.of("init")) == 1
    assert recorder.worker_ids == {worker.worker_id}
    assert modes[:2] == [(Mode.STARTING, Mode.POLLING), (Mode.POLLING, Mode.WAITING)]
    assert_mode_chain(modes)
    assert_fetches_inside_polling(events)

    # The fetch that found the job: WAITING -> POLLING, a fetch of 1, POLLING -> WAITING.
    found = events.index(("fetched", 1))
    before = [event for event in events[:found] if event[0] == "mode"][-1]
    after = next(event for event in events[found:] if event[0] == "mode")
    assert before == ("mode", Mode.WAITING, Mode.POLLING)
    assert after == ("mode", Mode.POLLING, Mode.WAITING)
    assert modes[-1] == (Mode.WAITING, Mode.RELEASED)
    assert recorder.of("returned") == []
    assert await job_rows(conn, schema) == {}


async def test_fetch_counts_reported(
    gw_database_url: str, gw_schema: str, gw_conn: psycopg.AsyncConnection[Any]
) -> None:
    recorder = QueueRecorder()
    gate = Gate()
    jobs = await add_many(gw_conn, gw_schema, [gwcore.JobSpec.create("work", {"n": n}) for n in range(25)])
    worker = make_worker(
        gw_database_url,
        gw_schema,
        {"work": gate.work},
        plugins=[recorder],
        poll_interval=10,
        listen=False,
        local_queue={"size": 10},
    )

    await asyncio.wait_for(worker.run_once(), WAIT_TIMEOUT)

    # Each batch is fetched when the cache runs dry. Fetches of 0 follow once the jobs run out, and
    # the first one made while the slot waits ends run_once.
    counts = recorder.fetch_counts()
    assert counts[:3] == [10, 10, 5]
    assert counts[3:]
    assert set(counts[3:]) == {0}
    assert sorted(gate.started) == sorted(job.id for job in jobs)
    assert_mode_chain(recorder.modes())
    assert_fetches_inside_polling(recorder.events)
    assert recorder.modes()[-1] == (Mode.WAITING, Mode.RELEASED)
    assert await job_rows(gw_conn, gw_schema) == {}


async def test_dry_cache_fetches_next_batch(
    gw_database_url: str, gw_schema: str, gw_conn: psycopg.AsyncConnection[Any]
) -> None:
    recorder = QueueRecorder()
    gate = Gate()
    first = await add(gw_conn, gw_schema)
    blocking = await add(gw_conn, gw_schema, {"block": True})
    later = await add(gw_conn, gw_schema)
    worker = make_worker(
        gw_database_url,
        gw_schema,
        {"work": gate.work},
        plugins=[recorder],
        poll_interval=10,
        listen=False,
        local_queue={"size": 2},
    )

    async def later_locked() -> bool:
        rows = await job_rows(gw_conn, gw_schema)
        return bool(rows[later.id]["locked_by"] == worker.worker_id)

    async with running(worker) as task:
        await wait_until(lambda: gate.started == [first.id, blocking.id], "the blocking job to start")
        # The only slot is busy, yet taking the last cached job fetches the next batch.
        await wait_until(later_locked, "the next batch to be fetched")
        gate.opened.set()
        await wait_until(lambda: no_jobs_left(gw_conn, gw_schema), "every job to finish")
        await stop(worker, task)

    assert recorder.fetch_counts()[:2] == [2, 1]
    assert gate.started == [first.id, blocking.id, later.id]


# ---------------------------------------------------------------------------
# Handing cached jobs back: ttl expiry and shutdown
# ---------------------------------------------------------------------------


class RowSnapshot:
    """Copies the job rows when the first batch fetch is reported, while its jobs are still cached."""

    def __init__(self, conn: psycopg.AsyncConnection[Any], schema: str) -> None:
        self.conn = conn
        self.schema = schema
        self.rows: dict[int, dict[str, Any]] | None = None

    @hookimpl
    async def gw_local_queue_get_jobs_complete(self, ctx: Any) -> None:
        if self.rows is None:
            self.rows = await job_rows(self.conn, self.schema)


async def test_ttl_expiry_returns_jobs(
    gw_database_url: str, gw_schema: str, gw_conn: psycopg.AsyncConnection[Any]
) -> None:
    recorder = QueueRecorder()
    snapshot = RowSnapshot(gw_conn, gw_schema)
    gate = Gate()
    blocking = await add(gw_conn, gw_schema, {"block": True})
    first = await add(gw_conn, gw_schema, queue_name="queue-b")
    second = await add(gw_conn, gw_schema, queue_name="queue-c")
    # Attempts made before this fetch; handing a job back must restore exactly this count.
    await set_attempts(gw_conn, gw_schema, [first.id, second.id], 2)
    worker = make_worker(
        gw_database_url,
        gw_schema,
        {"work": gate.work},
        plugins=[recorder, snapshot],
        poll_interval=10,
        listen=False,
        local_queue={"size": 5, "ttl": 0.3},
    )

    async with running(worker) as task:
        await wait_until(lambda: recorder.of("returned") != [], "the cached jobs to expire")
        returned_rows = await job_rows(gw_conn, gw_schema)
        modes_at_return = recorder.modes()
        gate.opened.set()
        await wait_until(lambda: len(gate.started) == 3, "every job to start")
        await wait_until(lambda: recorder.modes()[-1] == (Mode.POLLING, Mode.WAITING), "the queue to wait")
        await wait_until(lambda: no_jobs_left(gw_conn, gw_schema), "every job to finish")
        await stop(worker, task)

    assert snapshot.rows is not None
    for job in (first, second):
        assert snapshot.rows[job.id]["attempts"] == 3
        assert snapshot.rows[job.id]["locked_by"] == worker.worker_id
        assert snapshot.rows[job.id]["queue_locked_by"] == worker.worker_id

    assert recorder.return_counts()[0] == 2
    assert modes_at_return[-1] == (Mode.WAITING, Mode.TTL_EXPIRED)
    assert returned_rows[blocking.id]["locked_by"] == worker.worker_id
    assert returned_rows[blocking.id]["attempts"] == 1
    for job in (first, second):
        row = returned_rows[job.id]
        assert row["attempts"] == 2, f"job {job.id}"
        assert row["locked_by"] is None, f"job {job.id}"
        assert row["locked_at"] is None, f"job {job.id}"
        assert row["queue_locked_by"] is None, f"queue of job {job.id}"
        assert row["queue_locked_at"] is None, f"queue of job {job.id}"

    # The slot that finished the blocking job requests a job, which ends TTL_EXPIRED with a fetch.
    modes = recorder.modes()
    expired = modes.index((Mode.WAITING, Mode.TTL_EXPIRED))
    assert modes[expired + 1] == (Mode.TTL_EXPIRED, Mode.POLLING)
    assert Counter(gate.started) == Counter({blocking.id: 1, first.id: 1, second.id: 1})
    assert modes[-1] == (Mode.WAITING, Mode.RELEASED)
    assert_mode_chain(modes)


async def test_stop_after_ttl_expiry(
    gw_database_url: str, gw_schema: str, gw_conn: psycopg.AsyncConnection[Any]
) -> None:
    recorder = QueueRecorder()
    gate = Gate()
    blocking = await add(gw_conn, gw_schema, {"block": True})
    cached = await add(gw_conn, gw_schema)
    worker = make_worker(
        gw_database_url,
        gw_schema,
        {"work": gate.work},
        plugins=[recorder],
        poll_interval=10,
        listen=False,
        local_queue={"size": 5, "ttl": 0.3},
    )

    async with running(worker) as task:
        await wait_until(lambda: recorder.of("returned") != [], "the cached job to expire")
        worker.stop()
        gate.opened.set()
        await asyncio.wait_for(task, WAIT_TIMEOUT)

    rows = await job_rows(gw_conn, gw_schema)
    assert recorder.modes()[-2:] == [(Mode.WAITING, Mode.TTL_EXPIRED), (Mode.TTL_EXPIRED, Mode.RELEASED)]
    assert recorder.return_counts() == [1]
    assert gate.started == [blocking.id]
    assert list(rows) == [cached.id]
    assert rows[cached.id]["attempts"] == 0
    assert rows[cached.id]["locked_by"] is None
    assert rows[cached.id]["locked_at"] is None


async def test_shutdown_returns_cached_jobs(
    gw_database_url: str,
    gw_schema: str,
    gw_conn: psycopg.AsyncConnection[Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="gwcore.worker")
    recorder = QueueRecorder()
    gate = Gate()
    blocking = await add(gw_conn, gw_schema, {"block": True})
    queued = await add(gw_conn, gw_schema, queue_name="queue-b")
    plain = await add(gw_conn, gw_schema)
    await set_attempts(gw_conn, gw_schema, [queued.id], 4)
    worker = make_worker(
        gw_database_url,
        gw_schema,
        {"work": gate.work},
        plugins=[recorder],
        poll_interval=10,
        listen=False,
        local_queue={"size": 5},
    )

    async with running(worker) as task:
        await wait_until(lambda: gate.started == [blocking.id], "the blocking job to start")
        cached_rows = await job_rows(gw_conn, gw_schema)
        worker.stop()
        gate.opened.set()
        await asyncio.wait_for(task, WAIT_TIMEOUT)

    rows = await job_rows(gw_conn, gw_schema)
    assert cached_rows[queued.id]["locked_by"] == worker.worker_id
    assert cached_rows[queued.id]["attempts"] == 5
    assert cached_rows[queued.id]["queue_locked_by"] == worker.worker_id
    assert cached_rows[plain.id]["locked_by"] == worker.worker_id
    assert cached_rows[plain.id]["attempts"] == 1

    assert recorder.return_counts() == [2]
    released = recorder.events.index(("mode", Mode.WAITING, Mode.RELEASED))
    assert recorder.events.index(("returned", 2)) > released
    assert gate.started == [blocking.id]
    assert sorted(rows) == [queued.id, plain.id]
    assert rows[queued.id]["attempts"] == 4
    assert rows[plain.id]["attempts"] == 0
    for job in (queued, plain):
        assert rows[job.id]["locked_by"] is None, f"job {job.id}"
        assert rows[job.id]["locked_at"] is None, f"job {job.id}"
    assert rows[queued.id]["queue_locked_by"] is None
    assert rows[queued.id]["queue_locked_at"] is None
    # The local queue handed them back itself; the last unlock at shutdown found nothing left.
    assert not [record for record in caplog.records if "still locked by" in record.getMessage()]


# ---------------------------------------------------------------------------
# Refetch delay
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("max_abort_threshold", "highest_abort_threshold"),
    [(3, 3), (None, 10)],
    ids=["given_maximum", "default_maximum"],
)
async def test_refetch_delay_starts_and_expires(
    gw_database_url: str,
    gw_schema: str,
    gw_conn: psycopg.AsyncConnection[Any],
    max_abort_threshold: int | None,
    highest_abort_threshold: int,
) -> None:
    recorder = QueueRecorder()
    gate = Gate()
    jobs = [await add(gw_conn, gw_schema) for _ in range(2)]
    delay = RefetchDelay(duration=0.2, threshold=1, max_abort_threshold=max_abort_threshold)
    worker = make_worker(
        gw_database_url,
        gw_schema,
        {"work": gate.work},
        plugins=[recorder],
        concurrency=2,  # the default maximum abort threshold is 5 x the concurrency
        poll_interval=0.3,
        listen=False,
        local_queue=LocalQueueOptions(size=10, refetch_delay=delay),
    )

    async with running(worker) as task:
        await wait_until(lambda: len(recorder.of("delay_expired")) >= 3, "three refetch delays to expire")
        await stop(worker, task)

    starts = recorder.of("delay_start")
    assert sorted(gate.started) == sorted(job.id for job in jobs)
    assert recorder.fetch_counts()[0] == 2
    assert len(starts) >= 3
    for _, duration, threshold, abort_threshold in starts:
        assert 0.1 <= duration <= 0.2
        assert threshold == 1
        assert 1 <= abort_threshold <= highest_abort_threshold
    assert recorder.of("delay_abort") == []

    # A delay follows each fetch of at most `threshold` jobs, and only those.
    queue_events = [event for event in recorder.events if event[0] != "mode"]
    for index, event in enumerate(queue_events[:-1]):
        if event[0] != "fetched":
            continue
        follows = queue_events[index + 1][0] == "delay_start"
        assert follows == (event[1] <= 1), f"fetch of {event[1]} job(s), then {queue_events[index + 1]}"
    # Each delay ends by expiring (nothing here notifies), and only a started delay expires.
    for index, event in enumerate(queue_events):
        if event[0] == "delay_expired":
            earlier = [kind for kind, *_ in queue_events[:index] if kind.startswith("delay")]
            assert earlier[-1] == "delay_start"


class WakeRecorder:
    """Wraps the worker's ``_wake``, which the listener calls on connect and for each notification.

    Each call is stored with the number of local-queue hook calls recorded before it, so that a
    test can tell which hook calls came after a notification.
    """

    def __init__(self, worker: gwcore.Worker, recorder: QueueRecorder) -> None:
        self.calls: list[tuple[int, int]] = []
        self._recorder = recorder
        self._wake = worker._wake
        worker._wake = self._record  # type: ignore[method-assign]

    def _record(self, count: int) -> None:
        self.calls.append((count, len(self._recorder.events)))
        self._wake(count)


def delay_started_after(recorder: QueueRecorder, position: int) -> bool:
    """Tell whether a refetch delay started after hook call ``position`` and the queue now waits in it."""
    later = recorder.events[position:]
    starts = [index for index, event in enumerate(later) if event[0] == "delay_start"]
    if not starts:
        return False
    following = [event for event in later[starts[-1] :] if event[0] != "fetched"]
    return following[1:] == [("mode", Mode.POLLING, Mode.WAITING)]


async def test_refetch_delay_aborted_by_notification(own_database: OwnDatabase) -> None:
    url, schema, conn = own_database.url, own_database.schema, own_database.conn
    recorder = QueueRecorder()
    gate = Gate()
    worker = make_worker(
        url,
        schema,
        {"work": gate.work},
        plugins=[recorder],
        poll_interval=30,
        local_queue={"size": 10, "refetch_delay": {"duration": 10, "max_abort_threshold": 1}},
    )
    wakes = WakeRecorder(worker, recorder)

    async with running(worker) as task:
        await wait_until(lambda: listening(worker), "the LISTEN connection")
        # The connection itself wakes the queue once. Wait for a delay that began after that wake,
        # so that the only notification left to count is the job's.
        connected_at = wakes.calls[-1][1]
        await wait_until(lambda: delay_started_after(recorder, connected_at), "a refetch delay")
        added_at = len(recorder.events)
        job = await add(conn, schema)
        # The delay lasts at least 5 s, so only its abort lets the job start within 5 s.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(gate.any_started.wait(), 5)
        started = list(gate.started)
        await stop(worker, task)

    assert started == [job.id]
    for _, duration, threshold, abort_threshold in recorder.of("delay_start"):
        assert 5 <= duration <= 10
        assert threshold == 0
        assert abort_threshold == 1
    after = [event for event in recorder.events[added_at:] if event[0] != "mode"]
    assert after[:2] == [("delay_abort", 1, 1), ("fetched", 1)]
    assert recorder.of("delay_expired") == []


class AddJobAfterEmptyFetch:
    """Adds a job when a fetch found none, and waits for its notification before the delay starts."""

    def __init__(
        self, worker: gwcore.Worker, wakes: WakeRecorder, conn: psycopg.AsyncConnection[Any], schema: str
    ) -> None:
        self.worker = worker
        self.wakes = wakes
        self.conn = conn
        self.schema = schema
        self.job: gwcore.Job | None = None

    @hookimpl
    async def gw_local_queue_get_jobs_complete(self, ctx: Any) -> None:
        if self.job is not None or ctx.jobs_count != 0:
            return
        await wait_until(lambda: listening(self.worker), "the LISTEN connection")
        wakes_before = len(self.wakes.calls)
        self.job = await add(self.conn, self.schema)
        await wait_until(lambda: len(self.wakes.calls) > wakes_before, "the notification of the job")


async def test_refetch_delay_counts_notification_during_fetch(own_database: OwnDatabase) -> None:
    url, schema, conn = own_database.url, own_database.schema, own_database.conn
    recorder = QueueRecorder()
    gate = Gate()
    worker = make_worker(
        url,
        schema,
        {"work": gate.work},
        plugins=[recorder],
        poll_interval=30,
        local_queue={"size": 10, "refetch_delay": {"duration": 10, "max_abort_threshold": 1}},
    )
    adder = AddJobAfterEmptyFetch(worker, WakeRecorder(worker, recorder), conn, schema)
    worker.plugins.register(adder)

    async with running(worker) as task:
        await wait_until(lambda: adder.job is not None, "the job to be added")
        # The delay lasts at least 5 s, so only an abort lets the job start within 5 s.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(gate.any_started.wait(), 5)
        started = list(gate.started)
        await stop(worker, task)

    assert adder.job is not None
    assert started == [adder.job.id]


# ---------------------------------------------------------------------------
# Options
# ---------------------------------------------------------------------------

# Each case: the local_queue value, the poll interval, and texts the error message must contain.
INVALID_OPTIONS: dict[str, tuple[Any, float, list[str]]] = {
    "size_zero": ({"size": 0}, 2.0, ["local_queue.size is invalid: 0", "pass an integer from 1 to 100,000"]),
    "size_too_large": (
        {"size": 100_001},
        2.0,
        ["local_queue.size is invalid: 100001", "pass an integer from 1 to 100,000"],
    ),
    "size_string": (
        {"size": "10"},
        2.0,
        ["local_queue.size", "'10' is not an integer", "pass an integer from 1 to 100,000"],
    ),
    "size_bool": (
        {"size": True},
        2.0,
        ["local_queue.size", "True is not an integer", "pass an integer from 1 to 100,000"],
    ),
    "size_missing": ({"ttl": 5}, 2.0, ["local_queue is invalid", "'size' is missing", "{'size': 100}"]),
    "ttl_zero": ({"size": 10, "ttl": 0}, 2.0, ["local_queue.ttl is invalid: 0", "> 0 seconds"]),
    "ttl_negative": ({"size": 10, "ttl": -5}, 2.0, ["local_queue.ttl is invalid: -5", "> 0 seconds"]),
    "ttl_nan": ({"size": 10, "ttl": float("nan")}, 2.0, ["local_queue.ttl", "nan is not a finite number"]),
    "unknown_key": ({"size": 10, "tll": 5}, 2.0, ["unknown key 'tll'", "did you mean 'ttl'?", "size, ttl"]),
    "not_options": (10, 2.0, ["local_queue is invalid: 10", "LocalQueueOptions(size=...)"]),
    "object_size_zero": (LocalQueueOptions(size=0), 2.0, ["local_queue.size is invalid: 0"]),
    "delay_above_poll_interval": (
        {"size": 10, "refetch_delay": {"duration": 3}},
        2.0,
        ["local_queue.refetch_delay.duration is invalid: 3", "poll interval (2.0 seconds)", "<= the poll"],
    ),
    "delay_threshold_negative": (
        {"size": 10, "refetch_delay": {"duration": 1, "threshold": -1}},
        2.0,
        ["local_queue.refetch_delay.threshold is invalid: -1", "pass an integer >= 0"],
    ),
    "delay_max_abort_zero": (
        {"size": 10, "refetch_delay": {"duration": 1, "max_abort_threshold": 0}},
        2.0,
        ["local_queue.refetch_delay.max_abort_threshold is invalid: 0", "pass an integer >= 1"],
    ),
    "delay_duration_missing": (
        {"size": 10, "refetch_delay": {"threshold": 1}},
        2.0,
        ["local_queue.refetch_delay is invalid", "'duration' is missing"],
    ),
    "delay_unknown_key": (
        {"size": 10, "refetch_delay": {"duration": 1, "treshold": 1}},
        2.0,
        ["unknown key 'treshold'", "did you mean 'threshold'?"],
    ),
    "delay_object_negative": (
        LocalQueueOptions(size=10, refetch_delay=RefetchDelay(duration=-1)),
        2.0,
        ["local_queue.refetch_delay.duration is invalid: -1", "> 0 seconds"],
    ),
    "delay_not_options": (
        {"size": 10, "refetch_delay": 1},
        2.0,
        ["local_queue.refetch_delay is invalid: 1", "RefetchDelay(duration=...)"],
    ),
}


@pytest.mark.parametrize("case", list(INVALID_OPTIONS))
def test_invalid_options_rejected(case: str) -> None:
    value, poll_interval, expected = INVALID_OPTIONS[case]

    with pytest.raises(gwcore.ConfigurationError) as raised:
        gwcore.Worker(
            "postgresql://localhost/none", tasks={"t": print}, poll_interval=poll_interval, local_queue=value
        )

    for text in expected:
        assert text in str(raised.value)


# Each case: the local_queue value, and the options the worker stores.
VALID_OPTIONS: dict[str, tuple[Any, LocalQueueOptions | None]] = {
    "off": (None, None),
    "size_only": ({"size": 10}, LocalQueueOptions(size=10, ttl=300.0)),
    "mapping": (
        {"size": 10, "ttl": 5, "refetch_delay": {"duration": 2, "threshold": 3, "max_abort_threshold": 4}},
        LocalQueueOptions(
            size=10, ttl=5.0, refetch_delay=RefetchDelay(duration=2, threshold=3, max_abort_threshold=4)
        ),
    ),
    "objects": (
        LocalQueueOptions(size=3, ttl=2.5, refetch_delay=RefetchDelay(duration=0.5)),
        LocalQueueOptions(size=3, ttl=2.5, refetch_delay=RefetchDelay(duration=0.5)),
    ),
    "object_with_delay_mapping": (
        LocalQueueOptions(size=3, refetch_delay={"duration": 1}),  # type: ignore[arg-type]
        LocalQueueOptions(size=3, refetch_delay=RefetchDelay(duration=1)),
    ),
}


@pytest.mark.parametrize("case", list(VALID_OPTIONS))
def test_valid_options_accepted(case: str) -> None:
    value, expected = VALID_OPTIONS[case]

    worker = gwcore.Worker(
        "postgresql://localhost/none", tasks={"t": print}, poll_interval=2, local_queue=value
    )

    assert worker.local_queue_options == expected


def run_gw(cwd: Path, *arguments: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environment = {key: value for key, value in os.environ.items() if not key.startswith(("GW_", "DATABASE"))}
    environment.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "gwcore.cli", *arguments],
        cwd=cwd,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


# Each case: the arguments after `gw worker -c URL -s SCHEMA --once --tasks tasks`, and texts stderr
# must contain.
CLI_REJECTED: dict[str, tuple[list[str], list[str]]] = {
    "size_zero": (["--local-queue-size", "0"], ["--local-queue-size: 0 is out of range", ">= 1"]),
    "ttl_zero": (
        ["--local-queue-size", "5", "--local-queue-ttl", "0"],
        ["--local-queue-ttl: 0 is out of range", "seconds > 0"],
    ),
    "delay_without_size": (
        ["--local-queue-refetch-delay", "1"],
        [
            "local_queue_refetch_delay is 1.0 (command line) but local_queue_size is not set",
            "--local-queue-size N",
        ],
    ),
    "delay_above_poll_interval": (
        ["--local-queue-size", "5", "--local-queue-refetch-delay", "5", "--poll-interval", "2"],
        [
            "local_queue.refetch_delay.duration is invalid",
            "longer than the poll interval",
            "local_queue_refetch_delay = 5.0 (command line)",
            "poll_interval = 2.0 (command line)",
        ],
    ),
    "size_too_large": (
        ["--local-queue-size", "1073741774"],
        ["local_queue.size is invalid: 1073741774", "local_queue_size = 1073741774 (command line)"],
    ),
    # Checked before the supervisor starts any worker process.
    "delay_above_poll_interval_processes": (
        [
            "--processes",
            "2",
            "--local-queue-size",
            "5",
            "--local-queue-refetch-delay",
            "5",
            "--poll-interval",
            "2",
        ],
        ["local_queue.refetch_delay.duration is invalid", "longer than the poll interval"],
    ),
}


@pytest.fixture
def task_folder(tmp_path: Path) -> Path:
    """A working folder whose `tasks` folder contains the task `work`, which does nothing."""
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "work.py").write_text("def task(payload, ctx):\n    return None\n")
    return tmp_path


@pytest.mark.parametrize("case", list(CLI_REJECTED))
def test_cli_rejects_bad_options(case: str, gw_database_url: str, gw_schema: str, task_folder: Path) -> None:
    arguments, expected = CLI_REJECTED[case]

    result = run_gw(
        task_folder,
        "worker",
        "-c",
        gw_database_url,
        "-s",
        gw_schema,
        "--once",
        "--tasks",
        "tasks",
        *arguments,
    )

    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "started worker process" not in result.stderr
    for text in expected:
        assert text in result.stderr


async def test_cli_runs_with_local_queue(
    gw_database_url: str, gw_schema: str, gw_conn: psycopg.AsyncConnection[Any], task_folder: Path
) -> None:
    for _ in range(5):
        await add(gw_conn, gw_schema)

    result = await asyncio.to_thread(
        run_gw,
        task_folder,
        "worker",
        "-c",
        gw_database_url,
        "-s",
        gw_schema,
        "--once",
        "--tasks",
        "tasks",
        "-j",
        "2",
        "--local-queue-size",
        "2",
        "--local-queue-ttl",
        "30",
        "--local-queue-refetch-delay",
        "0.1",
    )

    assert result.returncode == 0, result.stderr
    assert result.stderr.count("completed work job") == 5
    assert await job_rows(gw_conn, gw_schema) == {}


# ---------------------------------------------------------------------------
# Named queues
# ---------------------------------------------------------------------------


async def test_batch_keeps_queues_serial(
    gw_database_url: str, gw_schema: str, gw_conn: psycopg.AsyncConnection[Any]
) -> None:
    recorder = QueueRecorder()
    queue_names = ["queue-a", "queue-b", "queue-c"]
    opened = asyncio.Event()
    started: list[tuple[int, str | None]] = []
    running_in_queue: Counter[str] = Counter()
    max_running_in_queue: Counter[str] = Counter()
    locked_in_queue_at_start: list[tuple[int, int]] = []
    count_locked = sql.SQL(
        "select count(*) from {schema}._private_jobs as jobs"
        " join {schema}._private_job_queues as queues on queues.id = jobs.job_queue_id"
        " where queues.queue_name = %s and jobs.locked_by is not null"
    ).format(schema=sql.Identifier(gw_schema))

    async def work(payload: Any, ctx: gwcore.JobContext) -> None:
        queue_name = ctx.queue_name
        started.append((ctx.id, queue_name))
        if queue_name is None:
            await asyncio.wait_for(opened.wait(), WAIT_TIMEOUT)
            return
        running_in_queue[queue_name] += 1
        max_running_in_queue[queue_name] = max(max_running_in_queue[queue_name], running_in_queue[queue_name])
        try:
            cursor = await gw_conn.execute(count_locked, [queue_name])
            row = await cursor.fetchone()
            assert row is not None
            locked_in_queue_at_start.append((ctx.id, row[0]))
            await asyncio.wait_for(opened.wait(), WAIT_TIMEOUT)
        finally:
            running_in_queue[queue_name] -= 1

    specs: list[gwcore.JobSpec] = []
    for n in range(10):
        specs.extend(gwcore.JobSpec.create("work", {"n": n}, queue_name=name) for name in queue_names)
        specs.append(gwcore.JobSpec.create("work", {"n": n}))
    await add_many(gw_conn, gw_schema, specs)
    rows = await job_rows(gw_conn, gw_schema)
    ids_by_queue = {
        name: sorted(i for i, row in rows.items() if row["queue_name"] == name) for name in queue_names
    }
    unqueued = sorted(i for i, row in rows.items() if row["queue_name"] is None)
    worker = make_worker(
        gw_database_url,
        gw_schema,
        {"work": work},
        plugins=[recorder],
        concurrency=16,
        poll_interval=10,
        listen=False,
        local_queue={"size": 100},
    )

    async with running(worker) as task:
        await wait_until(lambda: len(started) == 13, "the first batch to start")
        held_rows = await job_rows(gw_conn, gw_schema)
        held_queues = await queue_locks(gw_conn, gw_schema)
        opened.set()
        await wait_until(lambda: no_jobs_left(gw_conn, gw_schema), "every job to finish")
        await stop(worker, task)

    # The first batch: every unqueued job and only the first job of each named queue.
    first_of_each = [ids[0] for ids in ids_by_queue.values()]
    locked = sorted(i for i, row in held_rows.items() if row["locked_by"] == worker.worker_id)
    assert recorder.fetch_counts()[0] == 13
    assert locked == sorted(unqueued + first_of_each)
    for name, ids in ids_by_queue.items():
        assert held_rows[ids[1]]["locked_by"] is None, f"second job of {name}"
        assert held_rows[ids[1]]["attempts"] == 0, f"second job of {name}"
        assert held_queues[name][0] == worker.worker_id, name

    # Over the whole run: one job per named queue at a time, in id order, each job once.
    assert max_running_in_queue == Counter(dict.fromkeys(queue_names, 1))
    assert [count for _, count in locked_in_queue_at_start] == [1] * 30
    for name, ids in ids_by_queue.items():
        assert [job_id for job_id, queue in started if queue == name] == ids, name
    assert Counter(job_id for job_id, _ in started) == Counter(dict.fromkeys(rows, 1))


async def test_batch_takes_first_of_queue(
    gw_database_url: str, gw_schema: str, gw_conn: psycopg.AsyncConnection[Any]
) -> None:
    recorder = QueueRecorder()
    gate = Gate()
    first = await add(gw_conn, gw_schema, {"block": True}, queue_name="queue-a")
    second = await add(gw_conn, gw_schema, queue_name="queue-a")
    unqueued = await add(gw_conn, gw_schema)
    worker = make_worker(
        gw_database_url,
        gw_schema,
        {"work": gate.work},
        plugins=[recorder],
        poll_interval=10,
        listen=False,
        local_queue={"size": 2},
    )

    async with running(worker) as task:
        await wait_until(lambda: gate.started == [first.id], "the first job of the queue to start")
        held_rows = await job_rows(gw_conn, gw_schema)
        gate.opened.set()
        await wait_until(lambda: no_jobs_left(gw_conn, gw_schema), "every job to finish")
        await stop(worker, task)

    # Both candidates of the batch of 2 belong to queue-a, so the fetch locks only the first.
    assert recorder.fetch_counts()[0] == 1
    assert held_rows[first.id]["locked_by"] == worker.worker_id
    assert held_rows[first.id]["queue_locked_by"] == worker.worker_id
    assert held_rows[second.id]["locked_by"] is None
    assert held_rows[second.id]["locked_at"] is None
    assert held_rows[second.id]["attempts"] == 0
    assert sorted(gate.started) == [first.id, second.id, unqueued.id]
    assert gate.started.index(first.id) < gate.started.index(second.id)


async def test_queue_backlog_hides_no_job(
    gw_database_url: str, gw_schema: str, gw_conn: psycopg.AsyncConnection[Any]
) -> None:
    gate = Gate()
    running_first = await add(gw_conn, gw_schema, {"block": True}, queue_name="queue-busy")
    specs = [gwcore.JobSpec.create("work", {"n": n}, queue_name="queue-busy") for n in range(150)]
    await add_many(gw_conn, gw_schema, specs)
    unqueued = await add(gw_conn, gw_schema)
    worker = make_worker(
        gw_database_url,
        gw_schema,
        {"work": gate.work},
        concurrency=2,
        poll_interval=10,
        listen=False,
        local_queue={"size": 10},
    )

    async with running(worker) as task:
        # The 150 jobs behind the running one wait for their queue, and must not hide the last job.
        await wait_until(lambda: unqueued.id in gate.started, "the unqueued job to start")
        started_while_blocked = list(gate.started)
        worker.stop()
        gate.opened.set()
        await asyncio.wait_for(task, WAIT_TIMEOUT)

    assert started_while_blocked == [running_first.id, unqueued.id]


# ---------------------------------------------------------------------------
# Forbidden flags
# ---------------------------------------------------------------------------


async def test_forbidden_flags_never_fetched(
    gw_database_url: str, gw_schema: str, gw_conn: psycopg.AsyncConnection[Any]
) -> None:
    recorder = QueueRecorder()
    gate = Gate()
    forbidden = [await add(gw_conn, gw_schema, flags=["blocked"]) for _ in range(3)]
    allowed = [await add(gw_conn, gw_schema) for _ in range(3)]
    allowed.append(await add(gw_conn, gw_schema, flags=["other"]))
    worker = make_worker(
        gw_database_url,
        gw_schema,
        {"work": gate.work},
        plugins=[recorder],
        concurrency=2,
        listen=False,
        forbidden_flags=["blocked"],
        local_queue={"size": 10},
    )

    await asyncio.wait_for(worker.run_once(), WAIT_TIMEOUT)

    rows = await job_rows(gw_conn, gw_schema)
    assert sorted(gate.started) == sorted(job.id for job in allowed)
    assert sum(recorder.fetch_counts()) == len(allowed)
    assert sorted(rows) == sorted(job.id for job in forbidden)
    for job in forbidden:
        assert rows[job.id]["attempts"] == 0, f"job {job.id}"
        assert rows[job.id]["locked_by"] is None, f"job {job.id}"


async def test_forbidden_backlog_hides_no_job(
    gw_database_url: str, gw_schema: str, gw_conn: psycopg.AsyncConnection[Any]
) -> None:
    gate = Gate()
    specs = [gwcore.JobSpec.create("work", {"n": n}, flags=["blocked"]) for n in range(150)]
    await add_many(gw_conn, gw_schema, specs)
    allowed = await add(gw_conn, gw_schema)
    worker = make_worker(
        gw_database_url,
        gw_schema,
        {"work": gate.work},
        listen=False,
        forbidden_flags=["blocked"],
        local_queue={"size": 10},
    )

    await asyncio.wait_for(worker.run_once(), WAIT_TIMEOUT)

    # 150 forbidden jobs come first in fetch order: more than the 2 x 10 + 100 candidates per task
    # that a fetch of 10 reads, so the fetch must skip forbidden jobs before it takes candidates.
    assert gate.started == [allowed.id]


async def test_cached_job_forbidden_later(
    gw_database_url: str, gw_schema: str, gw_conn: psycopg.AsyncConnection[Any]
) -> None:
    recorder = QueueRecorder()
    gate = Gate()
    forbidden_flags: list[str] = []
    blocking = await add(gw_conn, gw_schema, {"block": True})
    flagged = await add(gw_conn, gw_schema, flags=["late"], queue_name="queue-f")
    worker = make_worker(
        gw_database_url,
        gw_schema,
        {"work": gate.work},
        plugins=[recorder],
        poll_interval=10,
        listen=False,
        forbidden_flags=lambda: forbidden_flags,
        local_queue={"size": 5},
    )

    async def flagged_unlocked() -> bool:
        rows = await job_rows(gw_conn, gw_schema)
        return blocking.id not in rows and rows[flagged.id]["locked_by"] is None

    async with running(worker) as task:
        await wait_until(lambda: gate.started == [blocking.id], "the blocking job to start")
        cached_rows = await job_rows(gw_conn, gw_schema)
        forbidden_flags.append("late")
        gate.opened.set()
        await wait_until(flagged_unlocked, "the flagged job to be handed back")
        rows = await job_rows(gw_conn, gw_schema)
        await stop(worker, task)
    rows_after_stop = await job_rows(gw_conn, gw_schema)

    assert cached_rows[flagged.id]["locked_by"] == worker.worker_id
    assert cached_rows[flagged.id]["attempts"] == 1
    assert gate.started == [blocking.id]
    assert list(rows) == [flagged.id]
    assert rows[flagged.id]["attempts"] == 0
    assert rows[flagged.id]["locked_at"] is None
    assert rows[flagged.id]["queue_locked_by"] is None
    # No later fetch took it again, because its flag is now forbidden.
    assert rows_after_stop[flagged.id]["locked_by"] is None
    assert rows_after_stop[flagged.id]["attempts"] == 0
    assert recorder.of("returned") == [("returned", 1)]


# ---------------------------------------------------------------------------
# Failures and cancellation
# ---------------------------------------------------------------------------


class DropConnectionsOnExpiry:
    """Terminates the worker's pool connections when its cached jobs expire, before they are handed back."""

    def __init__(self, conn: psycopg.AsyncConnection[Any], application_name: str) -> None:
        self.conn = conn
        self.application_name = application_name
        self.terminated: list[int] = []

    @hookimpl
    async def gw_local_queue_set_mode(self, ctx: Any) -> None:
        if ctx.new_mode is not Mode.TTL_EXPIRED or self.terminated:
            return
        cursor = await self.conn.execute(
            "select pid from pg_stat_activity where application_name = %s and pid <> pg_backend_pid()",
            [self.application_name],
        )
        pids = [row[0] for row in await cursor.fetchall()]
        await self.conn.execute("select pg_terminate_backend(pid) from unnest(%s::int[]) as pid", [pids])
        self.terminated = pids
        # Wait until the backends have exited, so that the return meets closed connections.
        await wait_until(lambda: self._gone(pids), "the terminated backends to exit")

    async def _gone(self, pids: list[int]) -> bool:
        cursor = await self.conn.execute("select count(*) from pg_stat_activity where pid = any(%s)", [pids])
        row = await cursor.fetchone()
        return row is not None and row[0] == 0


async def test_failed_return_retried(
    gw_database_url: str,
    gw_schema: str,
    gw_conn: psycopg.AsyncConnection[Any],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("gwcore.worker.retry_delay", lambda failures: 0.05)
    caplog.set_level(logging.WARNING, logger="gwcore.worker")
    application_name = f"gwtest-{uuid.uuid4().hex[:12]}"
    recorder = QueueRecorder()
    dropper = DropConnectionsOnExpiry(gw_conn, application_name)
    gate = Gate()
    blocking = await add(gw_conn, gw_schema, {"block": True})
    cached = [await add(gw_conn, gw_schema) for _ in range(2)]
    worker = make_worker(
        make_conninfo(gw_database_url, application_name=application_name),
        gw_schema,
        {"work": gate.work},
        plugins=[recorder, dropper],
        poll_interval=10,
        listen=False,
        local_queue={"size": 5, "ttl": 0.3},
    )

    async with running(worker) as task:
        await wait_until(lambda: recorder.of("returned") != [], "the cached jobs to be handed back")
        returned_rows = await job_rows(gw_conn, gw_schema)
        # Nothing is fetched in TTL_EXPIRED while the only slot is busy, so no other return can follow.
        return_counts = recorder.return_counts()
        gate.opened.set()
        await wait_until(lambda: no_jobs_left(gw_conn, gw_schema), "every job to finish")
        await stop(worker, task)

    failures = [
        record.getMessage()
        for record in caplog.records
        if record.getMessage().startswith("handing back job(s)") and "failed" in record.getMessage()
    ]
    assert dropper.terminated
    assert failures, "handing back never failed, so the retry was not tested"
    assert return_counts == [2]
    for job in cached:
        assert returned_rows[job.id]["attempts"] == 0, f"job {job.id}"
        assert returned_rows[job.id]["locked_by"] is None, f"job {job.id}"
        assert returned_rows[job.id]["locked_at"] is None, f"job {job.id}"
    assert Counter(gate.started) == Counter(dict.fromkeys([blocking.id, *(job.id for job in cached)], 1))


class CancelSlotOnHandOut:
    """Cancels the only slot right after the first batch of one job was handed to it, before it runs."""

    def __init__(self) -> None:
        self.worker: gwcore.Worker | None = None
        self.last_fetch_count: int | None = None
        self.cached_at_cancel: int | None = None
        self.cancelled = False

    @hookimpl
    def gw_local_queue_get_jobs_complete(self, ctx: Any) -> None:
        self.last_fetch_count = ctx.jobs_count

    @hookimpl
    def gw_local_queue_set_mode(self, ctx: Any) -> None:
        if self.cancelled or self.last_fetch_count != 1 or ctx.new_mode is not Mode.WAITING:
            return
        assert self.worker is not None and self.worker._local_queue is not None
        # A job that went to a waiting slot is not in the cache.
        self.cached_at_cancel = self.worker._local_queue.cached_jobs
        slot = next(task for task in asyncio.all_tasks() if task.get_name() == "gwcore-slot-0")
        slot.cancel()
        self.cancelled = True


async def test_cancelled_slot_keeps_job(
    gw_database_url: str,
    gw_schema: str,
    gw_conn: psycopg.AsyncConnection[Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="gwcore.worker")
    recorder = QueueRecorder()
    canceller = CancelSlotOnHandOut()
    gate = Gate()
    job = await add(gw_conn, gw_schema)
    worker = make_worker(
        gw_database_url,
        gw_schema,
        {"work": gate.work},
        plugins=[recorder, canceller],
        poll_interval=10,
        listen=False,
        local_queue={"size": 5},
    )
    canceller.worker = worker

    # The cancelled slot ends the run like a failed slot, so run() raises CancelledError.
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(worker.run(), WAIT_TIMEOUT)

    rows = await job_rows(gw_conn, gw_schema)
    assert canceller.cancelled
    assert canceller.cached_at_cancel == 0
    assert gate.started == []
    # The cancelled slot put the job back into the cache, and the release handed it back.
    assert recorder.return_counts() == [1]
    assert rows[job.id]["attempts"] == 0
    assert rows[job.id]["locked_by"] is None
    assert rows[job.id]["locked_at"] is None
    assert not [record for record in caplog.records if "still locked by" in record.getMessage()]


# ---------------------------------------------------------------------------
# run_once
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("complete_job_batch_delay", [None, 0], ids=["unbatched", "batched"])
async def test_run_once_runs_each_job_once(
    gw_database_url: str,
    gw_schema: str,
    gw_conn: psycopg.AsyncConnection[Any],
    complete_job_batch_delay: float | None,
) -> None:
    recorder = QueueRecorder()
    gate = Gate()
    jobs = await add_many(gw_conn, gw_schema, [gwcore.JobSpec.create("work", {"n": n}) for n in range(100)])
    worker = make_worker(
        gw_database_url,
        gw_schema,
        {"work": gate.work},
        plugins=[recorder],
        concurrency=4,
        listen=False,
        complete_job_batch_delay=complete_job_batch_delay,
        local_queue={"size": 10},
    )

    await asyncio.wait_for(worker.run_once(), WAIT_TIMEOUT)

    assert Counter(gate.started) == Counter(dict.fromkeys((job.id for job in jobs), 1))
    assert sum(recorder.fetch_counts()) == 100
    assert recorder.fetch_counts()[-1] == 0
    assert recorder.modes()[-1] == (Mode.WAITING, Mode.RELEASED)
    assert await job_rows(gw_conn, gw_schema) == {}


def test_cli_names_source_of_delay(gw_database_url: str, gw_schema: str, task_folder: Path) -> None:
    environment = {"GW_LOCAL_QUEUE_REFETCH_DELAY": "0.5"}

    result = run_gw(
        task_folder,
        "worker",
        "-c",
        gw_database_url,
        "-s",
        gw_schema,
        "--once",
        "--tasks",
        "tasks",
        env=environment,
    )

    assert result.returncode == 2
    assert "local_queue_refetch_delay is 0.5 (env GW_LOCAL_QUEUE_REFETCH_DELAY)" in result.stderr
    assert "local_queue_size is not set" in result.stderr
