"""Batched completion and failure writes: fewer statements, same outcomes, nothing lost."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

import gwcore
from gwcore import hookimpl

ADD_PLUGINS = gwcore.create_plugin_manager(builtins=False, entry_points=False)


class OutcomeRecorder:
    def __init__(self) -> None:
        self.completed: list[int] = []
        self.failed: list[tuple[int, int, bool]] = []

    @hookimpl
    def gw_job_complete(self, ctx: Any) -> None:
        self.completed.append(ctx.job.id)

    @hookimpl
    def gw_job_fail(self, ctx: Any) -> None:
        self.failed.append((ctx.job.id, ctx.job.attempts, ctx.will_retry))


async def add_many(conn: psycopg.AsyncConnection[Any], schema: str, identifier: str, count: int) -> list[int]:
    specs = [gwcore.JobSpec.create(identifier, {"n": n}) for n in range(count)]
    jobs = await gwcore.add_jobs(conn, specs, schema=schema, plugins=ADD_PLUGINS)
    return sorted(job.id for job in jobs)


async def rows(conn: psycopg.AsyncConnection[Any], schema: str) -> list[tuple[Any, ...]]:
    cursor = await conn.execute(
        sql.SQL(
            "select id, attempts, locked_by, split_part(last_error, chr(10), 1)"
            " from {}._private_jobs order by id"
        ).format(sql.Identifier(schema))
    )
    return await cursor.fetchall()


def counting_writes(worker: gwcore.Worker, name: str) -> list[int]:
    """Wrap the worker's batch write ``name`` and return a list of the batch sizes it wrote."""
    sizes: list[int] = []
    original = getattr(worker, name)

    async def counted(items: Any) -> Any:
        sizes.append(len(items))
        return await original(items)

    batcher = worker._complete_batcher if name == "_write_completion_batch" else worker._fail_batcher
    assert batcher is not None
    batcher._write = counted
    return sizes


async def test_completions_written_in_batches(
    gw_database_url: str, gw_schema: str, gw_conn: psycopg.AsyncConnection[Any]
) -> None:
    recorder = OutcomeRecorder()
    ran: list[int] = []

    async def noop(payload: Any, ctx: gwcore.JobContext) -> None:
        ran.append(ctx.id)

    job_ids = await add_many(gw_conn, gw_schema, "noop", 40)
    worker = gwcore.Worker(
        gw_database_url,
        schema=gw_schema,
        tasks={"noop": noop},
        concurrency=8,
        complete_job_batch_delay=0.05,
        plugin_manager=gwcore.create_plugin_manager([recorder], entry_points=False),
    )
    sizes = counting_writes(worker, "_write_completion_batch")

    await worker.run_once()

    assert sorted(ran) == job_ids
    assert sorted(recorder.completed) == job_ids
    assert await rows(gw_conn, gw_schema) == []
    assert sum(sizes) == 40
    assert len(sizes) < 40
    assert max(sizes) > 1


async def test_failures_written_in_batches(
    gw_database_url: str, gw_schema: str, gw_conn: psycopg.AsyncConnection[Any]
) -> None:
    recorder = OutcomeRecorder()

    async def fails(payload: Any, ctx: gwcore.JobContext) -> None:
        raise ValueError(f"job {ctx.id} failed")

    job_ids = await add_many(gw_conn, gw_schema, "fails", 16)
    worker = gwcore.Worker(
        gw_database_url,
        schema=gw_schema,
        tasks={"fails": fails},
        concurrency=8,
        fail_job_batch_delay=0,
        plugin_manager=gwcore.create_plugin_manager([recorder], entry_points=False),
    )
    sizes = counting_writes(worker, "_write_failures")

    await worker.run_once()

    assert sorted(recorder.failed) == [(job_id, 1, True) for job_id in job_ids]
    assert await rows(gw_conn, gw_schema) == [
        (job_id, 1, None, f"ValueError: job {job_id} failed") for job_id in job_ids
    ]
    assert sum(sizes) == 16
    assert max(sizes) > 1


async def test_batch_retried_after_dropped_connections(
    gw_database_url: str, gw_schema: str, gw_conn: psycopg.AsyncConnection[Any]
) -> None:
    app_name = f"gw-batch-{uuid.uuid4().hex[:8]}"
    recorder = OutcomeRecorder()
    started: list[int] = []
    release = asyncio.Event()

    async def waits(payload: Any, ctx: gwcore.JobContext) -> None:
        started.append(ctx.id)
        await asyncio.wait_for(release.wait(), 20)

    job_ids = await add_many(gw_conn, gw_schema, "waits", 4)
    worker = gwcore.Worker(
        make_conninfo(gw_database_url, application_name=app_name),
        schema=gw_schema,
        tasks={"waits": waits},
        concurrency=4,
        complete_job_batch_delay=0.05,
        plugin_manager=gwcore.create_plugin_manager([recorder], entry_points=False),
    )
    run_task = asyncio.create_task(worker.run_once())
    for _ in range(400):
        if len(started) == 4:
            break
        await asyncio.sleep(0.05)
    assert len(started) == 4

    # Every connection of the worker drops while its tasks run, so the batch write meets dead
    # connections, fails with a psycopg error and is retried on new ones.
    cursor = await gw_conn.execute(
        "select pg_terminate_backend(pid) from pg_stat_activity "
        "where application_name = %s and pid <> pg_backend_pid()",
        [app_name],
    )
    assert await cursor.fetchall()
    release.set()
    await asyncio.wait_for(run_task, 60)

    assert sorted(started) == job_ids
    assert sorted(recorder.completed) == job_ids
    assert await rows(gw_conn, gw_schema) == []


