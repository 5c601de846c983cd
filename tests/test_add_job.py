"""Adding jobs through the public API: add_job, add_jobs and their sync twins, against real PostgreSQL."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import psycopg
import pytest
from psycopg import pq, sql
from psycopg.conninfo import make_conninfo
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool, ConnectionPool

import gwcore
from gwcore import Job, JobScheduleError, JobScheduleResult, JobSpec, PluginError, ValidationError
from gwcore.migrate import migrate
from gwcore.testing import new_schema_name

RUN_AT = datetime(2031, 5, 6, 7, 8, 9, tzinfo=UTC)


def _plugins(*plugins: object) -> gwcore.PluginManager:
    return gwcore.create_plugin_manager(list(plugins), entry_points=False)


def _query(template: str, schema: str) -> sql.Composed:
    return sql.SQL(template).format(schema=sql.Identifier(schema))


async def _count(conn: psycopg.AsyncConnection[Any], schema: str) -> int:
    cursor = await conn.execute(_query("select count(*) from {schema}.jobs", schema))
    row = await cursor.fetchone()
    assert row is not None
    return int(row[0])


def _count_sync(url: str, schema: str) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(_query("select count(*) from {schema}.jobs", schema)).fetchone()
    assert row is not None
    return int(row[0])


async def _rows(conn: psycopg.AsyncConnection[Any], schema: str) -> list[dict[str, Any]]:
    """Return every job with its payload, task identifier and queue name, ordered by id."""
    query = _query(
        "select jobs.*, tasks.identifier as task_identifier, queues.queue_name"
        " from {schema}._private_jobs as jobs"
        " join {schema}._private_tasks as tasks on tasks.id = jobs.task_id"
        " left join {schema}._private_job_queues as queues on queues.id = jobs.job_queue_id"
        " order by jobs.id",
        schema,
    )
    async with conn.cursor(row_factory=dict_row) as cursor:
        await cursor.execute(query)
        return await cursor.fetchall()


async def _clock(conn: psycopg.AsyncConnection[Any]) -> datetime:
    cursor = await conn.execute("select clock_timestamp()")
    row = await cursor.fetchone()
    assert row is not None
    value: datetime = row[0]
    return value


def _counting_cursor(log: list[str]) -> type[psycopg.AsyncCursor[Any]]:
    """Return a cursor class that appends every statement it executes to ``log``."""

    class CountingCursor(psycopg.AsyncCursor[Any]):
        async def execute(self, query: Any, params: Any = None, **kwargs: Any) -> CountingCursor:
            text = query.as_string(self) if isinstance(query, sql.Composable) else str(query)
            in_pipeline = self.connection.pgconn.pipeline_status != pq.PipelineStatus.OFF
            log.append(("pipelined: " if in_pipeline else "") + text)
            await super().execute(query, params, **kwargs)
            return self

    return CountingCursor


# --- add_job: the returned Job, defaults and targets ----------------------------------------


async def test_add_job_returns_job(gw_conn: psycopg.AsyncConnection[Any], gw_schema: str) -> None:
    job = await gwcore.add_job(
        gw_conn,
        "send_email",
        {"to": "ada@example.com", "n": [1, 2]},
        queue_name="mail",
        run_at=RUN_AT,
        max_attempts=3,
        job_key="welcome:ada",
        priority=-5,
        flags=["slow", "smtp"],
        schema=gw_schema,
        plugins=_plugins(),
    )

    assert isinstance(job, Job)
    assert job.task_identifier == "send_email"
    assert job.queue_name == "mail"
    assert job.payload == {"to": "ada@example.com", "n": [1, 2]}
    assert job.priority == -5
    assert job.run_at == RUN_AT
    assert job.max_attempts == 3
    assert job.key == "welcome:ada"
    assert job.flags == {"slow": True, "smtp": True}
    assert job.attempts == 0
    assert job.revision == 0
    assert job.locked_at is None
    assert job.locked_by is None
    rows = await _rows(gw_conn, gw_schema)
    assert len(rows) == 1
    row = rows[0]
    assert row["id"] == job.id
    assert row["task_id"] == job.task_id
    assert row["job_queue_id"] == job.job_queue_id
    assert row["task_identifier"] == "send_email"
    assert row["queue_name"] == "mail"
    assert row["payload"] == {"to": "ada@example.com", "n": [1, 2]}
    assert row["priority"] == -5
    assert row["run_at"] == RUN_AT
    assert row["max_attempts"] == 3
    assert row["key"] == "welcome:ada"
    assert row["flags"] == {"slow": True, "smtp": True}


async def test_add_job_defaults(gw_conn: psycopg.AsyncConnection[Any], gw_schema: str) -> None:
    before = await _clock(gw_conn)
    job = await gwcore.add_job(gw_conn, "plain", schema=gw_schema, plugins=_plugins())
    after = await _clock(gw_conn)

    assert job is not None
    assert job.payload == {}
    assert job.max_attempts == 25
    assert job.priority == 0
    assert before <= job.run_at <= after
    assert job.queue_name is None
    assert job.job_queue_id is None
    assert job.key is None
    assert job.flags is None
    assert job.attempts == 0
    assert job.last_error is None
    rows = await _rows(gw_conn, gw_schema)
    assert [row["payload"] for row in rows] == [{}]


async def test_add_job_returns_ids_in_order(gw_conn: psycopg.AsyncConnection[Any], gw_schema: str) -> None:
    first = await gwcore.add_job(gw_conn, "plain", {"n": 1}, schema=gw_schema, plugins=_plugins())
    second = await gwcore.add_job(gw_conn, "plain", {"n": 2}, schema=gw_schema, plugins=_plugins())

    assert first is not None
    assert second is not None
    assert second.id > first.id
    assert second.task_id == first.task_id


async def test_add_job_with_async_pool(
    gw_database_url: str, gw_conn: psycopg.AsyncConnection[Any], gw_schema: str
) -> None:
    async with AsyncConnectionPool(gw_database_url, min_size=1, max_size=2, open=False) as pool:
        job = await gwcore.add_job(pool, "pooled", {"via": "pool"}, schema=gw_schema, plugins=_plugins())

    assert job is not None
    assert job.task_identifier == "pooled"
    assert job.payload == {"via": "pool"}
    rows = await _rows(gw_conn, gw_schema)
    assert [(row["id"], row["payload"]) for row in rows] == [(job.id, {"via": "pool"})]


async def test_add_job_with_dsn(
    gw_database_url: str, gw_conn: psycopg.AsyncConnection[Any], gw_schema: str
) -> None:
    job = await gwcore.add_job(
        gw_database_url, "by_dsn", {"via": "dsn"}, schema=gw_schema, plugins=_plugins()
    )

    assert job is not None
    assert job.task_identifier == "by_dsn"
    rows = await _rows(gw_conn, gw_schema)
    assert [(row["id"], row["payload"]) for row in rows] == [(job.id, {"via": "dsn"})]


def test_add_job_sync_with_connection(gw_database_url: str, gw_schema: str) -> None:
    with psycopg.connect(gw_database_url, autocommit=True) as conn:
        job = gwcore.add_job_sync(
            conn,
            "sync_task",
            {"via": "connection"},
            queue_name="sync_queue",
            run_at=RUN_AT,
            priority=3,
            max_attempts=2,
            job_key="sync_key",
            flags=["f"],
            schema=gw_schema,
            plugins=_plugins(),
        )

    assert job is not None
    assert job.task_identifier == "sync_task"
    assert job.queue_name == "sync_queue"
    assert job.payload == {"via": "connection"}
    assert job.run_at == RUN_AT
    assert job.priority == 3
    assert job.max_attempts == 2
    assert job.key == "sync_key"
    assert job.flags == {"f": True}
    assert _count_sync(gw_database_url, gw_schema) == 1


def test_add_job_sync_defaults(gw_database_url: str, gw_schema: str) -> None:
    job = gwcore.add_job_sync(gw_database_url, "sync_task", schema=gw_schema, plugins=_plugins())

    assert job is not None
    assert job.payload == {}
    assert job.max_attempts == 25
    assert job.priority == 0
    assert job.queue_name is None
    assert job.flags is None
    assert _count_sync(gw_database_url, gw_schema) == 1


def test_add_job_sync_with_pool(gw_database_url: str, gw_schema: str) -> None:
    with ConnectionPool(gw_database_url, min_size=1, max_size=2, open=True) as pool:
        job = gwcore.add_job_sync(pool, "sync_task", {"via": "pool"}, schema=gw_schema, plugins=_plugins())

    assert job is not None
    assert job.payload == {"via": "pool"}
    assert _count_sync(gw_database_url, gw_schema) == 1


def test_add_jobs_sync_with_pool(gw_database_url: str, gw_schema: str) -> None:
    specs = [JobSpec.create("sync_task", {"n": n}) for n in range(3)]
    with ConnectionPool(gw_database_url, min_size=1, max_size=2, open=True) as pool:
        jobs = gwcore.add_jobs_sync(pool, specs, schema=gw_schema, plugins=_plugins())

    assert sorted(job.payload["n"] for job in jobs) == [0, 1, 2]
    assert {job.task_identifier for job in jobs} == {"sync_task"}
    assert _count_sync(gw_database_url, gw_schema) == 3


async def test_add_job_rejects_wrong_target(
    gw_database_url: str, gw_conn: psycopg.AsyncConnection[Any], gw_schema: str
) -> None:
    with psycopg.connect(gw_database_url, autocommit=True) as sync_conn:
        for target in (42, None, sync_conn):
            with pytest.raises(ValidationError) as info:
                await gwcore.add_job(target, "task", schema=gw_schema, plugins=_plugins())  # type: ignore[arg-type]
            message = str(info.value)
            assert "target is invalid" in message
            assert repr(target) in message
            assert "AsyncConnection" in message
            assert "add_job_sync" in message

    with pytest.raises(ValidationError):
        await gwcore.add_jobs(42, [JobSpec.create("task")], schema=gw_schema, plugins=_plugins())  # type: ignore[arg-type]
    assert await _count(gw_conn, gw_schema) == 0


async def test_add_job_sync_rejects_wrong_target(
    gw_conn: psycopg.AsyncConnection[Any], gw_schema: str
) -> None:
    for target in (42, gw_conn):
        with pytest.raises(ValidationError) as info:
            gwcore.add_job_sync(target, "task", schema=gw_schema, plugins=_plugins())  # type: ignore[arg-type]
        message = str(info.value)
        assert "target is invalid" in message
        assert repr(target) in message
        assert "ConnectionPool" in message
        assert "gwcore.add_job" in message

    with pytest.raises(ValidationError):
        gwcore.add_jobs_sync(gw_conn, [JobSpec.create("task")], schema=gw_schema, plugins=_plugins())  # type: ignore[arg-type]
    assert await _count(gw_conn, gw_schema) == 0


# --- the caller's transaction ---------------------------------------------------------------


async def test_add_job_rolled_back(
    gw_database_url: str, gw_conn: psycopg.AsyncConnection[Any], gw_schema: str
) -> None:
    async with await psycopg.AsyncConnection.connect(gw_database_url) as conn:
        job = await gwcore.add_job(conn, "in_tx", {"n": 1}, schema=gw_schema, plugins=_plugins())
        jobs = await gwcore.add_jobs(
            conn, [JobSpec.create("in_tx", {"n": 2})], schema=gw_schema, plugins=_plugins()
        )
        assert job is not None
        assert len(jobs) == 1
        assert await _count(gw_conn, gw_schema) == 0
        await conn.rollback()

    assert await _count(gw_conn, gw_schema) == 0


async def test_add_job_committed(
    gw_database_url: str, gw_conn: psycopg.AsyncConnection[Any], gw_schema: str
) -> None:
    async with await psycopg.AsyncConnection.connect(gw_database_url) as conn:
        job = await gwcore.add_job(conn, "in_tx", {"n": 1}, schema=gw_schema, plugins=_plugins())
        assert await _count(gw_conn, gw_schema) == 0
        await conn.commit()

    assert job is not None
    rows = await _rows(gw_conn, gw_schema)
    assert [row["id"] for row in rows] == [job.id]


async def test_add_job_in_transaction_block(
    gw_database_url: str, gw_conn: psycopg.AsyncConnection[Any], gw_schema: str
) -> None:
    async with await psycopg.AsyncConnection.connect(gw_database_url, autocommit=True) as conn:
        with pytest.raises(RuntimeError, match="abort the transaction"):
            async with conn.transaction():
                await gwcore.add_job(conn, "in_tx", schema=gw_schema, plugins=_plugins())
                raise RuntimeError("abort the transaction")
        assert await _count(gw_conn, gw_schema) == 0

        async with conn.transaction():
            kept = await gwcore.add_job(conn, "in_tx", schema=gw_schema, plugins=_plugins())

    assert kept is not None
    rows = await _rows(gw_conn, gw_schema)
    assert [row["id"] for row in rows] == [kept.id]


def test_add_job_sync_rolled_back(gw_database_url: str, gw_schema: str) -> None:
    with psycopg.connect(gw_database_url) as conn:
        job = gwcore.add_job_sync(conn, "in_tx", schema=gw_schema, plugins=_plugins())
        jobs = gwcore.add_jobs_sync(conn, [JobSpec.create("in_tx")], schema=gw_schema, plugins=_plugins())
        assert job is not None
        assert len(jobs) == 1
        assert _count_sync(gw_database_url, gw_schema) == 0
        conn.rollback()

    assert _count_sync(gw_database_url, gw_schema) == 0


def test_add_job_sync_committed(gw_database_url: str, gw_schema: str) -> None:
    with psycopg.connect(gw_database_url) as conn:
        with pytest.raises(RuntimeError, match="abort"):
            with conn.transaction():
                gwcore.add_job_sync(conn, "in_tx", schema=gw_schema, plugins=_plugins())
                raise RuntimeError("abort")
        job = gwcore.add_job_sync(conn, "in_tx", schema=gw_schema, plugins=_plugins())
        assert _count_sync(gw_database_url, gw_schema) == 0
        conn.commit()

    assert job is not None
    assert _count_sync(gw_database_url, gw_schema) == 1


# --- add_jobs -------------------------------------------------------------------------------


async def test_add_jobs_one_round_trip(
    gw_database_url: str, gw_conn: psycopg.AsyncConnection[Any], gw_schema: str
) -> None:
    statements: list[str] = []
    specs = [JobSpec.create("batch", {"n": n}, flags=[f"f{n}"]) for n in range(5)]
    specs.append(JobSpec.create("other", queue_name="q"))
    async with await psycopg.AsyncConnection.connect(
        gw_database_url, autocommit=True, cursor_factory=_counting_cursor(statements)
    ) as conn:
        jobs = await gwcore.add_jobs(conn, specs, schema=gw_schema, plugins=_plugins())

    # The insert and the lookup of task and queue names go out together in one pipeline.
    assert len(statements) == 2
    assert statements[0].startswith("pipelined: ")
    assert "add_jobs" in statements[0]
    assert statements[1].startswith("pipelined: ")
    assert "_private_tasks" in statements[1]
    assert sorted(job.task_identifier for job in jobs) == ["batch"] * 5 + ["other"]
    assert [job.queue_name for job in jobs if job.task_identifier == "other"] == ["q"]
    jobs = [job for job in jobs if job.task_identifier == "batch"]
    assert len(jobs) == 5
    assert sorted(job.payload["n"] for job in jobs) == [0, 1, 2, 3, 4]
    assert len(await _rows(gw_conn, gw_schema)) == 6


async def test_add_jobs_per_spec_options(gw_conn: psycopg.AsyncConnection[Any], gw_schema: str) -> None:
    specs = [
        JobSpec.create(
            "alpha", {"n": 0}, queue_name="q1", flags=["x"], priority=1, max_attempts=2, run_at=RUN_AT
        ),
        JobSpec.create("beta", {"n": 1}, queue_name="q2", flags=["y", "z"]),
        JobSpec.create("alpha", {"n": 2}),
        JobSpec.create("gamma", {"n": 3}, queue_name="q1", job_key="key3"),
    ]

    jobs = await gwcore.add_jobs(gw_conn, specs, schema=gw_schema, plugins=_plugins())

    by_n = {job.payload["n"]: job for job in jobs}
    assert sorted(by_n) == [0, 1, 2, 3]
    assert (by_n[0].task_identifier, by_n[0].queue_name, by_n[0].flags) == ("alpha", "q1", {"x": True})
    assert (by_n[0].priority, by_n[0].max_attempts, by_n[0].run_at) == (1, 2, RUN_AT)
    assert (by_n[1].task_identifier, by_n[1].queue_name, by_n[1].flags) == (
        "beta",
        "q2",
        {"y": True, "z": True},
    )
    assert (by_n[2].task_identifier, by_n[2].queue_name, by_n[2].flags) == ("alpha", None, None)
    assert (by_n[2].priority, by_n[2].max_attempts) == (0, 25)
    assert (by_n[3].task_identifier, by_n[3].queue_name, by_n[3].key) == ("gamma", "q1", "key3")
    rows = {row["payload"]["n"]: row for row in await _rows(gw_conn, gw_schema)}
    for n, job in by_n.items():
        assert rows[n]["id"] == job.id
        assert rows[n]["task_identifier"] == job.task_identifier
        assert rows[n]["queue_name"] == job.queue_name
        assert rows[n]["flags"] == job.flags


async def test_add_jobs_empty_list(gw_database_url: str, gw_schema: str) -> None:
    statements: list[str] = []
    async with await psycopg.AsyncConnection.connect(
        gw_database_url, autocommit=True, cursor_factory=_counting_cursor(statements)
    ) as conn:
        jobs = await gwcore.add_jobs(conn, [], schema=gw_schema, plugins=_plugins())

    assert jobs == []
    assert statements == []


async def test_add_jobs_empty_closed_connection(gw_database_url: str, gw_schema: str) -> None:
    conn = await psycopg.AsyncConnection.connect(gw_database_url)
    await conn.close()

    assert await gwcore.add_jobs(conn, [], schema=gw_schema, plugins=_plugins()) == []


def test_add_jobs_sync_empty_list(gw_database_url: str, gw_schema: str) -> None:
    conn = psycopg.connect(gw_database_url)
    conn.close()

    assert gwcore.add_jobs_sync(conn, [], schema=gw_schema, plugins=_plugins()) == []


async def test_add_jobs_rejects_unsafe_dedupe(gw_conn: psycopg.AsyncConnection[Any], gw_schema: str) -> None:
    specs = [JobSpec.create("batch"), JobSpec.create("batch", job_key="k", job_key_mode="unsafe_dedupe")]

    with pytest.raises(ValidationError) as info:
        await gwcore.add_jobs(gw_conn, specs, schema=gw_schema, plugins=_plugins())

    message = str(info.value)
    assert "specs[1].job_key_mode" in message
    assert "unsafe_dedupe" in message
    assert "add_job" in message
    assert await _count(gw_conn, gw_schema) == 0


async def test_add_jobs_rejects_preserve_run_at(
    gw_conn: psycopg.AsyncConnection[Any], gw_schema: str
) -> None:
    specs = [JobSpec.create("batch", job_key="k", job_key_mode="preserve_run_at")]

    with pytest.raises(ValidationError) as info:
        await gwcore.add_jobs(gw_conn, specs, schema=gw_schema, plugins=_plugins())

    message = str(info.value)
    assert "specs[0].job_key_mode" in message
    assert "preserve_run_at" in message
    assert "job_key_preserve_run_at=True" in message
    assert await _count(gw_conn, gw_schema) == 0

    jobs = await gwcore.add_jobs(
        gw_conn, specs, job_key_preserve_run_at=True, schema=gw_schema, plugins=_plugins()
    )
    assert [job.key for job in jobs] == ["k"]


def test_add_jobs_sync_rejects_unsafe_dedupe(gw_database_url: str, gw_schema: str) -> None:
    specs = [JobSpec.create("batch", job_key="k", job_key_mode="unsafe_dedupe")]

    with pytest.raises(ValidationError, match="unsafe_dedupe"):
        gwcore.add_jobs_sync(gw_database_url, specs, schema=gw_schema, plugins=_plugins())

    assert _count_sync(gw_database_url, gw_schema) == 0


# --- identity values of tasks and queues ----------------------------------------------------


async def _sequence_values(conn: psycopg.AsyncConnection[Any], schema: str) -> tuple[Any, ...]:
    cursor = await conn.execute(
        _query(
            "select tasks.last_value, tasks.is_called, queues.last_value, queues.is_called"
            " from {schema}.tasks_id_seq as tasks, {schema}.job_queues_id_seq as queues",
            schema,
        )
    )
    row = await cursor.fetchone()
    assert row is not None
    return tuple(row)


async def test_lookups_keep_identity_values(
    gw_database_url: str, gw_conn: psycopg.AsyncConnection[Any], gw_schema: str
) -> None:
    plugins = _plugins()
    await gwcore.add_job(gw_conn, "known", queue_name="known_queue", schema=gw_schema, plugins=plugins)
    before = await _sequence_values(gw_conn, gw_schema)

    for n in range(3):
        await gwcore.add_job(
            gw_conn, "known", {"n": n}, queue_name="known_queue", schema=gw_schema, plugins=plugins
        )
    await gwcore.add_jobs(
        gw_conn,
        [JobSpec.create("known", {"n": n}, queue_name="known_queue") for n in range(3)],
        schema=gw_schema,
        plugins=plugins,
    )
    await gwcore.add_job(
        gw_conn,
        "known",
        queue_name="known_queue",
        job_key="dedupe",
        job_key_mode="unsafe_dedupe",
        schema=gw_schema,
        plugins=plugins,
    )
    gwcore.add_job_sync(gw_database_url, "known", queue_name="known_queue", schema=gw_schema, plugins=plugins)
    after = await _sequence_values(gw_conn, gw_schema)

    assert after == before
    assert await _count(gw_conn, gw_schema) == 9

    await gwcore.add_job(gw_conn, "new_task", queue_name="new_queue", schema=gw_schema, plugins=plugins)
    grown = await _sequence_values(gw_conn, gw_schema)
    assert grown[0] == before[0] + 1
    assert grown[2] == before[2] + 1


# --- the jobs:insert notification -----------------------------------------------------------


@pytest.fixture
async def notify_target(gw_database_url: str) -> AsyncIterator[tuple[str, str]]:
    """A database of this test's own with a migrated schema, as (connection string, schema).

    NOTIFY channels are per database, so jobs that other tests add in the shared test
    database would also reach a listener on jobs:insert there.
    """
    database = new_schema_name("gw_notify")
    schema = "graphile_worker"
    async with await psycopg.AsyncConnection.connect(gw_database_url, autocommit=True) as admin:
        await admin.execute(sql.SQL("create database {}").format(sql.Identifier(database)))
        try:
            url = make_conninfo(gw_database_url, dbname=database)
            async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
                await migrate(conn, schema)
            yield url, schema
        finally:
            await admin.execute(sql.SQL("drop database {} with (force)").format(sql.Identifier(database)))


async def _next_notification(listener: psycopg.AsyncConnection[Any]) -> psycopg.Notify:
    async for notify in listener.notifies(timeout=30, stop_after=1):
        return notify
    raise AssertionError("timed out after 30 seconds waiting for a notification on jobs:insert")


async def test_add_job_notifies(notify_target: tuple[str, str]) -> None:
    url, schema = notify_target
    secret = "s3cr3t-token-4f1a"
    async with (
        await psycopg.AsyncConnection.connect(url, autocommit=True) as listener,
        await psycopg.AsyncConnection.connect(url, autocommit=True) as conn,
    ):
        await listener.execute('listen "jobs:insert"')

        await gwcore.add_job(conn, "notified", {"token": secret}, schema=schema, plugins=_plugins())
        single = await _next_notification(listener)

        specs = [JobSpec.create("notified", {"token": secret, "n": n}) for n in range(3)]
        await gwcore.add_jobs(conn, specs, schema=schema, plugins=_plugins())
        batch = await _next_notification(listener)

    assert single.channel == "jobs:insert"
    assert json.loads(single.payload)["count"] == 1
    assert secret not in single.payload
    assert "token" not in single.payload
    assert batch.channel == "jobs:insert"
    assert json.loads(batch.payload)["count"] == 3
    assert secret not in batch.payload


async def test_rolled_back_add_not_notified(notify_target: tuple[str, str]) -> None:
    url, schema = notify_target
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as listener:
        await listener.execute('listen "jobs:insert"')
        async with await psycopg.AsyncConnection.connect(url) as conn:
            await gwcore.add_job(conn, "notified", {"n": "rolled back"}, schema=schema, plugins=_plugins())
            await conn.rollback()
        await gwcore.add_jobs(
            url, [JobSpec.create("notified", {"n": n}) for n in range(2)], schema=schema, plugins=_plugins()
        )

        notify = await _next_notification(listener)

    assert json.loads(notify.payload)["count"] == 2


# --- bigint job ids -------------------------------------------------------------------------

BIG_ID = 3_000_000_000


async def _select_one(
    conn: psycopg.AsyncConnection[Any], template: str, schema: str, *params: Any
) -> dict[str, Any] | None:
    async with conn.cursor(row_factory=dict_row) as cursor:
        await cursor.execute(_query(template, schema), params)
        return await cursor.fetchone()


async def test_bigint_job_ids(gw_conn: psycopg.AsyncConnection[Any], gw_schema: str) -> None:
    await gw_conn.execute(
        _query("alter table {schema}._private_jobs alter column id restart with 3000000000", gw_schema)
    )
    plugins = _plugins()

    single = await gwcore.add_job(
        gw_conn, "big", {"n": 0}, job_key="big_key", schema=gw_schema, plugins=plugins
    )
    batch = await gwcore.add_jobs(
        gw_conn, [JobSpec.create("big", {"n": n}) for n in (1, 2, 3)], schema=gw_schema, plugins=plugins
    )
    replaced = await gwcore.add_job(
        gw_conn, "big", {"n": 4}, job_key="big_key", schema=gw_schema, plugins=plugins
    )

    assert single is not None
    assert single.id == BIG_ID
    assert sorted(job.id for job in batch) == [BIG_ID + 1, BIG_ID + 2, BIG_ID + 3]
    assert replaced is not None
    assert replaced.id == BIG_ID
    ids = {job.payload["n"]: job.id for job in batch}

    completed = await _select_one(
        gw_conn, "select * from {schema}.complete_jobs(array[%s]::bigint[])", gw_schema, ids[1]
    )
    assert completed is not None
    assert completed["id"] == ids[1]

    failed = await _select_one(
        gw_conn,
        "select * from {schema}.permanently_fail_jobs(array[%s]::bigint[], 'gave up')",
        gw_schema,
        ids[2],
    )
    assert failed is not None
    assert failed["id"] == ids[2]
    assert failed["attempts"] == failed["max_attempts"]
    assert failed["last_error"] == "gave up"

    rescheduled = await _select_one(
        gw_conn,
        "select * from {schema}.reschedule_jobs(array[%s]::bigint[], run_at => %s, priority => 7)",
        gw_schema,
        ids[3],
        RUN_AT,
    )
    assert rescheduled is not None
    assert rescheduled["id"] == ids[3]
    assert rescheduled["run_at"] == RUN_AT
    assert rescheduled["priority"] == 7

    removed = await _select_one(gw_conn, "select * from {schema}.remove_job('big_key')", gw_schema)
    assert removed is not None
    assert removed["id"] == BIG_ID

    rows = {row["id"]: row for row in await _rows(gw_conn, gw_schema)}
    assert set(rows) == {ids[2], ids[3]}
    assert rows[ids[2]]["last_error"] == "gave up"
    assert rows[ids[3]]["priority"] == 7


# --- the gw_before_job_schedule hook --------------------------------------------------------


def _tagger(
    name: str, log: list[tuple[str, Any]], *, tryfirst: bool = False, trylast: bool = False
) -> SimpleNamespace:
    """Return a plugin that records the payload it receives and adds ``{name: True}`` to it."""

    @gwcore.hookimpl(tryfirst=tryfirst, trylast=trylast)
    def gw_before_job_schedule(ctx: Any) -> JobScheduleResult:
        log.append((name, ctx.payload))
        return JobScheduleResult.continue_with({**ctx.payload, name: True})

    return SimpleNamespace(__name__=name, gw_before_job_schedule=gw_before_job_schedule)


def _gatekeeper(decide: Callable[[Any], Any]) -> SimpleNamespace:
    """Return a plugin named "gatekeeper" whose hook returns ``decide(ctx)``."""

    @gwcore.hookimpl
    def gw_before_job_schedule(ctx: Any) -> Any:
        return decide(ctx)

    return SimpleNamespace(__name__="gatekeeper", gw_before_job_schedule=gw_before_job_schedule)


def _skip_or_fail(ctx: Any) -> Any:
    if ctx.identifier == "skip_me":
        return JobScheduleResult.SKIP
    if ctx.identifier == "reject_me":
        return JobScheduleResult.fail("rejected by policy")
    return None


async def test_hook_threads_payload(gw_conn: psycopg.AsyncConnection[Any], gw_schema: str) -> None:
    log: list[tuple[str, Any]] = []
    plugins = _plugins(_tagger("one", log), _tagger("two", log))

    job = await gwcore.add_job(gw_conn, "hooked", {"base": 1}, schema=gw_schema, plugins=plugins)

    assert job is not None
    assert len(log) == 2
    first_name, first_payload = log[0]
    second_name, second_payload = log[1]
    assert first_payload == {"base": 1}
    assert second_payload == {"base": 1, first_name: True}
    assert job.payload == {"base": 1, "one": True, "two": True}
    rows = await _rows(gw_conn, gw_schema)
    assert [row["payload"] for row in rows] == [{"base": 1, "one": True, "two": True}]
    assert {first_name, second_name} == {"one", "two"}


async def test_hook_order_tryfirst_trylast(gw_conn: psycopg.AsyncConnection[Any], gw_schema: str) -> None:
    log: list[tuple[str, Any]] = []
    # Without the marks, pluggy calls the plugin registered last first.
    plugins = _plugins(
        _tagger("first", log, tryfirst=True), _tagger("middle", log), _tagger("last", log, trylast=True)
    )

    job = await gwcore.add_job(gw_conn, "hooked", {}, schema=gw_schema, plugins=plugins)

    assert [name for name, _ in log] == ["first", "middle", "last"]
    assert log[2][1] == {"first": True, "middle": True}
    assert job is not None
    assert job.payload == {"first": True, "middle": True, "last": True}


async def test_hook_skip(gw_conn: psycopg.AsyncConnection[Any], gw_schema: str) -> None:
    plugins = _plugins(_gatekeeper(_skip_or_fail))

    skipped = await gwcore.add_job(gw_conn, "skip_me", schema=gw_schema, plugins=plugins)
    assert skipped is None
    assert await _count(gw_conn, gw_schema) == 0

    specs = [JobSpec.create("keep", {"n": 1}), JobSpec.create("skip_me"), JobSpec.create("keep", {"n": 2})]
    jobs = await gwcore.add_jobs(gw_conn, specs, schema=gw_schema, plugins=plugins)

    assert sorted(job.payload["n"] for job in jobs) == [1, 2]
    rows = await _rows(gw_conn, gw_schema)
    assert sorted(row["task_identifier"] for row in rows) == ["keep", "keep"]


async def test_hook_skip_whole_batch(gw_conn: psycopg.AsyncConnection[Any], gw_schema: str) -> None:
    plugins = _plugins(_gatekeeper(_skip_or_fail))

    jobs = await gwcore.add_jobs(gw_conn, [JobSpec.create("skip_me")] * 2, schema=gw_schema, plugins=plugins)

    assert jobs == []
    assert await _count(gw_conn, gw_schema) == 0


async def test_hook_fail(gw_conn: psycopg.AsyncConnection[Any], gw_schema: str) -> None:
    plugins = _plugins(_gatekeeper(_skip_or_fail))

    with pytest.raises(JobScheduleError) as info:
        await gwcore.add_job(gw_conn, "reject_me", schema=gw_schema, plugins=plugins)
    assert "gatekeeper" in str(info.value)
    assert "reject_me" in str(info.value)
    assert "rejected by policy" in str(info.value)

    specs = [JobSpec.create("keep"), JobSpec.create("reject_me"), JobSpec.create("keep")]
    with pytest.raises(JobScheduleError, match="rejected by policy"):
        await gwcore.add_jobs(gw_conn, specs, schema=gw_schema, plugins=plugins)

    assert await _count(gw_conn, gw_schema) == 0


async def test_hook_exception_propagates(gw_conn: psycopg.AsyncConnection[Any], gw_schema: str) -> None:
    def explode(ctx: Any) -> Any:
        if ctx.payload.get("explode"):
            raise LookupError("hook broke on purpose")
        return None

    plugins = _plugins(_gatekeeper(explode))

    with pytest.raises(LookupError, match="hook broke on purpose"):
        await gwcore.add_job(gw_conn, "task", {"explode": True}, schema=gw_schema, plugins=plugins)
    with pytest.raises(LookupError, match="hook broke on purpose"):
        await gwcore.add_jobs(
            gw_conn,
            [JobSpec.create("task", {"n": 1}), JobSpec.create("task", {"explode": True})],
            schema=gw_schema,
            plugins=plugins,
        )

    assert await _count(gw_conn, gw_schema) == 0


async def test_hook_invalid_return(gw_conn: psycopg.AsyncConnection[Any], gw_schema: str) -> None:
    plugins = _plugins(_gatekeeper(lambda ctx: "not a result"))

    with pytest.raises(PluginError) as info:
        await gwcore.add_job(gw_conn, "task", schema=gw_schema, plugins=plugins)

    assert "gatekeeper" in str(info.value)
    assert "'not a result'" in str(info.value)
    assert await _count(gw_conn, gw_schema) == 0


async def test_hook_invalid_payload(gw_conn: psycopg.AsyncConnection[Any], gw_schema: str) -> None:
    plugins = _plugins(_gatekeeper(lambda ctx: JobScheduleResult.continue_with({"bad": float("nan")})))

    with pytest.raises(ValidationError, match="payload"):
        await gwcore.add_job(gw_conn, "task", schema=gw_schema, plugins=plugins)

    assert await _count(gw_conn, gw_schema) == 0


class AsyncEnricher:
    """A plugin whose hook is a coroutine function."""

    __name__ = "async_enricher"

    @gwcore.hookimpl
    async def gw_before_job_schedule(self, ctx: Any) -> JobScheduleResult:
        await asyncio.sleep(0)
        return JobScheduleResult.continue_with({**ctx.payload, "enriched": ctx.identifier})


async def test_async_hook(gw_conn: psycopg.AsyncConnection[Any], gw_schema: str) -> None:
    plugins = _plugins(AsyncEnricher())

    job = await gwcore.add_job(gw_conn, "task", {"n": 1}, schema=gw_schema, plugins=plugins)
    jobs = await gwcore.add_jobs(
        gw_conn, [JobSpec.create("batch", {"n": 2})], schema=gw_schema, plugins=plugins
    )

    assert job is not None
    assert job.payload == {"n": 1, "enriched": "task"}
    assert [job.payload for job in jobs] == [{"n": 2, "enriched": "batch"}]


def test_sync_api_runs_hooks(gw_database_url: str, gw_schema: str) -> None:
    log: list[tuple[str, Any]] = []
    plugins = _plugins(_tagger("tag", log), AsyncEnricher(), _gatekeeper(_skip_or_fail))

    job = gwcore.add_job_sync(gw_database_url, "task", {"n": 1}, schema=gw_schema, plugins=plugins)
    skipped = gwcore.add_job_sync(gw_database_url, "skip_me", schema=gw_schema, plugins=plugins)
    with pytest.raises(JobScheduleError, match="rejected by policy"):
        gwcore.add_job_sync(gw_database_url, "reject_me", schema=gw_schema, plugins=plugins)
    jobs = gwcore.add_jobs_sync(
        gw_database_url,
        [JobSpec.create("batch", {"n": 2}), JobSpec.create("skip_me")],
        schema=gw_schema,
        plugins=plugins,
    )
    with pytest.raises(JobScheduleError):
        gwcore.add_jobs_sync(
            gw_database_url,
            [JobSpec.create("batch", {"n": 3}), JobSpec.create("reject_me")],
            schema=gw_schema,
            plugins=plugins,
        )

    assert job is not None
    assert job.payload == {"n": 1, "tag": True, "enriched": "task"}
    assert skipped is None
    assert [job.payload for job in jobs] == [{"n": 2, "tag": True, "enriched": "batch"}]
    assert _count_sync(gw_database_url, gw_schema) == 2


async def test_sync_api_async_hook_in_loop(
    gw_database_url: str, gw_conn: psycopg.AsyncConnection[Any], gw_schema: str
) -> None:
    plugins = _plugins(AsyncEnricher())

    with pytest.raises(PluginError) as info:
        gwcore.add_job_sync(gw_database_url, "task", schema=gw_schema, plugins=plugins)
    with pytest.raises(PluginError):
        gwcore.add_jobs_sync(gw_database_url, [JobSpec.create("task")], schema=gw_schema, plugins=plugins)

    message = str(info.value)
    assert "async_enricher" in message
    assert "async def" in message
    assert "running event loop" in message
    assert "gwcore.add_job" in message
    assert await _count(gw_conn, gw_schema) == 0


# --- jobs added by the SQL function from a trigger ------------------------------------------


async def test_sql_add_job_from_trigger(
    gw_database_url: str, gw_conn: psycopg.AsyncConnection[Any], gw_schema: str
) -> None:
    await gw_conn.execute(
        _query(
            """
            create table {schema}.widgets (id serial primary key, name text not null);
            create function {schema}.widgets_enqueue() returns trigger language plpgsql as $$
            begin
              perform {schema}.add_job('process_widget', json_build_object('id', new.id));
              return new;
            end;
            $$;
            create trigger widgets_enqueue after insert on {schema}.widgets
              for each row execute function {schema}.widgets_enqueue();
            """,
            gw_schema,
        )
    )

    cursor = await gw_conn.execute(
        _query("insert into {schema}.widgets (name) values ('gear') returning id", gw_schema)
    )
    inserted = await cursor.fetchone()
    assert inserted is not None
    async with await psycopg.AsyncConnection.connect(gw_database_url) as conn:
        await conn.execute(_query("insert into {schema}.widgets (name) values ('rolled back')", gw_schema))
        await conn.rollback()

    rows = await _rows(gw_conn, gw_schema)
    assert len(rows) == 1
    assert rows[0]["task_identifier"] == "process_widget"
    assert rows[0]["payload"] == {"id": inserted[0]}
    assert rows[0]["attempts"] == 0
    assert rows[0]["max_attempts"] == 25
    assert rows[0]["key"] is None
