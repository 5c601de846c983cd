"""Running jobs with `gwcore.Worker` against a real PostgreSQL.

Each test gets a migrated schema of its own; the LISTEN tests get a database
of their own. Workers connect with an ``application_name`` unique to the
test, so that the test can find their backends in ``pg_stat_activity`` (to
see when they are idle, or to terminate their connections).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo
from psycopg.rows import dict_row

import gwcore
from gwcore.migrate import migrate
from gwcore.testing import new_schema_name

# Adds jobs without the built-in or installed plugins.
ADD_PLUGINS = gwcore.create_plugin_manager(builtins=False, entry_points=False)
WAIT_TIMEOUT = 15.0


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------


def new_app_name() -> str:
    return f"gwtest-{uuid.uuid4().hex[:12]}"


def with_app_name(url: str, app_name: str) -> str:
    """Return ``url`` as a conninfo string that sets ``application_name``."""
    return make_conninfo(url, application_name=app_name)


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


async def job_rows(conn: psycopg.AsyncConnection[Any], schema: str) -> list[dict[str, Any]]:
    query = sql.SQL("select * from {}._private_jobs order by id").format(sql.Identifier(schema))
    async with conn.cursor(row_factory=dict_row) as cursor:
        await cursor.execute(query)
        return await cursor.fetchall()


async def job_row(conn: psycopg.AsyncConnection[Any], schema: str, job_id: int) -> dict[str, Any] | None:
    query = sql.SQL("select * from {}._private_jobs where id = %s").format(sql.Identifier(schema))
    async with conn.cursor(row_factory=dict_row) as cursor:
        await cursor.execute(query, [job_id])
        return await cursor.fetchone()


async def execute(
    conn: psycopg.AsyncConnection[Any], template: str, schema: str, params: Sequence[Any] = ()
) -> None:
    await conn.execute(sql.SQL(template).format(schema=sql.Identifier(schema)), params)


async def database_now(conn: psycopg.AsyncConnection[Any]) -> datetime:
    cursor = await conn.execute("select now()")
    row = await cursor.fetchone()
    assert row is not None
    now: datetime = row[0]
    return now


async def wait_until(
    condition: Callable[[], Awaitable[bool]], what: str, wait_seconds: float = WAIT_TIMEOUT
) -> None:
    """Poll ``condition`` until it is true; fail the test after ``wait_seconds``."""
    deadline = time.monotonic() + wait_seconds
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {wait_seconds} s waiting for {what}")
        await asyncio.sleep(0.05)


async def listener_pids(conn: psycopg.AsyncConnection[Any], app_name: str) -> list[int]:
    cursor = await conn.execute(
        "select pid from pg_stat_activity where application_name = %s and query ilike 'listen%%' "
        "and datname = current_database()",
        [app_name],
    )
    return [row[0] for row in await cursor.fetchall()]


async def wait_worker_idle(conn: psycopg.AsyncConnection[Any], app_name: str) -> None:
    """Wait until the worker LISTENs, has fetched, and none of its backends ran a query for 0.5 s.

    An idle worker fetches again only on a notification or after its poll interval.
    """
    quiet_since: float | None = None

    async def idle() -> bool:
        nonlocal quiet_since
        cursor = await conn.execute(
            "select "
            " count(*) filter (where query ilike 'listen%%'),"
            " count(*) filter (where query ilike '%%available_queues%%'),"
            " count(*) filter (where state <> 'idle' and query not ilike 'listen%%')"
            " from pg_stat_activity where application_name = %s and datname = current_database()",
            [app_name],
        )
        row = await cursor.fetchone()
        assert row is not None
        listening, fetched, busy = row
        if listening == 0 or fetched == 0 or busy > 0:
            quiet_since = None
            return False
        if quiet_since is None:
            quiet_since = time.monotonic()
        return time.monotonic() - quiet_since >= 0.5

    await wait_until(idle, "the worker to be idle and listening")


async def stop_worker(worker: gwcore.Worker, run_task: asyncio.Task[None]) -> None:
    worker.stop()
    await asyncio.wait_for(run_task, WAIT_TIMEOUT)


@dataclass
class Interval:
    job_id: int
    queue: str | None
    start: float
    end: float = math.inf


@dataclass
class OwnDatabase:
    url: str
    schema: str
    conn: psycopg.AsyncConnection[Any]


@pytest.fixture
async def own_database(gw_database_url: str) -> AsyncIterator[OwnDatabase]:
    """A database of this test's own with a migrated schema, dropped afterwards.

    NOTIFY channels belong to a database, not a schema, so ``jobs:insert`` sent
    by tests running at the same time in other schemas would also wake the
    worker, and a test of LISTEN could pass without it.
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
# Async and plain def tasks
# ---------------------------------------------------------------------------


