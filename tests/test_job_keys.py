"""Job keys with the semantics of graphile-worker 0.18: modes replace, preserve_run_at, unsafe_dedupe."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

import gwcore
from gwcore import Job, JobKeyContentionError, JobSpec

T1 = datetime(2031, 1, 1, 12, 0, tzinfo=UTC)
T2 = datetime(2032, 2, 2, 12, 0, tzinfo=UTC)
T3 = datetime(2033, 3, 3, 12, 0, tzinfo=UTC)


def _sql(template: str, schema: str) -> sql.Composed:
    return sql.SQL(template).format(schema=sql.Identifier(schema))


def _plugins() -> gwcore.PluginManager:
    return gwcore.create_plugin_manager([], entry_points=False)


async def _execute(conn: psycopg.AsyncConnection[Any], schema: str, template: str, *params: Any) -> None:
    """Run ``template`` with ``{schema}`` replaced by the quoted schema name."""
    await conn.execute(sql.SQL(template).format(schema=sql.Identifier(schema)), params)


async def _rows(conn: psycopg.AsyncConnection[Any], schema: str) -> list[dict[str, Any]]:
    """Return every row of ``_private_jobs`` with its task identifier, ordered by id."""
    query = sql.SQL(
        "select jobs.*, tasks.identifier as task_identifier, queues.queue_name"
        " from {schema}._private_jobs as jobs"
        " join {schema}._private_tasks as tasks on tasks.id = jobs.task_id"
        " left join {schema}._private_job_queues as queues on queues.id = jobs.job_queue_id"
        " order by jobs.id"
    ).format(schema=sql.Identifier(schema))
    async with conn.cursor(row_factory=dict_row) as cursor:
        await cursor.execute(query)
        return await cursor.fetchall()


async def _add(conn: psycopg.AsyncConnection[Any], schema: str, *args: Any, **kwargs: Any) -> Job:
    job = await gwcore.add_job(conn, *args, schema=schema, plugins=_plugins(), **kwargs)
    assert job is not None
    return job


# --- replace (the default) ------------------------------------------------------------------


async def test_replace_updates_in_place(gw_conn: psycopg.AsyncConnection[Any], gw_schema: str) -> None:
    first = await _add(
        gw_conn, gw_schema, "task", {"v": 1}, job_key="k", run_at=T1, priority=1, max_attempts=5, flags=["a"]
    )
    await _execute(
        gw_conn,
        gw_schema,
        "update {schema}._private_jobs set attempts = 2, last_error = 'boom' where id = %s",
        first.id,
    )

    second = await _add(
        gw_conn, gw_schema, "task", {"v": 2}, job_key="k", run_at=T2, priority=9, max_attempts=7, flags=["b"]
    )

    assert second.id == first.id
    assert first.revision == 0
    assert second.revision == 1
    assert second.payload == {"v": 2}
    assert second.run_at == T2
    assert second.priority == 9
    assert second.max_attempts == 7
    assert second.attempts == 0
    assert second.last_error is None
    assert second.flags == {"b": True}
    assert second.key == "k"
    rows = await _rows(gw_conn, gw_schema)
    assert len(rows) == 1
    assert rows[0]["id"] == first.id
    assert rows[0]["revision"] == 1
    assert rows[0]["payload"] == {"v": 2}
    assert rows[0]["run_at"] == T2
    assert rows[0]["priority"] == 9
    assert rows[0]["max_attempts"] == 7
    assert rows[0]["attempts"] == 0
    assert rows[0]["last_error"] is None


async def test_replace_is_default_mode(gw_conn: psycopg.AsyncConnection[Any], gw_schema: str) -> None:
    first = await _add(gw_conn, gw_schema, "task", {"v": 1}, job_key="k")
    explicit = await _add(gw_conn, gw_schema, "task", {"v": 2}, job_key="k", job_key_mode="replace")
    implicit = await _add(gw_conn, gw_schema, "task", {"v": 3}, job_key="k")

    assert explicit.id == first.id
    assert implicit.id == first.id
    assert explicit.revision == 1
    assert implicit.revision == 2
    assert implicit.payload == {"v": 3}


async def test_replace_changes_task_and_queue(gw_conn: psycopg.AsyncConnection[Any], gw_schema: str) -> None:
    first = await _add(gw_conn, gw_schema, "old_task", job_key="k", queue_name="old_queue")

    second = await _add(gw_conn, gw_schema, "new_task", job_key="k", queue_name="new_queue")

    assert second.id == first.id
    assert second.task_identifier == "new_task"
    assert second.queue_name == "new_queue"
    rows = await _rows(gw_conn, gw_schema)
    assert len(rows) == 1
    assert rows[0]["task_identifier"] == "new_task"
    assert rows[0]["queue_name"] == "new_queue"


async def test_replace_concatenates_arrays(gw_conn: psycopg.AsyncConnection[Any], gw_schema: str) -> None:
    first = await _add(gw_conn, gw_schema, "task", [1], job_key="k")

    second = await _add(gw_conn, gw_schema, "task", [2], job_key="k")
    third = await _add(gw_conn, gw_schema, "task", [{"x": 3}], job_key="k")

    assert second.id == first.id
    assert second.payload == [1, 2]
    assert third.payload == [1, 2, {"x": 3}]
    rows = await _rows(gw_conn, gw_schema)
    assert [row["payload"] for row in rows] == [[1, 2, {"x": 3}]]


async def test_replace_object_over_array(gw_conn: psycopg.AsyncConnection[Any], gw_schema: str) -> None:
    await _add(gw_conn, gw_schema, "task", [1], job_key="k")

    replaced = await _add(gw_conn, gw_schema, "task", {"v": 2}, job_key="k")
    again = await _add(gw_conn, gw_schema, "task", [3], job_key="k")

    assert replaced.payload == {"v": 2}
    assert again.payload == [3]


async def test_replace_in_batch(gw_conn: psycopg.AsyncConnection[Any], gw_schema: str) -> None:
    first = await _add(gw_conn, gw_schema, "task", {"v": 1}, job_key="k1")

    jobs = await gwcore.add_jobs(
        gw_conn,
        [JobSpec.create("task", {"v": 2}, job_key="k1"), JobSpec.create("task", {"v": 3}, job_key="k2")],
        schema=gw_schema,
        plugins=_plugins(),
    )

    by_key = {job.key: job for job in jobs}
    assert set(by_key) == {"k1", "k2"}
    assert by_key["k1"].id == first.id
    assert by_key["k1"].revision == 1
    assert by_key["k1"].payload == {"v": 2}
    assert by_key["k2"].revision == 0
    assert len(await _rows(gw_conn, gw_schema)) == 2


def test_replace_with_sync_api(gw_database_url: str, gw_schema: str) -> None:
    first = gwcore.add_job_sync(gw_database_url, "task", {"v": 1}, job_key="k", schema=gw_schema)
    second = gwcore.add_job_sync(gw_database_url, "task", {"v": 2}, job_key="k", schema=gw_schema)

    assert first is not None
    assert second is not None
    assert second.id == first.id
    assert second.revision == 1
    assert second.payload == {"v": 2}


# --- preserve_run_at ------------------------------------------------------------------------


async def test_preserve_run_at_keeps_run_at(gw_conn: psycopg.AsyncConnection[Any], gw_schema: str) -> None:
    first = await _add(gw_conn, gw_schema, "task", {"v": 1}, job_key="k", run_at=T1)

    second = await _add(
        gw_conn,
        gw_schema,
        "task",
        {"v": 2},
        job_key="k",
        run_at=T2,
        priority=4,
        job_key_mode="preserve_run_at",
    )

    assert second.id == first.id
    assert second.run_at == T1
    assert second.payload == {"v": 2}
    assert second.priority == 4
    assert second.revision == 1


async def test_preserve_run_at_after_attempt(gw_conn: psycopg.AsyncConnection[Any], gw_schema: str) -> None:
    first = await _add(gw_conn, gw_schema, "task", {"v": 1}, job_key="k", run_at=T1)
    await _execute(
        gw_conn,
        gw_schema,
        "update {schema}._private_jobs set attempts = 1, last_error = 'failed once' where id = %s",
        first.id,
    )

    second = await _add(
        gw_conn, gw_schema, "task", {"v": 2}, job_key="k", run_at=T3, job_key_mode="preserve_run_at"
    )

    assert second.id == first.id
    assert second.run_at == T3
    assert second.attempts == 0
    assert second.last_error is None
    assert second.payload == {"v": 2}


async def test_preserve_run_at_in_batch(gw_conn: psycopg.AsyncConnection[Any], gw_schema: str) -> None:
    first = await _add(gw_conn, gw_schema, "task", {"v": 1}, job_key="k", run_at=T1)

    jobs = await gwcore.add_jobs(
        gw_conn,
        [JobSpec.create("task", {"v": 2}, job_key="k", run_at=T2)],
        job_key_preserve_run_at=True,
        schema=gw_schema,
        plugins=_plugins(),
    )

    assert len(jobs) == 1
    assert jobs[0].id == first.id
    assert jobs[0].run_at == T1
    assert jobs[0].payload == {"v": 2}


async def test_batch_without_preserve_replaces(gw_conn: psycopg.AsyncConnection[Any], gw_schema: str) -> None:
    await _add(gw_conn, gw_schema, "task", job_key="k", run_at=T1)

    jobs = await gwcore.add_jobs(
        gw_conn, [JobSpec.create("task", job_key="k", run_at=T2)], schema=gw_schema, plugins=_plugins()
    )

    assert len(jobs) == 1
    assert jobs[0].run_at == T2


# --- unsafe_dedupe --------------------------------------------------------------------------


async def test_unsafe_dedupe_keeps_job(gw_conn: psycopg.AsyncConnection[Any], gw_schema: str) -> None:
    first = await _add(gw_conn, gw_schema, "task", {"v": 1}, job_key="k", run_at=T1, priority=1)

    second = await _add(
        gw_conn, gw_schema, "task", {"v": 2}, job_key="k", run_at=T2, priority=9, job_key_mode="unsafe_dedupe"
    )

    assert second.id == first.id
    assert second.revision == 1
    assert second.payload == {"v": 1}
    assert second.run_at == T1
    assert second.priority == 1
    rows = await _rows(gw_conn, gw_schema)
    assert len(rows) == 1
    assert rows[0]["payload"] == {"v": 1}
    assert rows[0]["revision"] == 1


async def test_unsafe_dedupe_inserts_new(gw_conn: psycopg.AsyncConnection[Any], gw_schema: str) -> None:
    job = await _add(gw_conn, gw_schema, "task", {"v": 1}, job_key="k", job_key_mode="unsafe_dedupe")

    assert job.revision == 0
    assert job.key == "k"
    assert job.payload == {"v": 1}
    assert job.task_identifier == "task"


async def test_unsafe_dedupe_keeps_locked(gw_conn: psycopg.AsyncConnection[Any], gw_schema: str) -> None:
    first = await _add(gw_conn, gw_schema, "task", {"v": 1}, job_key="k")
    await _execute(
        gw_conn,
        gw_schema,
        "update {schema}._private_jobs set locked_at = now(), locked_by = 'w', attempts = 1 where id = %s",
        first.id,
    )

    second = await _add(gw_conn, gw_schema, "task", {"v": 2}, job_key="k", job_key_mode="unsafe_dedupe")

    assert second.id == first.id
    assert second.payload == {"v": 1}
    assert second.locked_by == "w"
    rows = await _rows(gw_conn, gw_schema)
    assert len(rows) == 1
    assert rows[0]["key"] == "k"
    assert rows[0]["attempts"] == 1


# --- locked and permanently failed keyed jobs -----------------------------------------------


async def test_locked_job_is_detached(gw_conn: psycopg.AsyncConnection[Any], gw_schema: str) -> None:
    first = await _add(gw_conn, gw_schema, "task", {"v": 1}, job_key="k", max_attempts=4)
    await _execute(
        gw_conn,
        gw_schema,
        "update {schema}._private_jobs set locked_at = now(), locked_by = 'w', attempts = 1 where id = %s",
        first.id,
    )

    second = await _add(gw_conn, gw_schema, "task", {"v": 2}, job_key="k")

    assert second.id != first.id
    assert second.key == "k"
    assert second.payload == {"v": 2}
    assert second.revision == 0
    assert second.attempts == 0
    assert second.locked_at is None
    rows = {row["id"]: row for row in await _rows(gw_conn, gw_schema)}
    assert set(rows) == {first.id, second.id}
    old = rows[first.id]
    assert old["key"] is None
    assert old["attempts"] == 4
    assert old["max_attempts"] == 4
    assert old["locked_by"] == "w"
    assert old["payload"] == {"v": 1}
    assert rows[second.id]["key"] == "k"


async def test_locked_job_detached_in_batch(gw_conn: psycopg.AsyncConnection[Any], gw_schema: str) -> None:
    first = await _add(gw_conn, gw_schema, "task", {"v": 1}, job_key="k")
    await _execute(
        gw_conn,
        gw_schema,
        "update {schema}._private_jobs set locked_at = now(), locked_by = 'w' where id = %s",
        first.id,
    )

    jobs = await gwcore.add_jobs(
        gw_conn, [JobSpec.create("task", {"v": 2}, job_key="k")], schema=gw_schema, plugins=_plugins()
    )

    assert len(jobs) == 1
    assert jobs[0].id != first.id
    assert jobs[0].key == "k"
    rows = {row["id"]: row for row in await _rows(gw_conn, gw_schema)}
    assert rows[first.id]["key"] is None
    assert rows[first.id]["attempts"] == 25


async def test_failed_job_is_replaced(gw_conn: psycopg.AsyncConnection[Any], gw_schema: str) -> None:
    first = await _add(gw_conn, gw_schema, "task", {"v": 1}, job_key="k", max_attempts=3)
    await _execute(
        gw_conn,
        gw_schema,
        "update {schema}._private_jobs set attempts = 3, last_error = 'gave up' where id = %s",
        first.id,
    )

    second = await _add(gw_conn, gw_schema, "task", {"v": 2}, job_key="k")

    assert second.id != first.id
    assert second.key == "k"
    assert second.attempts == 0
    assert second.max_attempts == 25
    assert second.payload == {"v": 2}
    rows = {row["id"]: row for row in await _rows(gw_conn, gw_schema)}
    assert set(rows) == {first.id, second.id}
    assert rows[first.id]["key"] is None
    assert rows[first.id]["attempts"] == 3
    assert rows[first.id]["last_error"] == "gave up"
    assert rows[first.id]["payload"] == {"v": 1}


# --- contention -----------------------------------------------------------------------------

KEYS = ("key_a", "key_b", "key_c")
ADDERS = 24
ROUNDS = 3


async def _toggle_locks(url: str, schema: str, stop: asyncio.Event) -> int:
    """Lock and unlock the keyed rows until ``stop`` is set; return the number of cycles.

    Each statement touches one row, so this session never holds one row lock while it waits
    for another and cannot be part of a deadlock.
    """
    lock = _sql("update {schema}._private_jobs set locked_at = now(), locked_by = 'w' where key = %s", schema)
    locked_ids = _sql("select id from {schema}._private_jobs where locked_by = 'w'", schema)
    unlock = _sql(
        "update {schema}._private_jobs set locked_at = null, locked_by = null where id = %s", schema
    )
    cycles = 0
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:

        async def unlock_all() -> None:
            cursor = await conn.execute(locked_ids)
            for (job_id,) in await cursor.fetchall():
                await conn.execute(unlock, [job_id])

        # Bounded so that the loop ends even if the adders hang; the test timeout stops it first.
        while not stop.is_set() and cycles < 100_000:
            for key in KEYS:
                await conn.execute(lock, [key])
                await asyncio.sleep(0)
            await unlock_all()
            cycles += 1
        await unlock_all()
    return cycles


async def _add_contended(pool: AsyncConnectionPool, schema: str, number: int) -> list[Job]:
    key = KEYS[number % len(KEYS)]
    if number % 4 == 0:
        # Batches carrying two keys can deadlock with each other; add_jobs retries those itself.
        other_key = KEYS[(number + 1) % len(KEYS)]
        specs = [
            JobSpec.create("task", {"n": number}, job_key=key),
            JobSpec.create("task", {"n": number}, job_key=other_key),
        ]
        return await gwcore.add_jobs(pool, specs, schema=schema, plugins=_plugins())
    job = await gwcore.add_job(pool, "task", {"n": number}, job_key=key, schema=schema, plugins=_plugins())
    return [job] if job is not None else []


async def test_contended_keys_stay_unique(
    gw_database_url: str, gw_conn: psycopg.AsyncConnection[Any], gw_schema: str
) -> None:
    stop = asyncio.Event()
    locker = asyncio.create_task(_toggle_locks(gw_database_url, gw_schema, stop))
    results: list[Any] = []
    async with AsyncConnectionPool(gw_database_url, min_size=10, max_size=10, open=False) as pool:
        await pool.wait()
        for round_number in range(ROUNDS):
            results += await asyncio.gather(
                *(_add_contended(pool, gw_schema, round_number * ADDERS + n) for n in range(ADDERS)),
                return_exceptions=True,
            )
    stop.set()
    cycles = await locker

    contention_errors = [result for result in results if isinstance(result, JobKeyContentionError)]
    other_errors = [
        result for result in results if isinstance(result, BaseException) and result not in contention_errors
    ]
    job_lists = [result for result in results if isinstance(result, list)]
    assert other_errors == [], "\n\n".join(repr(error) for error in other_errors)
    assert contention_errors == []
    assert len(job_lists) == ADDERS * ROUNDS
    for number, jobs in enumerate(job_lists):
        expected_keys = {KEYS[number % len(KEYS)]}
        if number % 4 == 0:
            expected_keys.add(KEYS[(number + 1) % len(KEYS)])
        assert {job.key for job in jobs} == expected_keys, f"adder {number} returned {jobs!r}"
        assert len(jobs) == len(expected_keys)
        for job in jobs:
            assert job.id is not None
            assert job.payload == {"n": number}
    assert cycles > 0
    cursor = await gw_conn.execute(
        sql.SQL(
            "select key, count(*) from {schema}._private_jobs where key is not null group by key order by key"
        ).format(schema=sql.Identifier(gw_schema))
    )
    assert await cursor.fetchall() == [(key, 1) for key in KEYS]
