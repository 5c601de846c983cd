"""The admin API (complete, fail, reschedule, remove, unlock, cleanup, listing, stats), async and sync."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool, ConnectionPool

import gwcore
from gwcore import Job, ValidationError, admin
from gwcore.admin import CleanupResult, JobStats, QueueStats

FUTURE = datetime(2031, 5, 6, 7, 8, 9, tzinfo=UTC)
PAST = datetime(2021, 5, 6, 7, 8, 9, tzinfo=UTC)
FIRST_JOB_ID = 2**32 + 7  # above 2^31, so every id in these tests needs bigint


def _query(template: str, schema: str) -> sql.Composed:
    return sql.SQL(template).format(schema=sql.Identifier(schema))


class Admin:
    """Calls an admin function through its async form or its sync twin, so each test runs on both."""

    def __init__(
        self, mode: str, conn: psycopg.AsyncConnection[Any], sync_conn: psycopg.Connection[Any], schema: str
    ) -> None:
        self.mode = mode
        self.conn = conn
        self.sync_conn = sync_conn
        self.schema = schema

    async def __call__(self, name: str, *args: Any, **kwargs: Any) -> Any:
        if self.mode == "async":
            return await getattr(admin, name)(self.conn, *args, schema=self.schema, **kwargs)
        function = getattr(admin, f"{name}_sync")
        return await asyncio.to_thread(function, self.sync_conn, *args, schema=self.schema, **kwargs)

    async def add(self, identifier: str = "task", payload: Any = None, **kwargs: Any) -> Job:
        plugins = gwcore.create_plugin_manager([], entry_points=False)
        job = await gwcore.add_job(
            self.conn, identifier, payload, schema=self.schema, plugins=plugins, **kwargs
        )
        assert job is not None
        return job

    async def execute(self, template: str, *params: Any) -> None:
        await self.conn.execute(_query(template, self.schema), params)

    async def lock(self, job: Job, worker_id: str = "worker-1", age: str = "1 minute") -> None:
        """Lock ``job`` (and its queue) for ``worker_id`` as a fetch did ``age`` ago."""
        await self.execute(
            "update {schema}._private_jobs set locked_by = %s, locked_at = now() - %s::interval,"
            " attempts = attempts + 1 where id = %s",
            worker_id,
            age,
            job.id,
        )
        if job.job_queue_id is not None:
            await self.execute(
                "update {schema}._private_job_queues set locked_by = %s, locked_at = now() - %s::interval"
                " where id = %s",
                worker_id,
                age,
                job.job_queue_id,
            )

    async def row(self, job_id: int) -> dict[str, Any] | None:
        async with self.conn.cursor(row_factory=dict_row) as cursor:
            await cursor.execute(
                _query("select * from {schema}._private_jobs where id = %s", self.schema), [job_id]
            )
            return await cursor.fetchone()

    async def job_ids(self) -> list[int]:
        cursor = await self.conn.execute(
            _query("select id from {schema}._private_jobs order by id", self.schema)
        )
        return [row[0] for row in await cursor.fetchall()]

    async def names(self, table: str, column: str) -> list[str]:
        template = f"select {column} from {{schema}}.{table} order by {column}"
        cursor = await self.conn.execute(_query(template, self.schema))
        return [row[0] for row in await cursor.fetchall()]

    async def queue_locks(self) -> dict[str, str | None]:
        template = "select queue_name, locked_by from {schema}._private_job_queues"
        cursor = await self.conn.execute(_query(template, self.schema))
        return {row[0]: row[1] for row in await cursor.fetchall()}


@pytest.fixture
def sync_conn(gw_database_url: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(gw_database_url, autocommit=True) as conn:
        yield conn


@pytest.fixture(params=["async", "sync"])
async def api(
    request: pytest.FixtureRequest,
    gw_conn: psycopg.AsyncConnection[Any],
    sync_conn: psycopg.Connection[Any],
    gw_schema: str,
) -> AsyncIterator[Admin]:
    table = sql.Identifier(gw_schema, "_private_jobs").as_string(gw_conn)
    await gw_conn.execute("select setval(pg_get_serial_sequence(%s, 'id'), %s, false)", [table, FIRST_JOB_ID])
    yield Admin(request.param, gw_conn, sync_conn, gw_schema)


# --- complete_jobs ----------------------------------------------------------------------------


async def test_complete_jobs_deletes_jobs(api: Admin) -> None:
    first = await api.add("send", {"to": "a"})
    second = await api.add("send", {"to": "b"}, queue_name="mail")
    third = await api.add("send", {"to": "c"})

    done = await api("complete_jobs", [second.id, first.id, 2**40])

    assert [job.id for job in done] == [first.id, second.id]
    assert done[0].payload == {"to": "a"}
    assert done[0].task_identifier == "send"
    assert done[0].queue_name is None
    assert done[1].queue_name == "mail"
    assert await api.job_ids() == [third.id]
    assert first.id > 2**31


async def test_complete_jobs_skips_live_lock(api: Admin) -> None:
    live = await api.add()
    stale = await api.add()
    await api.lock(live, age="3 hours 59 minutes")
    await api.lock(stale, age="4 hours 1 minute")

    done = await api("complete_jobs", [live.id, stale.id])

    assert [job.id for job in done] == [stale.id]
    assert await api.job_ids() == [live.id]


async def test_complete_jobs_empty_list(api: Admin) -> None:
    await api.add()

    assert await api("complete_jobs", []) == []
    assert len(await api.job_ids()) == 1


# --- permanently_fail_jobs --------------------------------------------------------------------


async def test_permanently_fail_jobs_reason(api: Admin) -> None:
    job = await api.add(max_attempts=7)
    other = await api.add()

    failed = await api("permanently_fail_jobs", [job.id], "operator gave up")

    assert [item.id for item in failed] == [job.id]
    assert failed[0].attempts == 7
    assert failed[0].last_error == "operator gave up"
    row = await api.row(job.id)
    assert row is not None
    assert row["attempts"] == 7
    assert row["last_error"] == "operator gave up"
    assert row["is_available"] is False
    untouched = await api.row(other.id)
    assert untouched is not None
    assert untouched["attempts"] == 0
    assert untouched["last_error"] is None


async def test_permanently_fail_jobs_default_reason(api: Admin) -> None:
    job = await api.add()

    failed = await api("permanently_fail_jobs", [job.id])

    assert failed[0].last_error == "Manually marked as failed"
    assert failed[0].attempts == 25


async def test_permanently_fail_jobs_skips_live_lock(api: Admin) -> None:
    live = await api.add()
    stale = await api.add()
    await api.lock(live)
    await api.lock(stale, age="5 hours")

    failed = await api("permanently_fail_jobs", [live.id, stale.id], "stop")

    assert [job.id for job in failed] == [stale.id]
    row = await api.row(live.id)
    assert row is not None
    assert row["attempts"] == 1
    assert row["last_error"] is None


# --- reschedule_jobs --------------------------------------------------------------------------


async def test_reschedule_jobs_all_fields(api: Admin) -> None:
    job = await api.add("report", queue_name="reports")

    changed = await api("reschedule_jobs", [job.id], run_at=FUTURE, priority=-5, attempts=3, max_attempts=9)

    assert len(changed) == 1
    assert changed[0].id == job.id
    assert changed[0].run_at == FUTURE
    assert changed[0].priority == -5
    assert changed[0].attempts == 3
    assert changed[0].max_attempts == 9
    assert changed[0].queue_name == "reports"
    assert changed[0].task_identifier == "report"
    row = await api.row(job.id)
    assert row is not None
    assert (row["run_at"], row["priority"], row["attempts"], row["max_attempts"]) == (FUTURE, -5, 3, 9)


async def test_reschedule_jobs_keeps_other_fields(api: Admin) -> None:
    job = await api.add(run_at=FUTURE, priority=4, max_attempts=6)

    changed = await api("reschedule_jobs", [job.id], priority=32767)

    assert changed[0].priority == 32767
    assert changed[0].run_at == FUTURE
    assert changed[0].attempts == 0
    assert changed[0].max_attempts == 6


async def test_reschedule_jobs_skips_live_lock(api: Admin) -> None:
    live = await api.add()
    stale = await api.add()
    await api.lock(live)
    await api.lock(stale, age="4 hours 1 minute")

    changed = await api("reschedule_jobs", [live.id, stale.id], run_at=FUTURE)

    assert [job.id for job in changed] == [stale.id]
    row = await api.row(live.id)
    assert row is not None
    assert row["run_at"] != FUTURE


async def test_reschedule_jobs_empty_list(api: Admin) -> None:
    assert await api("reschedule_jobs", [], priority=1) == []


# --- remove_job -------------------------------------------------------------------------------


async def test_remove_job_deletes_job(api: Admin) -> None:
    job = await api.add("mail", {"n": 1}, job_key="mail:1", queue_name="q")
    other = await api.add("mail", job_key="mail:2")

    removed = await api("remove_job", "mail:1")

    assert removed is not None
    assert removed.id == job.id
    assert removed.key == "mail:1"
    assert removed.payload == {"n": 1}
    assert removed.queue_name == "q"
    assert await api.job_ids() == [other.id]


async def test_remove_job_missing_key(api: Admin) -> None:
    await api.add(job_key="present")

    assert await api("remove_job", "absent") is None
    assert len(await api.job_ids()) == 1


async def test_remove_job_locked_clears_key(api: Admin) -> None:
    job = await api.add(job_key="running", max_attempts=5)
    await api.lock(job)

    removed = await api("remove_job", "running")

    assert removed is not None
    assert removed.id == job.id
    assert removed.key is None
    assert removed.attempts == 5
    row = await api.row(job.id)
    assert row is not None
    assert row["key"] is None
    assert row["attempts"] == 5
    assert row["locked_by"] == "worker-1"


# --- force_unlock_workers ---------------------------------------------------------------------


async def test_force_unlock_workers_given_only(api: Admin) -> None:
    first = await api.add(queue_name="q1")
    second = await api.add()
    other_worker_job = await api.add(queue_name="q2")
    await api.lock(first, "worker-1")
    await api.lock(second, "worker-3")
    await api.lock(other_worker_job, "worker-2")

    unlocked = await api("force_unlock_workers", ["worker-1", "worker-3", "worker-9"])

    assert unlocked == 2
    for job in (first, second):
        row = await api.row(job.id)
        assert row is not None
        assert row["locked_by"] is None
        assert row["locked_at"] is None
        assert row["attempts"] == 1
    other_row = await api.row(other_worker_job.id)
    assert other_row is not None
    assert other_row["locked_by"] == "worker-2"
    assert await api.queue_locks() == {"q1": None, "q2": "worker-2"}


async def test_force_unlock_workers_empty_list(api: Admin) -> None:
    job = await api.add()
    await api.lock(job)

    assert await api("force_unlock_workers", []) == 0
    row = await api.row(job.id)
    assert row is not None
    assert row["locked_by"] == "worker-1"


# --- cleanup ----------------------------------------------------------------------------------


async def test_cleanup_delete_permafailed_jobs(api: Admin) -> None:
    failed = await api.add("a", max_attempts=1)
    failed_locked = await api.add("a", max_attempts=1)
    over = await api.add("a", max_attempts=2)
    retrying = await api.add("a", max_attempts=2)
    await api.execute(
        "update {schema}._private_jobs set attempts = 1, last_error = 'x' where id = any(%s)",
        [failed.id, failed_locked.id, retrying.id],
    )
    await api.execute("update {schema}._private_jobs set attempts = 3 where id = %s", over.id)
    await api.lock(failed_locked)

    result = await api("cleanup", tasks=["DELETE_PERMAFAILED_JOBS"])

    assert result == CleanupResult(
        permafailed_jobs_deleted=2, task_identifiers_deleted=0, job_queues_deleted=0
    )
    assert await api.job_ids() == [failed_locked.id, retrying.id]


async def test_cleanup_gc_task_identifiers(api: Admin) -> None:
    await api.add("used")
    for identifier in ("unused", "kept"):
        done = await api.add(identifier)
        await api("complete_jobs", [done.id])

    result = await api("cleanup", tasks=["GC_TASK_IDENTIFIERS"], task_identifiers_to_keep=["kept"])

    assert result == CleanupResult(task_identifiers_deleted=1)
    assert await api.names("_private_tasks", "identifier") == ["kept", "used"]


async def test_cleanup_gc_job_queues(api: Admin) -> None:
    await api.add(queue_name="busy")
    for queue_name in ("empty", "empty_locked"):
        done = await api.add(queue_name=queue_name)
        await api("complete_jobs", [done.id])
    await api.execute(
        "update {schema}._private_job_queues set locked_by = 'w', locked_at = now()"
        " where queue_name = 'empty_locked'"
    )

    result = await api("cleanup", tasks=["GC_JOB_QUEUES"])

    assert result == CleanupResult(job_queues_deleted=1)
    assert await api.names("_private_job_queues", "queue_name") == ["busy", "empty_locked"]
    assert await api.names("_private_tasks", "identifier") == ["task"]


async def test_cleanup_default_tasks(api: Admin) -> None:
    live = await api.add("live", queue_name="live_q")
    dead = await api.add("dead", queue_name="dead_q", max_attempts=1)
    await api("permanently_fail_jobs", [dead.id])

    result = await api("cleanup")

    assert result == CleanupResult(
        permafailed_jobs_deleted=1, task_identifiers_deleted=1, job_queues_deleted=1
    )
    assert await api.job_ids() == [live.id]
    assert await api.names("_private_tasks", "identifier") == ["live"]
    assert await api.names("_private_job_queues", "queue_name") == ["live_q"]


# --- list_jobs and get_job --------------------------------------------------------------------


async def _jobs_in_every_state(api: Admin) -> dict[str, Job]:
    jobs = {
        "ready": await api.add("a", {"n": 1}),
        "scheduled": await api.add("a", run_at=FUTURE),
        "locked": await api.add("b", queue_name="q"),
        "failed": await api.add("b", queue_name="q"),
        "failed_due": await api.add("a", queue_name="q"),
        "permafailed": await api.add("b", max_attempts=2),
    }
    await api.lock(jobs["locked"])
    await api.execute(
        "update {schema}._private_jobs set attempts = 1, last_error = 'boom', run_at = %s where id = %s",
        FUTURE,
        jobs["failed"].id,
    )
    await api.execute(
        "update {schema}._private_jobs set attempts = 1, last_error = 'boom', run_at = %s where id = %s",
        PAST,
        jobs["failed_due"].id,
    )
    await api.execute(
        "update {schema}._private_jobs set attempts = 2, last_error = 'boom' where id = %s",
        jobs["permafailed"].id,
    )
    return jobs


@pytest.mark.parametrize(
    ("state", "expected"),
    [
        ("ready", ["ready", "failed_due"]),
        ("scheduled", ["scheduled"]),
        ("locked", ["locked"]),
        ("failed", ["failed", "failed_due"]),
        ("permanently_failed", ["permafailed"]),
        (None, ["ready", "scheduled", "locked", "failed", "failed_due", "permafailed"]),
    ],
)
async def test_list_jobs_by_state(api: Admin, state: str | None, expected: list[str]) -> None:
    jobs = await _jobs_in_every_state(api)

    listed = await api("list_jobs", state=state)

    assert [job.id for job in listed] == [jobs[name].id for name in expected]


async def test_list_jobs_by_task_and_queue(api: Admin) -> None:
    jobs = await _jobs_in_every_state(api)

    by_task = await api("list_jobs", task="b")
    by_queue = await api("list_jobs", queue="q")
    by_both = await api("list_jobs", task="a", queue="q")
    by_all = await api("list_jobs", task="b", queue="q", state="failed")

    assert [job.id for job in by_task] == [jobs[name].id for name in ("locked", "failed", "permafailed")]
    assert [job.id for job in by_queue] == [jobs[name].id for name in ("locked", "failed", "failed_due")]
    assert [job.id for job in by_both] == [jobs["failed_due"].id]
    assert [job.id for job in by_all] == [jobs["failed"].id]
    assert await api("list_jobs", task="missing") == []


async def test_list_jobs_limit(api: Admin) -> None:
    jobs = [await api.add(payload={"n": n}) for n in range(5)]

    listed = await api("list_jobs", limit=2)

    assert [job.id for job in listed] == [jobs[0].id, jobs[1].id]
    assert listed[0].payload == {"n": 0}


async def test_get_job_returns_job(api: Admin) -> None:
    job = await api.add("get", {"deep": [1, 2]}, queue_name="gq", flags=["f"])
    await api.execute("update {schema}._private_jobs set last_error = 'bad' where id = %s", job.id)

    found = await api("get_job", job.id)

    assert found is not None
    assert found.id == job.id
    assert found.payload == {"deep": [1, 2]}
    assert found.last_error == "bad"
    assert found.task_identifier == "get"
    assert found.queue_name == "gq"
    assert found.flags == {"f": True}


async def test_get_job_missing_id(api: Admin) -> None:
    job = await api.add()

    assert await api("get_job", job.id + 1) is None


# --- stats ------------------------------------------------------------------------------------


async def test_queue_stats_counts(api: Admin) -> None:
    first = await api.add(queue_name="beta")
    await api.add(queue_name="beta")
    done = await api.add(queue_name="alpha")
    await api("complete_jobs", [done.id])
    await api.lock(first, "worker-7")

    stats = await api("queue_stats")

    assert [(item.queue_name, item.job_count, item.locked_by) for item in stats] == [
        ("alpha", 0, None),
        ("beta", 2, "worker-7"),
    ]
    assert stats[0].locked_at is None
    assert stats[1].locked_at is not None
    assert isinstance(stats[0], QueueStats)


async def test_job_stats_counts(api: Admin) -> None:
    await _jobs_in_every_state(api)

    stats = await api("job_stats")

    assert stats == [
        JobStats("a", total=3, ready=2, scheduled=1, locked=0, failed=1, permanently_failed=0),
        JobStats("b", total=3, ready=0, scheduled=0, locked=1, failed=1, permanently_failed=1),
    ]


async def test_stats_empty_schema(api: Admin) -> None:
    assert await api("queue_stats") == []
    assert await api("job_stats") == []


# --- validation -------------------------------------------------------------------------------

INVALID_CALLS: list[tuple[str, tuple[Any, ...], dict[str, Any], str]] = [
    ("complete_jobs", (5,), {}, "job_ids is invalid: 5 has type int"),
    ("complete_jobs", ("12",), {}, "job_ids is invalid: '12' has type str"),
    ("complete_jobs", ([1, "2"],), {}, "job_ids[1] is invalid: '2' has type str"),
    ("complete_jobs", ([True],), {}, "job_ids[0] is invalid: True has type bool"),
    ("complete_jobs", ([0],), {}, "job_ids[0] is invalid: 0 is out of range"),
    ("complete_jobs", ([2**63],), {}, f"job_ids[0] is invalid: {2**63} is out of range"),
    ("permanently_fail_jobs", ([1],), {"reason": 3}, "reason is invalid: 3 has type int"),
    ("permanently_fail_jobs", ([1],), {"reason": "a\x00b"}, "reason is invalid: it contains a NUL"),
    ("reschedule_jobs", ([1],), {}, "pass at least one of run_at, priority, attempts or max_attempts"),
    (
        "reschedule_jobs",
        ([1],),
        {"run_at": datetime(2030, 1, 1)},
        "run_at is invalid: 2030-01-01T00:00:00 has no",
    ),
    (
        "reschedule_jobs",
        ([1],),
        {"run_at": "2030-01-01"},
        "run_at is invalid: '2030-01-01' is not a datetime",
    ),
    ("reschedule_jobs", ([1],), {"priority": 32768}, "priority is invalid: 32768 is out of range"),
    ("reschedule_jobs", ([1],), {"priority": -32769}, "it must be from -32768 to 32767"),
    (
        "reschedule_jobs",
        ([1],),
        {"attempts": -1},
        "attempts is invalid: -1 is out of range; it must be from 0",
    ),
    ("reschedule_jobs", ([1],), {"attempts": 32768}, "attempts is invalid: 32768 is out of range"),
    (
        "reschedule_jobs",
        ([1],),
        {"max_attempts": 0},
        "max_attempts is invalid: 0 is out of range; it must be from 1",
    ),
    ("reschedule_jobs", ([1],), {"max_attempts": 32768}, "to 32767"),
    ("reschedule_jobs", ([1],), {"max_attempts": 2.5}, "max_attempts is invalid: 2.5 is not an integer"),
    ("remove_job", ("",), {}, "job_key is invalid: '' has 0 characters"),
    ("remove_job", ("k" * 513,), {}, "it must have 1 to 512"),
    ("remove_job", (None,), {}, "job_key is missing"),
    ("force_unlock_workers", ("worker-1",), {}, "worker_ids is invalid: 'worker-1' has type str"),
    ("force_unlock_workers", (["w", ""],), {}, "worker_ids[1] is invalid: ''"),
    ("cleanup", (), {"tasks": ["GC_JOBS"]}, "tasks[0] is invalid: 'GC_JOBS' is not a cleanup task"),
    ("cleanup", (), {"tasks": "GC_JOB_QUEUES"}, "tasks is invalid: 'GC_JOB_QUEUES' has type str"),
    ("cleanup", (), {"tasks": []}, "tasks is empty"),
    (
        "cleanup",
        (),
        {"task_identifiers_to_keep": "a"},
        "task_identifiers_to_keep is invalid: 'a' has type str",
    ),
    (
        "list_jobs",
        (),
        {"state": "done"},
        "state is invalid: 'done'; it must be one of ready, scheduled, locked",
    ),
    ("list_jobs", (), {"limit": 0}, "limit is invalid: 0"),
    ("list_jobs", (), {"limit": "10"}, "limit is invalid: '10'"),
    ("list_jobs", (), {"task": ""}, "task is invalid: ''"),
    ("list_jobs", (), {"queue": 5}, "queue is invalid: 5"),
    ("get_job", ("1",), {}, "job_id is invalid: '1' has type str"),
    ("get_job", (-3,), {}, "job_id is invalid: -3 is out of range"),
]


@pytest.fixture(params=["async", "sync"])
async def offline_api(request: pytest.FixtureRequest, gw_database_url: str) -> Admin:
    """An `Admin` on closed connections: a call that reaches the database fails with OperationalError."""
    conn = await psycopg.AsyncConnection.connect(gw_database_url)
    await conn.close()
    sync_conn = psycopg.connect(gw_database_url)
    sync_conn.close()
    return Admin(request.param, conn, sync_conn, "graphile_worker")


@pytest.mark.parametrize(("name", "args", "kwargs", "message"), INVALID_CALLS)
async def test_invalid_input_rejected(
    offline_api: Admin, name: str, args: tuple[Any, ...], kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValidationError) as caught:
        await offline_api(name, *args, **kwargs)

    assert message in str(caught.value)


async def test_invalid_input_writes_nothing(api: Admin) -> None:
    job = await api.add("keep", job_key="key", max_attempts=1)
    await api.execute("update {schema}._private_jobs set attempts = 1 where id = %s", job.id)
    before = await api.row(job.id)

    with pytest.raises(ValidationError):
        await api("reschedule_jobs", [job.id], run_at=FUTURE, priority=1, max_attempts=0)
    with pytest.raises(ValidationError):
        await api("complete_jobs", [job.id, "x"])
    with pytest.raises(ValidationError):
        await api("permanently_fail_jobs", [job.id], b"bytes")
    with pytest.raises(ValidationError):
        await api("cleanup", tasks=["DELETE_PERMAFAILED_JOBS", "nope"])

    assert await api.row(job.id) == before


def test_cleanup_names_allowed_tasks(sync_conn: psycopg.Connection[Any]) -> None:
    with pytest.raises(ValidationError) as caught:
        admin.cleanup_sync(sync_conn, tasks=["VACUUM"])

    assert "'VACUUM'" in str(caught.value)
    assert "GC_TASK_IDENTIFIERS, GC_JOB_QUEUES, DELETE_PERMAFAILED_JOBS" in str(caught.value)


# --- targets ----------------------------------------------------------------------------------


async def test_empty_ids_skip_database(offline_api: Admin) -> None:
    assert await offline_api("complete_jobs", []) == []
    assert await offline_api("permanently_fail_jobs", [], "reason") == []
    assert await offline_api("reschedule_jobs", [], priority=1) == []
    assert await offline_api("force_unlock_workers", []) == 0


async def test_offline_api_reaches_database(offline_api: Admin) -> None:
    with pytest.raises(psycopg.OperationalError):
        await offline_api("complete_jobs", [1])


async def test_async_pool_and_dsn_targets(gw_database_url: str, gw_schema: str) -> None:
    plugins = gwcore.create_plugin_manager([], entry_points=False)
    job = await gwcore.add_job(gw_database_url, "t", job_key="k", schema=gw_schema, plugins=plugins)
    assert job is not None

    async with AsyncConnectionPool(gw_database_url, min_size=1, max_size=1, open=False) as pool:
        from_pool = await admin.get_job(pool, job.id, schema=gw_schema)
        rescheduled = await admin.reschedule_jobs(pool, [job.id], priority=9, schema=gw_schema)
    removed = await admin.remove_job(gw_database_url, "k", schema=gw_schema)

    assert from_pool is not None
    assert from_pool.id == job.id
    assert [item.priority for item in rescheduled] == [9]
    assert removed is not None
    assert removed.id == job.id
    assert await admin.list_jobs(gw_database_url, schema=gw_schema) == []


def test_sync_pool_and_dsn_targets(gw_database_url: str, gw_schema: str) -> None:
    plugins = gwcore.create_plugin_manager([], entry_points=False)
    job = gwcore.add_job_sync(gw_database_url, "t", queue_name="sq", schema=gw_schema, plugins=plugins)
    assert job is not None

    with ConnectionPool(gw_database_url, min_size=1, max_size=1, open=True) as pool:
        stats = admin.queue_stats_sync(pool, schema=gw_schema)
        done = admin.complete_jobs_sync(pool, [job.id], schema=gw_schema)
    result = admin.cleanup_sync(gw_database_url, schema=gw_schema)

    assert [(item.queue_name, item.job_count) for item in stats] == [("sq", 1)]
    assert [item.id for item in done] == [job.id]
    assert result == CleanupResult(
        permafailed_jobs_deleted=0, task_identifiers_deleted=1, job_queues_deleted=1
    )
    assert admin.get_job_sync(gw_database_url, job.id, schema=gw_schema) is None


async def test_wrong_target_rejected(gw_conn: psycopg.AsyncConnection[Any]) -> None:
    with pytest.raises(ValidationError) as caught:
        admin.get_job_sync(gw_conn, 1)  # type: ignore[arg-type]
    with pytest.raises(ValidationError) as caught_async:
        await admin.job_stats(42)  # type: ignore[arg-type]

    assert "the sync API takes a psycopg Connection" in str(caught.value)
    assert "target is invalid: 42" in str(caught_async.value)


async def test_cleanup_rolls_back_in_transaction(gw_database_url: str, gw_schema: str) -> None:
    plugins = gwcore.create_plugin_manager([], entry_points=False)
    job = await gwcore.add_job(gw_database_url, "gone", max_attempts=1, schema=gw_schema, plugins=plugins)
    assert job is not None
    await admin.permanently_fail_jobs(gw_database_url, [job.id], schema=gw_schema)

    async with await psycopg.AsyncConnection.connect(gw_database_url) as conn:
        result = await admin.cleanup(conn, schema=gw_schema)
        await conn.rollback()

    assert result.permafailed_jobs_deleted == 1
    assert result.task_identifiers_deleted == 1
    assert await admin.get_job(gw_database_url, job.id, schema=gw_schema) is not None
    assert [item.task_identifier for item in await admin.job_stats(gw_database_url, schema=gw_schema)] == [
        "gone"
    ]