async def test_async_and_sync_tasks_run(
    gw_database_url: str, gw_schema: str, gw_conn: psycopg.AsyncConnection[Any]
) -> None:
    ran: dict[str, Any] = {}
    sync_started = threading.Event()
    release = threading.Event()

    def blocking_task(payload: Any, ctx: gwcore.JobContext) -> None:
        ran["sync_thread"] = threading.current_thread()
        sync_started.set()
        deadline = time.monotonic() + 10
        # Block this thread with time.sleep until the async task, which needs the event loop, releases it.
        while not release.is_set() and time.monotonic() < deadline:
            time.sleep(0.02)
        ran["sync_released"] = release.is_set()

    async def async_task(payload: Any, ctx: gwcore.JobContext) -> None:
        ran["async_thread"] = threading.current_thread()
        await asyncio.to_thread(sync_started.wait, 10)
        ran["sync_running_during_async"] = "sync_released" not in ran
        release.set()

    blocking = await add(gw_conn, gw_schema, "blocking", {"kind": "sync"})
    probe = await add(gw_conn, gw_schema, "probe", {"kind": "async"})
    worker = make_worker(
        gw_database_url, gw_schema, {"blocking": blocking_task, "probe": async_task}, concurrency=2
    )

    await asyncio.wait_for(worker.run_once(), 30)

    assert ran["sync_thread"] is not threading.main_thread()
    assert ran["sync_thread"].name.startswith("gwcore-task")
    assert ran["async_thread"] is threading.main_thread()
    assert ran["sync_running_during_async"] is True
    assert ran["sync_released"] is True
    assert await job_row(gw_conn, gw_schema, blocking.id) is None
    assert await job_row(gw_conn, gw_schema, probe.id) is None


# ---------------------------------------------------------------------------
# JobContext
# ---------------------------------------------------------------------------


