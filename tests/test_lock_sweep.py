"""The stale-lock sweep: locks older than 4 hours are released, younger ones are left alone."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import psycopg
from psycopg import sql

import gwcore
from gwcore.plugins import create_plugin_manager


async def _lock(conn: psycopg.AsyncConnection[Any], schema: str, job_id: int, age: str) -> None:
    """Lock a job and its queue as a worker named 'crashed' would have, ``age`` ago."""
    await conn.execute(
        sql.SQL(
            "update {s}._private_jobs set locked_by = 'crashed', locked_at = now() - %(age)s::interval,"
            " attempts = attempts + 1 where id = %(id)s"
        ).format(s=sql.Identifier(schema)),
        {"age": age, "id": job_id},
    )
    await conn.execute(
        sql.SQL(
            "update {s}._private_job_queues as q set locked_by = 'crashed',"
            " locked_at = now() - %(age)s::interval"
            " from {s}._private_jobs as j where j.id = %(id)s and q.id = j.job_queue_id"
        ).format(s=sql.Identifier(schema)),
        {"age": age, "id": job_id},
    )


async def _job_row(conn: psycopg.AsyncConnection[Any], schema: str, job_id: int) -> tuple[Any, ...]:
    cursor = await conn.execute(
        sql.SQL(
            "select locked_by, locked_at, attempts, run_at, now() from {s}._private_jobs where id = %s"
        ).format(s=sql.Identifier(schema)),
        [job_id],
    )
    row = await cursor.fetchone()
    assert row is not None
    return row


async def _queue_lock(conn: psycopg.AsyncConnection[Any], schema: str, name: str) -> Any:
    cursor = await conn.execute(
        sql.SQL("select locked_by from {s}._private_job_queues where queue_name = %s").format(
            s=sql.Identifier(schema)
        ),
        [name],
    )
    row = await cursor.fetchone()
    assert row is not None
    return row[0]


async def test_stale_job_and_queue_released(gw_conn: psycopg.AsyncConnection[Any], gw_schema: str) -> None:
    job = await gwcore.add_job(gw_conn, "task", queue_name="stale_q", schema=gw_schema)
    assert job is not None
    await _lock(gw_conn, gw_schema, job.id, "5 hours")

    released = await gwcore.release_stale_locks(gw_conn, gw_schema)

    assert released == (1, 1)
    locked_by, locked_at, attempts, run_at, now = await _job_row(gw_conn, gw_schema, job.id)
    assert locked_by is None
    assert locked_at is None
    assert attempts == 1  # the crashed attempt stays counted, as graphile-worker counts it
    assert run_at > job.run_at  # a run_at in the past moves up to the time of the sweep
    assert run_at <= now
    assert await _queue_lock(gw_conn, gw_schema, "stale_q") is None


async def test_recent_lock_left_alone(gw_conn: psycopg.AsyncConnection[Any], gw_schema: str) -> None:
    job = await gwcore.add_job(gw_conn, "task", queue_name="busy_q", schema=gw_schema)
    assert job is not None
    await _lock(gw_conn, gw_schema, job.id, "3 hours 59 minutes")

    released = await gwcore.release_stale_locks(gw_conn, gw_schema)

    assert released == (0, 0)
    locked_by, _, attempts, _, _ = await _job_row(gw_conn, gw_schema, job.id)
    assert locked_by == "crashed"
    assert attempts == 1
    assert await _queue_lock(gw_conn, gw_schema, "busy_q") == "crashed"


async def test_future_run_at_kept(gw_conn: psycopg.AsyncConnection[Any], gw_schema: str) -> None:
    later = datetime.now().astimezone() + timedelta(days=1)
    job = await gwcore.add_job(gw_conn, "task", run_at=later, schema=gw_schema)
    assert job is not None
    await _lock(gw_conn, gw_schema, job.id, "5 hours")

    await gwcore.release_stale_locks(gw_conn, gw_schema)

    locked_by, _, _, run_at, _ = await _job_row(gw_conn, gw_schema, job.id)
    assert locked_by is None
    assert run_at == job.run_at


async def test_worker_sweeps_at_start(
    gw_database_url: str, gw_conn: psycopg.AsyncConnection[Any], gw_schema: str
) -> None:
    job = await gwcore.add_job(gw_conn, "task", schema=gw_schema)
    assert job is not None
    await _lock(gw_conn, gw_schema, job.id, "5 hours")
    ran: list[int] = []

    async def task(payload: Any, ctx: gwcore.JobContext) -> None:
        ran.append(ctx.id)

    worker = gwcore.Worker(
        gw_database_url,
        tasks={"task": task},
        schema=gw_schema,
        plugin_manager=create_plugin_manager(entry_points=False),
        poll_interval=0.1,
    )
    # The sweep runs in the background at start; give it a few polls to release the job.
    for _ in range(50):
        await worker.run_once()
        if ran:
            break

    assert ran == [job.id]


async def test_sweep_plugin_blockable(
    gw_database_url: str, gw_conn: psycopg.AsyncConnection[Any], gw_schema: str
) -> None:
    job = await gwcore.add_job(gw_conn, "task", schema=gw_schema)
    assert job is not None
    await _lock(gw_conn, gw_schema, job.id, "5 hours")

    async def task(payload: Any, ctx: gwcore.JobContext) -> None:
        raise AssertionError("a stale job ran although the sweep plugin was blocked")

    worker = gwcore.Worker(
        gw_database_url,
        tasks={"task": task},
        schema=gw_schema,
        plugin_manager=create_plugin_manager(entry_points=False, blocked=["lock_sweep"]),
    )
    await worker.run_once()

    locked_by, _, _, _, _ = await _job_row(gw_conn, gw_schema, job.id)
    assert locked_by == "crashed"