async def test_shutdown_flushes_pending_batch(
    gw_database_url: str, gw_schema: str, gw_conn: psycopg.AsyncConnection[Any]
) -> None:
    recorder = OutcomeRecorder()
    done = asyncio.Event()

    async def noop(payload: Any, ctx: gwcore.JobContext) -> None:
        done.set()

    job_ids = await add_many(gw_conn, gw_schema, "noop", 1)
    worker = gwcore.Worker(
        gw_database_url,
        schema=gw_schema,
        tasks={"noop": noop},
        complete_job_batch_delay=60,
        plugin_manager=gwcore.create_plugin_manager([recorder], entry_points=False),
    )
    run_task = asyncio.create_task(worker.run())
    await asyncio.wait_for(done.wait(), 20)

    worker.stop()
    await asyncio.wait_for(run_task, 20)

    assert recorder.completed == job_ids
    assert await rows(gw_conn, gw_schema) == []


async def test_unwritable_batch_stays_locked(
    gw_database_url: str,
    gw_schema: str,
    gw_conn: psycopg.AsyncConnection[Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("gwcore.worker.OUTCOME_WRITE_DEADLINE", 0.3)
    monkeypatch.setattr("gwcore.worker.retry_delay", lambda failures: 0.05)
    recorder = OutcomeRecorder()
    started = asyncio.Event()

    async def noop(payload: Any, ctx: gwcore.JobContext) -> None:
        started.set()

    job_ids = await add_many(gw_conn, gw_schema, "noop", 3)
    worker = gwcore.Worker(
        gw_database_url,
        schema=gw_schema,
        tasks={"noop": noop},
        concurrency=3,
        complete_job_batch_delay=0.5,
        worker_id="worker-unwritable-batch",
        plugin_manager=gwcore.create_plugin_manager([recorder], entry_points=False),
    )
    monkeypatch.setattr(
        worker, "_queries", dataclasses.replace(worker._queries, complete_jobs=b"select 1 / 0")
    )
    run_task = asyncio.create_task(worker.run())
    await asyncio.wait_for(started.wait(), 20)
    await asyncio.sleep(0.2)

    worker.stop()
    await asyncio.wait_for(run_task, 30)

    # Never reported complete, never handed back to run again: locked for the stale-lock sweep.
    assert recorder.completed == []
    locked = [row for row in await rows(gw_conn, gw_schema) if row[2] == "worker-unwritable-batch"]
    assert [row[0] for row in locked] == job_ids[: len(locked)]
    assert locked
    assert all(row[1] == 1 for row in locked)


@pytest.mark.parametrize("delay", [-1, float("nan"), "soon"])
def test_invalid_batch_delay_rejected(delay: Any) -> None:
    with pytest.raises(gwcore.ConfigurationError, match="complete_job_batch_delay is invalid"):
        gwcore.Worker("postgresql://localhost/none", tasks={"t": print}, complete_job_batch_delay=delay)


async def test_batching_resumes_next_run(
    gw_database_url: str, gw_schema: str, gw_conn: psycopg.AsyncConnection[Any]
) -> None:
    async def noop(payload: Any, ctx: gwcore.JobContext) -> None:
        return None

    worker = gwcore.Worker(
        gw_database_url,
        schema=gw_schema,
        tasks={"noop": noop},
        concurrency=8,
        complete_job_batch_delay=0.05,
        plugin_manager=gwcore.create_plugin_manager(entry_points=False),
    )
    sizes = counting_writes(worker, "_write_completion_batch")
    await add_many(gw_conn, gw_schema, "noop", 16)
    await worker.run_once()
    first_run = list(sizes)
    await add_many(gw_conn, gw_schema, "noop", 16)
    await worker.run_once()

    second_run = sizes[len(first_run) :]
    assert sum(first_run) == 16
    assert sum(second_run) == 16
    assert max(second_run) > 1


def test_cli_batch_delays(gw_database_url: str, gw_schema: str, tmp_path: Path) -> None:
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "noop.py").write_text("def task(payload, ctx):\n    return None\n")
    environment = {key: value for key, value in os.environ.items() if not key.startswith(("GW_", "DATABASE"))}
    database = ["-c", gw_database_url, "-s", gw_schema]

    def gw(*arguments: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "gwcore.cli", *arguments],
            cwd=tmp_path,
            env=environment,
            capture_output=True,
            text=True,
            timeout=60,
        )

    for _ in range(3):
        assert gw("add", *database, "noop").returncode == 0
    worked = gw(
        "worker", *database, "--once", "-j", "3", "--complete-batch-delay", "0", "--fail-batch-delay", "0.01"
    )

    assert worked.returncode == 0, worked.stderr
    assert worked.stderr.count("completed noop job") == 3
    with psycopg.connect(gw_database_url) as conn:
        count = conn.execute(
            sql.SQL("select count(*) from {}._private_jobs").format(sql.Identifier(gw_schema))
        ).fetchone()
    assert count == (0,)