async def test_job_context_fields(
    gw_database_url: str,
    gw_schema: str,
    gw_conn: psycopg.AsyncConnection[Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    seen: dict[str, Any] = {}
    service = object()

    async def inspect_context(payload: Any, ctx: gwcore.JobContext) -> None:
        seen.update(
            id=ctx.id,
            task_identifier=ctx.task_identifier,
            attempts=ctx.attempts,
            max_attempts=ctx.max_attempts,
            key=ctx.key,
            queue_name=ctx.queue_name,
            run_at=ctx.run_at,
            priority=ctx.priority,
            flags=ctx.flags,
            worker_id=ctx.worker_id,
            service=ctx.extensions["service"],
            abort_set=ctx.abort_signal.is_set(),
            aborted=ctx.aborted,
            job_payload=ctx.job.payload,
            payload=payload,
        )
        ctx.logger.info("inspecting the context")

    run_at = datetime.now(UTC) - timedelta(minutes=1)
    job = await add(
        gw_conn,
        gw_schema,
        "inspect",
        {"answer": 42},
        queue_name="ctx-queue",
        run_at=run_at,
        max_attempts=7,
        job_key="ctx-key",
        priority=3,
        flags=["red", "blue"],
    )
    worker = make_worker(
        gw_database_url,
        gw_schema,
        {"inspect": inspect_context},
        worker_id="worker-ctx-test",
        extensions={"service": service},
    )

    caplog.set_level(logging.INFO, logger="gwcore.task")
    await asyncio.wait_for(worker.run_once(), 30)

    assert seen["id"] == job.id
    assert seen["task_identifier"] == "inspect"
    assert seen["attempts"] == 1
    assert seen["max_attempts"] == 7
    assert seen["key"] == "ctx-key"
    assert seen["queue_name"] == "ctx-queue"
    assert seen["run_at"] == job.run_at
    assert seen["run_at"] == run_at
    assert seen["priority"] == 3
    assert dict(seen["flags"]) == {"red": True, "blue": True}
    assert seen["worker_id"] == "worker-ctx-test"
    assert seen["service"] is service
    assert seen["abort_set"] is False
    assert seen["aborted"] is False
    assert seen["payload"] == {"answer": 42}
    assert seen["job_payload"] == {"answer": 42}

    records = [record for record in caplog.records if record.name == "gwcore.task.inspect"]
    assert len(records) == 1
    assert records[0].job_id == job.id  # type: ignore[attr-defined]
    assert records[0].worker_id == "worker-ctx-test"  # type: ignore[attr-defined]
    assert "inspecting the context" in records[0].getMessage()


async def test_task_add_job_runs_child(
    gw_database_url: str, gw_schema: str, gw_conn: psycopg.AsyncConnection[Any]
) -> None:
    children: list[Any] = []
    added: dict[str, gwcore.Job | None] = {}

    async def async_parent(payload: Any, ctx: gwcore.JobContext) -> None:
        added["async"] = await ctx.add_job("child", {"from": "async"})

    def sync_parent(payload: Any, ctx: gwcore.JobContext) -> None:
        added["sync"] = ctx.add_job_sync("child", {"from": "sync"}, priority=1)

    async def child(payload: Any, ctx: gwcore.JobContext) -> None:
        children.append(payload["from"])

    await add(gw_conn, gw_schema, "async_parent")
    await add(gw_conn, gw_schema, "sync_parent")
    worker = make_worker(
        gw_database_url,
        gw_schema,
        {"async_parent": async_parent, "sync_parent": sync_parent, "child": child},
    )

    await asyncio.wait_for(worker.run_once(), 30)

    assert sorted(children) == ["async", "sync"]
    assert added["async"] is not None
    assert added["async"].task_identifier == "child"
    assert added["sync"] is not None
    assert added["sync"].priority == 1
    assert await job_rows(gw_conn, gw_schema) == []


async def test_add_job_sync_on_loop_raises(
    gw_database_url: str, gw_schema: str, gw_conn: psycopg.AsyncConnection[Any]
) -> None:
    errors: list[BaseException] = []

    async def misuse(payload: Any, ctx: gwcore.JobContext) -> None:
        try:
            ctx.add_job_sync("misuse")
        except RuntimeError as error:
            errors.append(error)

    await add(gw_conn, gw_schema, "misuse")
    worker = make_worker(gw_database_url, gw_schema, {"misuse": misuse})

    await asyncio.wait_for(worker.run_once(), 30)

    assert len(errors) == 1
    assert "await ctx.add_job" in str(errors[0])
    assert await job_rows(gw_conn, gw_schema) == []


# ---------------------------------------------------------------------------
# Which jobs are fetched, and in which order
# ---------------------------------------------------------------------------


async def test_fetch_order_priority_run_at_id(
    gw_database_url: str, gw_schema: str, gw_conn: psycopg.AsyncConnection[Any]
) -> None:
    order: list[str] = []

    async def remember(payload: Any, ctx: gwcore.JobContext) -> None:
        order.append(payload["name"])

    base = datetime.now(UTC) - timedelta(hours=1)
    # Added out of order on purpose; the ties share priority and run_at, so only their ids differ.
    jobs = [
        ("low", 5, base - timedelta(seconds=10)),
        ("late", 0, base + timedelta(seconds=10)),
        ("tie1", 0, base),
        ("urgent", -5, base + timedelta(seconds=20)),
        ("tie2", 0, base),
        ("early", 0, base + timedelta(seconds=5)),
        ("tie3", 0, base),
    ]
    for name, priority, run_at in jobs:
        await add(gw_conn, gw_schema, "remember", {"name": name}, priority=priority, run_at=run_at)
    worker = make_worker(gw_database_url, gw_schema, {"remember": remember}, concurrency=1)

    await asyncio.wait_for(worker.run_once(), 30)

    assert order == ["urgent", "tie1", "tie2", "tie3", "early", "late", "low"]


async def test_unknown_task_left_untouched(
    gw_database_url: str, gw_schema: str, gw_conn: psycopg.AsyncConnection[Any]
) -> None:
    ran: list[int] = []

    async def known(payload: Any, ctx: gwcore.JobContext) -> None:
        ran.append(ctx.id)

    unknown_job = await add(gw_conn, gw_schema, "nobody_runs_this")
    known_job = await add(gw_conn, gw_schema, "known")
    worker = make_worker(gw_database_url, gw_schema, {"known": known})

    await asyncio.wait_for(worker.run_once(), 30)

    assert ran == [known_job.id]
    row = await job_row(gw_conn, gw_schema, unknown_job.id)
    assert row is not None
    assert row["attempts"] == 0
    assert row["locked_by"] is None
    assert row["locked_at"] is None
    assert row["last_error"] is None


def forbidden_list() -> Any:
    return ["blocked"]


def forbidden_sync_callable() -> Any:
    return lambda: ["blocked"]


def forbidden_async_callable() -> Any:
    async def flags() -> list[str]:
        return ["blocked"]

    return flags


@pytest.mark.parametrize(
    "make_forbidden",
    [forbidden_list, forbidden_sync_callable, forbidden_async_callable],
    ids=["list", "sync-callable", "async-callable"],
)
async def test_forbidden_flags_skip_jobs(
    gw_database_url: str,
    gw_schema: str,
    gw_conn: psycopg.AsyncConnection[Any],
    make_forbidden: Callable[[], Any],
) -> None:
    ran: list[str] = []

    async def flagged(payload: Any, ctx: gwcore.JobContext) -> None:
        ran.append(payload["name"])

    blocked = await add(gw_conn, gw_schema, "flagged", {"name": "blocked"}, flags=["blocked"])
    mixed = await add(gw_conn, gw_schema, "flagged", {"name": "mixed"}, flags=["other", "blocked"])
    await add(gw_conn, gw_schema, "flagged", {"name": "other"}, flags=["other"])
    await add(gw_conn, gw_schema, "flagged", {"name": "none"})
    worker = make_worker(gw_database_url, gw_schema, {"flagged": flagged}, forbidden_flags=make_forbidden())

    await asyncio.wait_for(worker.run_once(), 30)

    assert sorted(ran) == ["none", "other"]
    rows = await job_rows(gw_conn, gw_schema)
    assert [row["id"] for row in rows] == [blocked.id, mixed.id]
    assert [row["attempts"] for row in rows] == [0, 0]
    assert [row["locked_by"] for row in rows] == [None, None]


# ---------------------------------------------------------------------------
# Failures and retries
# ---------------------------------------------------------------------------


async def test_failure_backoff_and_permanent_fail(
    gw_database_url: str, gw_schema: str, gw_conn: psycopg.AsyncConnection[Any]
) -> None:
    seen_in_task: list[tuple[int, int, str | None]] = []

    async def raise_value_error(payload: Any, ctx: gwcore.JobContext) -> None:
        # The fetch has already counted this attempt and locked the row.
        row = await job_row(gw_conn, gw_schema, ctx.id)
        assert row is not None
        seen_in_task.append((ctx.attempts, row["attempts"], row["locked_by"]))
        raise ValueError(f"boom {ctx.attempts}")

    job = await add(gw_conn, gw_schema, "fails", max_attempts=3)
    worker = make_worker(gw_database_url, gw_schema, {"fails": raise_value_error}, worker_id="worker-fail")
    tolerance = timedelta(seconds=1)

    for attempt in (1, 2):
        before = await database_now(gw_conn)
        await asyncio.wait_for(worker.run_once(), 30)
        after = await database_now(gw_conn)

        row = await job_row(gw_conn, gw_schema, job.id)
        assert row is not None
        assert row["attempts"] == attempt
        assert row["locked_by"] is None
        assert row["locked_at"] is None
        assert row["last_error"].startswith(f"ValueError: boom {attempt}\n")
        assert "Traceback (most recent call last)" in row["last_error"]
        assert "raise_value_error" in row["last_error"]
        backoff = timedelta(seconds=math.exp(attempt))
        assert before + backoff - tolerance <= row["run_at"]
        assert row["run_at"] <= after + backoff + tolerance

        # Make the retry due now instead of waiting for the backoff.
        await execute(
            gw_conn, "update {schema}._private_jobs set run_at = now() where id = %s", gw_schema, [job.id]
        )

    await asyncio.wait_for(worker.run_once(), 30)

    row = await job_row(gw_conn, gw_schema, job.id)
    assert row is not None
    assert row["attempts"] == 3
    assert row["max_attempts"] == 3
    assert row["locked_by"] is None
    assert row["last_error"].startswith("ValueError: boom 3\n")
    assert seen_in_task == [(1, 1, "worker-fail"), (2, 2, "worker-fail"), (3, 3, "worker-fail")]

    # A permanently failed job is not fetched again, even when it is due.
    await execute(
        gw_conn, "update {schema}._private_jobs set run_at = now() where id = %s", gw_schema, [job.id]
    )
    await asyncio.wait_for(worker.run_once(), 30)

    assert len(seen_in_task) == 3
    row = await job_row(gw_conn, gw_schema, job.id)
    assert row is not None
    assert row["attempts"] == 3


# ---------------------------------------------------------------------------
# Named queues
# ---------------------------------------------------------------------------


def make_interval_task(intervals: list[Interval]) -> Callable[[Any, gwcore.JobContext], Awaitable[None]]:
    async def timed(payload: Any, ctx: gwcore.JobContext) -> None:
        interval = Interval(ctx.id, ctx.queue_name, time.monotonic())
        intervals.append(interval)
        await asyncio.sleep(0.02)
        interval.end = time.monotonic()

    return timed


async def add_queue_jobs(
    conn: psycopg.AsyncConnection[Any], schema: str, queues: Sequence[str], per_queue: int
) -> list[gwcore.Job]:
    specs = [
        gwcore.JobSpec.create("timed", {"n": index}, queue_name=queue)
        for index in range(per_queue)
        for queue in queues
    ]
    specs += [gwcore.JobSpec.create("timed", {"n": index}) for index in range(per_queue)]
    return await gwcore.add_jobs(conn, specs, schema=schema, plugins=ADD_PLUGINS)


def assert_queues_serial(intervals: list[Interval], queues: Sequence[str], per_queue: int) -> None:
    for queue in queues:
        in_queue = sorted(
            (interval for interval in intervals if interval.queue == queue), key=lambda i: i.start
        )
        assert len(in_queue) == per_queue, queue
        for previous, following in itertools.pairwise(in_queue):
            assert previous.end <= following.start, (queue, previous, following)
        assert [interval.job_id for interval in in_queue] == sorted(interval.job_id for interval in in_queue)


async def test_queue_serial_one_worker(
    gw_database_url: str, gw_schema: str, gw_conn: psycopg.AsyncConnection[Any]
) -> None:
    intervals: list[Interval] = []
    queues = ["alpha", "beta", "gamma"]
    jobs = await add_queue_jobs(gw_conn, gw_schema, queues, per_queue=5)
    worker = make_worker(gw_database_url, gw_schema, {"timed": make_interval_task(intervals)}, concurrency=8)

    await asyncio.wait_for(worker.run_once(), 60)

    assert len(intervals) == len(jobs)
    assert all(interval.end < math.inf for interval in intervals)
    assert_queues_serial(intervals, queues, per_queue=5)
    assert await job_rows(gw_conn, gw_schema) == []


async def test_queue_serial_three_workers(
    gw_database_url: str, gw_schema: str, gw_conn: psycopg.AsyncConnection[Any]
) -> None:
    intervals: list[Interval] = []
    queues = ["alpha", "beta", "gamma"]
    jobs = await add_queue_jobs(gw_conn, gw_schema, queues, per_queue=5)
    task = make_interval_task(intervals)
    workers = [
        make_worker(gw_database_url, gw_schema, {"timed": task}, concurrency=4, worker_id=f"worker-q{index}")
        for index in range(3)
    ]

    await asyncio.wait_for(asyncio.gather(*(worker.run_once() for worker in workers)), 60)

    assert len(intervals) == len(jobs)
    assert len({interval.job_id for interval in intervals}) == len(jobs)
    assert_queues_serial(intervals, queues, per_queue=5)
    assert await job_rows(gw_conn, gw_schema) == []


async def test_different_queues_overlap(
    gw_database_url: str, gw_schema: str, gw_conn: psycopg.AsyncConnection[Any]
) -> None:
    queues = ["alpha", "beta", "gamma"]
    barrier = asyncio.Barrier(len(queues))
    met: list[str] = []
    done: list[int] = []

    async def meet(payload: Any, ctx: gwcore.JobContext) -> None:
        if payload["first"]:
            # Passes only when the first job of every queue runs at the same time.
            try:
                await asyncio.wait_for(barrier.wait(), 10)
                met.append(ctx.queue_name or "")
            except TimeoutError:
                pass
        done.append(ctx.id)

    specs = [
        gwcore.JobSpec.create("meet", {"first": index == 0}, queue_name=queue)
        for index in range(2)
        for queue in queues
    ]
    await gwcore.add_jobs(gw_conn, specs, schema=gw_schema, plugins=ADD_PLUGINS)
    # run() rather than run_once(): a slot of run_once() stops at its first empty fetch, and a
    # fetch finds no queued job while another fetch statement holds every available queue row
    # locked (FOR UPDATE SKIP LOCKED in its queue subquery).
    worker = make_worker(gw_database_url, gw_schema, {"meet": meet}, concurrency=8, poll_interval=0.1)
    run_task = asyncio.create_task(worker.run())

    async def all_done() -> bool:
        return len(done) == len(specs)

    try:
        await wait_until(all_done, "every queued job to run", wait_seconds=30)
    finally:
        await stop_worker(worker, run_task)

    assert sorted(met) == queues
    assert await job_rows(gw_conn, gw_schema) == []


# ---------------------------------------------------------------------------
# LISTEN/NOTIFY and polling
# ---------------------------------------------------------------------------


async def test_listen_wakes_idle_worker(own_database: OwnDatabase) -> None:
    url, schema, conn = own_database.url, own_database.schema, own_database.conn
    app_name = new_app_name()
    ran = asyncio.Event()

    async def wake(payload: Any, ctx: gwcore.JobContext) -> None:
        ran.set()

    worker = make_worker(with_app_name(url, app_name), schema, {"wake": wake}, poll_interval=30)
    run_task = asyncio.create_task(worker.run())
    try:
        await wait_worker_idle(conn, app_name)
        job = await add(conn, schema, "wake")

        # The poll interval is 30 s, so only the notification can make this finish in time.
        await asyncio.wait_for(ran.wait(), 10)
    finally:
        await stop_worker(worker, run_task)

    assert await job_row(conn, schema, job.id) is None


async def test_bulk_add_wakes_all_slots(own_database: OwnDatabase) -> None:
    url, schema, conn = own_database.url, own_database.schema, own_database.conn
    app_name = new_app_name()
    slots = 5
    barrier = asyncio.Barrier(slots)
    met: list[int] = []

    async def gather(payload: Any, ctx: gwcore.JobContext) -> None:
        await asyncio.wait_for(barrier.wait(), 10)
        met.append(ctx.id)

    worker = make_worker(
        with_app_name(url, app_name),
        schema,
        {"gather": gather},
        concurrency=slots,
        poll_interval=30,
    )
    run_task = asyncio.create_task(worker.run())
    try:
        await wait_worker_idle(conn, app_name)
        specs = [gwcore.JobSpec.create("gather", {"n": index}) for index in range(slots)]
        jobs = await gwcore.add_jobs(conn, specs, schema=schema, plugins=ADD_PLUGINS)

        async def all_met() -> bool:
            return len(met) == slots

        await wait_until(all_met, f"{slots} jobs to pass the barrier together", wait_seconds=20)
    finally:
        await stop_worker(worker, run_task)

    assert sorted(met) == sorted(job.id for job in jobs)
    assert await job_rows(conn, schema) == []


async def test_future_job_runs_when_due(
    gw_database_url: str, gw_schema: str, gw_conn: psycopg.AsyncConnection[Any]
) -> None:
    started_at: list[datetime] = []
    ran = asyncio.Event()

    async def later(payload: Any, ctx: gwcore.JobContext) -> None:
        started_at.append(await database_now(gw_conn))
        ran.set()

    worker = make_worker(gw_database_url, gw_schema, {"later": later}, poll_interval=0.2)
    run_task = asyncio.create_task(worker.run())
    try:
        # Both times come from the database clock, so they compare even with a remote server.
        run_at = await database_now(gw_conn) + timedelta(seconds=1)
        job = await add(gw_conn, gw_schema, "later", run_at=run_at)
        await asyncio.wait_for(ran.wait(), 15)
    finally:
        await stop_worker(worker, run_task)

    assert len(started_at) == 1
    assert started_at[0] >= run_at
    assert await job_row(gw_conn, gw_schema, job.id) is None


# ---------------------------------------------------------------------------
# bigint job ids
# ---------------------------------------------------------------------------


async def test_bigint_job_ids(
    gw_database_url: str, gw_schema: str, gw_conn: psycopg.AsyncConnection[Any]
) -> None:
    seen_ids: list[int] = []

    async def outcome(payload: Any, ctx: gwcore.JobContext) -> None:
        seen_ids.append(ctx.id)
        if payload["fail"]:
            raise RuntimeError(f"failing job {ctx.id}")

    await execute(
        gw_conn, "alter table {schema}._private_jobs alter column id restart with 3000000000", gw_schema
    )
    done = await add(gw_conn, gw_schema, "outcome", {"fail": False})
    done_in_queue = await add(gw_conn, gw_schema, "outcome", {"fail": False}, queue_name="big")
    retried = await add(gw_conn, gw_schema, "outcome", {"fail": True}, max_attempts=3)
    dead = await add(gw_conn, gw_schema, "outcome", {"fail": True}, max_attempts=1)
    worker = make_worker(gw_database_url, gw_schema, {"outcome": outcome})

    await asyncio.wait_for(worker.run_once(), 30)

    assert done.id >= 3_000_000_000
    assert sorted(seen_ids) == sorted([done.id, done_in_queue.id, retried.id, dead.id])
    assert await job_row(gw_conn, gw_schema, done.id) is None
    assert await job_row(gw_conn, gw_schema, done_in_queue.id) is None

    retried_row = await job_row(gw_conn, gw_schema, retried.id)
    assert retried_row is not None
    assert retried_row["attempts"] == 1
    assert retried_row["locked_by"] is None
    assert retried_row["last_error"].startswith(f"RuntimeError: failing job {retried.id}")

    dead_row = await job_row(gw_conn, gw_schema, dead.id)
    assert dead_row is not None
    assert dead_row["attempts"] == 1
    assert dead_row["max_attempts"] == 1
    assert dead_row["locked_by"] is None
    assert dead_row["last_error"].startswith(f"RuntimeError: failing job {dead.id}")


# ---------------------------------------------------------------------------
# Dropped connections
# ---------------------------------------------------------------------------


async def test_listener_reconnects_after_kill(own_database: OwnDatabase) -> None:
    url, schema, conn = own_database.url, own_database.schema, own_database.conn
    app_name = new_app_name()
    ran: list[int] = []

    async def wake(payload: Any, ctx: gwcore.JobContext) -> None:
        ran.append(ctx.id)

    worker = make_worker(with_app_name(url, app_name), schema, {"wake": wake}, poll_interval=30)
    run_task = asyncio.create_task(worker.run())
    try:
        await wait_worker_idle(conn, app_name)
        [old_pid] = await listener_pids(conn, app_name)
        cursor = await conn.execute(
            "select pg_terminate_backend(pid) from pg_stat_activity "
            "where query ilike 'listen%%' and application_name = %s and datname = current_database()",
            [app_name],
        )
        assert await cursor.fetchall() == [(True,)]

        # Added while the listener is down or reconnecting: the fetch after re-LISTEN finds it.
        while_down = await add(conn, schema, "wake")

        async def ran_while_down() -> bool:
            return while_down.id in ran

        await wait_until(ran_while_down, "the job added while the listener was down", wait_seconds=10)

        async def relistened() -> bool:
            pids = await listener_pids(conn, app_name)
            return len(pids) == 1 and pids[0] != old_pid

        await wait_until(relistened, "the listener to LISTEN again")
        await wait_worker_idle(conn, app_name)

        # Added after re-LISTEN: only the notification wakes the worker before its 30 s poll.
        after = await add(conn, schema, "wake")

        async def ran_after() -> bool:
            return after.id in ran

        await wait_until(ran_after, "the job added after re-LISTEN", wait_seconds=10)
    finally:
        await stop_worker(worker, run_task)

    assert ran == [while_down.id, after.id]
    assert await job_rows(conn, schema) == []


@pytest.mark.parametrize("fails", [False, True], ids=["success", "failure"])
async def test_outcome_written_after_kill(
    gw_database_url: str, gw_schema: str, gw_conn: psycopg.AsyncConnection[Any], fails: bool
) -> None:
    app_name = new_app_name()
    started = asyncio.Event()
    release = asyncio.Event()
    calls: list[int] = []

    async def interrupted_write(payload: Any, ctx: gwcore.JobContext) -> None:
        calls.append(ctx.id)
        started.set()
        await asyncio.wait_for(release.wait(), 20)
        if fails:
            raise RuntimeError("failed after the connections dropped")

    job = await add(gw_conn, gw_schema, "interrupted_write", queue_name="dropped", max_attempts=5)
    worker = make_worker(
        with_app_name(gw_database_url, app_name),
        gw_schema,
        {"interrupted_write": interrupted_write},
        worker_id="worker-dropped",
        concurrency=2,
    )
    run_task = asyncio.create_task(worker.run_once())
    try:
        await asyncio.wait_for(started.wait(), WAIT_TIMEOUT)
        cursor = await gw_conn.execute(
            "select pid, pg_terminate_backend(pid) from pg_stat_activity "
            "where application_name = %s and pid <> pg_backend_pid() and datname = current_database()",
            [app_name],
        )
        terminated = await cursor.fetchall()
        assert len(terminated) >= 1
        assert all(ok for _, ok in terminated)
        release.set()
        await asyncio.wait_for(run_task, 60)
    finally:
        release.set()
        if not run_task.done():
            worker.stop(immediate=True)
            await asyncio.wait_for(run_task, WAIT_TIMEOUT)

    assert calls == [job.id]
    row = await job_row(gw_conn, gw_schema, job.id)
    if fails:
        assert row is not None
        assert row["attempts"] == 1
        assert row["locked_by"] is None
        assert row["last_error"].startswith("RuntimeError: failed after the connections dropped")
    else:
        assert row is None
    cursor = await gw_conn.execute(
        sql.SQL("select count(*) from {}._private_job_queues where locked_by is not null").format(
            sql.Identifier(gw_schema)
        )
    )
    assert await cursor.fetchone() == (0,)
