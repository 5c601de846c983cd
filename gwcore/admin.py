"""Operations on the queue as a whole, for operators, plugins and the CLI: async and sync.

The write operations call graphile-worker's own SQL functions (``complete_jobs``,
``permanently_fail_jobs``, ``reschedule_jobs``, ``remove_job``), so they behave
exactly as they do for a Node.js deployment. Like those functions, they leave
alone a job that a live worker locks, which is a lock taken less than 4 hours ago.

Every function takes a psycopg connection, a connection pool or a connection
string, like `gwcore.add_job`. On a connection, it runs inside the caller's open
transaction, if there is one. Each async function has a sync twin with a
``_sync`` suffix that runs the same statements.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from gwcore.connections import AsyncTarget, SyncTarget, async_connection, sync_connection
from gwcore.errors import ValidationError
from gwcore.job import (
    MAX_JOB_KEY_LENGTH,
    SMALLINT_MIN,
    Job,
    _check_run_at,
    _check_smallint,
    _check_text,
)
from gwcore.queries import _render, queries_for

logger = logging.getLogger("gwcore.admin")

DEFAULT_SCHEMA = "graphile_worker"


BIGINT_MAX = 2**63 - 1

# graphile-worker's cleanup task names, in the order they run: deleting permanently failed
# jobs first lets the two garbage collections remove the tasks and queues those jobs used.
CLEANUP_TASKS: tuple[str, ...] = ("DELETE_PERMAFAILED_JOBS", "GC_TASK_IDENTIFIERS", "GC_JOB_QUEUES")
DEFAULT_CLEANUP_TASKS: tuple[str, ...] = ("GC_TASK_IDENTIFIERS", "GC_JOB_QUEUES", "DELETE_PERMAFAILED_JOBS")

# The job states that list_jobs filters on and job_stats counts, as SQL conditions on a
# _private_jobs row named "jobs". The states overlap: a failed job whose retry is due is
# also "ready", and a locked job may also be "failed" or "permanently_failed".
JOB_STATES: Mapping[str, str] = {
    "ready": "jobs.locked_at is null and jobs.attempts < jobs.max_attempts and jobs.run_at <= now()",
    "scheduled": (
        "jobs.locked_at is null and jobs.attempts < jobs.max_attempts and jobs.run_at > now()"
        " and not (jobs.attempts > 0 and jobs.last_error is not null)"
    ),
    "locked": "jobs.locked_at is not null",
    "failed": ("jobs.attempts > 0 and jobs.last_error is not null and jobs.attempts < jobs.max_attempts"),
    "permanently_failed": "jobs.attempts >= jobs.max_attempts",
}


@dataclass(frozen=True)
class CleanupResult:
    """How many rows each cleanup task deleted; a task that did not run counts 0."""

    permafailed_jobs_deleted: int = 0  # DELETE_PERMAFAILED_JOBS
    task_identifiers_deleted: int = 0  # GC_TASK_IDENTIFIERS
    job_queues_deleted: int = 0  # GC_JOB_QUEUES


@dataclass(frozen=True)
class QueueStats:
    """A named queue: its job count and the worker that locks it, if any."""

    queue_name: str
    job_count: int
    locked_by: str | None
    locked_at: datetime | None


@dataclass(frozen=True)
class JobStats:
    """Job counts of one task identifier, in total and per state of `JOB_STATES`.

    The states overlap, so the per-state counts can add up to more than ``total``.
    """

    task_identifier: str
    total: int
    ready: int
    scheduled: int
    locked: int
    failed: int
    permanently_failed: int


# ---------------------------------------------------------------------------
# Statements
# ---------------------------------------------------------------------------

# Rows that a function returns, with the task identifier and queue name that Job needs.
_WITH_NAMES = """
with changed as (
    select * from {function}
)
select changed.*, tasks.identifier as task_identifier, queues.queue_name
from changed
join {schema}._private_tasks as tasks on tasks.id = changed.task_id
left join {schema}._private_job_queues as queues on queues.id = changed.job_queue_id
order by changed.id
"""

_COMPLETE_JOBS = _WITH_NAMES.replace("{function}", "{schema}.complete_jobs(%(job_ids)s::bigint[])")

_PERMANENTLY_FAIL_JOBS = _WITH_NAMES.replace(
    "{function}", "{schema}.permanently_fail_jobs(%(job_ids)s::bigint[], %(reason)s::text)"
)

_RESCHEDULE_JOBS = _WITH_NAMES.replace(
    "{function}",
    """{schema}.reschedule_jobs(
        %(job_ids)s::bigint[],
        run_at => %(run_at)s::timestamptz,
        priority => %(priority)s::int,
        attempts => %(attempts)s::int,
        max_attempts => %(max_attempts)s::int
    )""",
)

# remove_job returns a row of nulls when no job has the key; the join drops that row.
_REMOVE_JOB = _WITH_NAMES.replace("{function}", "{schema}.remove_job(%(job_key)s::text)")

# The two updates of graphile-worker's force_unlock_workers (as in migration 000016), in one
# statement that also counts the rows. The SQL function returns void and so gives no count.
_FORCE_UNLOCK_WORKERS = """
with unlocked_jobs as (
    update {schema}._private_jobs
    set locked_at = null, locked_by = null
    where locked_by = any(%(worker_ids)s::text[])
    returning 1
),
unlocked_queues as (
    update {schema}._private_job_queues
    set locked_at = null, locked_by = null
    where locked_by = any(%(worker_ids)s::text[])
    returning 1
)
select
    (select count(*) from unlocked_jobs) as jobs,
    (select count(*) from unlocked_queues) as queues
"""

_DELETE_PERMAFAILED_JOBS = """
with deleted as (
    delete from {schema}._private_jobs as jobs
    where jobs.attempts >= jobs.max_attempts and jobs.locked_at is null
    returning 1
)
select count(*) as count from deleted
"""

_GC_TASK_IDENTIFIERS = """
with deleted as (
    delete from {schema}._private_tasks as tasks
    where not exists (select from {schema}._private_jobs as jobs where jobs.task_id = tasks.id)
    and tasks.identifier <> all(%(task_identifiers_to_keep)s::text[])
    returning 1
)
select count(*) as count from deleted
"""

_GC_JOB_QUEUES = """
with deleted as (
    delete from {schema}._private_job_queues as queues
    where queues.locked_at is null
    and not exists (select from {schema}._private_jobs as jobs where jobs.job_queue_id = queues.id)
    returning 1
)
select count(*) as count from deleted
"""

_SELECT_JOBS = """
select jobs.*, tasks.identifier as task_identifier, queues.queue_name
from {schema}._private_jobs as jobs
join {schema}._private_tasks as tasks on tasks.id = jobs.task_id
left join {schema}._private_job_queues as queues on queues.id = jobs.job_queue_id
"""

_LIST_JOBS = (
    _SELECT_JOBS
    + """
where (%(task)s::text is null or tasks.identifier = %(task)s::text)
and (%(queue)s::text is null or queues.queue_name = %(queue)s::text)
and ({state_condition})
order by jobs.id
limit %(limit)s::bigint
"""
)

_GET_JOB = _SELECT_JOBS + "where jobs.id = %(job_id)s::bigint"

_QUEUE_STATS = """
select queues.queue_name, count(jobs.id) as job_count, queues.locked_by, queues.locked_at
from {schema}._private_job_queues as queues
left join {schema}._private_jobs as jobs on jobs.job_queue_id = queues.id
group by queues.id
order by queues.queue_name
"""

_JOB_STATS = (
    "select tasks.identifier as task_identifier, count(*) as total,\n"
    + ",\n".join(f"count(*) filter (where {condition}) as {state}" for state, condition in JOB_STATES.items())
    + """
from {schema}._private_jobs as jobs
join {schema}._private_tasks as tasks on tasks.id = jobs.task_id
group by tasks.identifier
order by tasks.identifier
"""
)


@dataclass(frozen=True)
class AdminQueries:
    """Every statement of the admin API, for one schema."""

    complete_jobs: bytes
    permanently_fail_jobs: bytes
    reschedule_jobs: bytes
    remove_job: bytes
    force_unlock_workers: bytes
    cleanup: Mapping[str, bytes]
    list_jobs: Mapping[str | None, bytes]
    get_job: bytes
    queue_stats: bytes
    job_stats: bytes


@cache
def admin_queries_for(schema: str) -> AdminQueries:
    """Return the admin statements for ``schema``, built once."""
    list_jobs: dict[str | None, bytes] = {
        None: _render(_LIST_JOBS.replace("{state_condition}", "true"), schema)
    }
    for state, condition in JOB_STATES.items():
        list_jobs[state] = _render(_LIST_JOBS.replace("{state_condition}", condition), schema)
    return AdminQueries(
        complete_jobs=_render(_COMPLETE_JOBS, schema),
        permanently_fail_jobs=_render(_PERMANENTLY_FAIL_JOBS, schema),
        reschedule_jobs=_render(_RESCHEDULE_JOBS, schema),
        remove_job=_render(_REMOVE_JOB, schema),
        force_unlock_workers=_render(_FORCE_UNLOCK_WORKERS, schema),
        cleanup={
            "DELETE_PERMAFAILED_JOBS": _render(_DELETE_PERMAFAILED_JOBS, schema),
            "GC_TASK_IDENTIFIERS": _render(_GC_TASK_IDENTIFIERS, schema),
            "GC_JOB_QUEUES": _render(_GC_JOB_QUEUES, schema),
        },
        list_jobs=list_jobs,
        get_job=_render(_GET_JOB, schema),
        queue_stats=_render(_QUEUE_STATS, schema),
        job_stats=_render(_JOB_STATS, schema),
    )


# A statement and its parameters; a list of them runs in one transaction.
_Step = tuple[bytes, Mapping[str, Any]]
_Rows = list[dict[str, Any]]


# ---------------------------------------------------------------------------
# Async API
# ---------------------------------------------------------------------------


async def release_stale_locks(
    target: psycopg.AsyncConnection[Any] | AsyncConnectionPool, schema: str
) -> tuple[int, int]:
    """Unlock jobs and queues locked for more than 4 hours; return how many (jobs, queues).

    A worker that crashed leaves its locks behind. A released job whose
    ``run_at`` lies in the past gets ``run_at = now()``, and keeps the attempt
    that the crashed worker counted, as graphile-worker does.
    """
    statement = queries_for(schema).release_stale_locks
    if isinstance(target, AsyncConnectionPool):
        async with target.connection() as conn:
            row = await (await conn.execute(statement)).fetchone()
    else:
        row = await (await target.execute(statement)).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


async def complete_jobs(
    target: AsyncTarget, job_ids: Sequence[int], *, schema: str = DEFAULT_SCHEMA
) -> list[Job]:
    """Delete the given jobs as done and return them, ordered by id.

    A job that a live worker locks is left alone and not returned; so is an id
    that matches no job.
    """
    step = _complete_jobs_step(schema, job_ids)
    if step is None:
        return []
    (rows,) = await _run(target, [step])
    return _logged_jobs("completed", rows)


async def permanently_fail_jobs(
    target: AsyncTarget, job_ids: Sequence[int], reason: str | None = None, *, schema: str = DEFAULT_SCHEMA
) -> list[Job]:
    """Mark the given jobs as permanently failed and return them, ordered by id.

    Sets ``attempts`` to ``max_attempts`` and ``last_error`` to ``reason``
    (graphile-worker's "Manually marked as failed" when ``None``). A job that a
    live worker locks is left alone and not returned.
    """
    step = _permanently_fail_jobs_step(schema, job_ids, reason)
    if step is None:
        return []
    (rows,) = await _run(target, [step])
    return _logged_jobs("permanently failed", rows)


async def reschedule_jobs(
    target: AsyncTarget,
    job_ids: Sequence[int],
    *,
    run_at: datetime | None = None,
    priority: int | None = None,
    attempts: int | None = None,
    max_attempts: int | None = None,
    schema: str = DEFAULT_SCHEMA,
) -> list[Job]:
    """Change the given fields of the given jobs and return the jobs, ordered by id.

    Fields left at ``None`` keep their value; at least one must be given. A job
    that a live worker locks is left alone and not returned.
    """
    step = _reschedule_jobs_step(schema, job_ids, run_at, priority, attempts, max_attempts)
    if step is None:
        return []
    (rows,) = await _run(target, [step])
    return _logged_jobs("rescheduled", rows)


async def remove_job(target: AsyncTarget, job_key: str, *, schema: str = DEFAULT_SCHEMA) -> Job | None:
    """Delete the job with key ``job_key`` and return it, or ``None`` when no job has that key.

    A job that a live worker locks is not deleted. It loses its key and its
    retries (``attempts`` becomes ``max_attempts``), so it does not run again
    after the current attempt, and the returned job shows that change.
    """
    step = _remove_job_step(schema, job_key)
    (rows,) = await _run(target, [step])
    return _logged_removed_job(job_key, rows)


async def force_unlock_workers(
    target: AsyncTarget, worker_ids: Sequence[str], *, schema: str = DEFAULT_SCHEMA
) -> int:
    """Unlock every job and queue that the given workers lock; return how many jobs were unlocked.

    Use it only for workers that are gone: a live worker keeps running the jobs,
    which another worker may then fetch and run again. The jobs keep the attempt
    that the fetch counted, as in graphile-worker. This runs the two updates of
    graphile-worker's ``force_unlock_workers`` as one statement that also counts them.
    """
    step = _force_unlock_workers_step(schema, worker_ids)
    if step is None:
        return 0
    (rows,) = await _run(target, [step])
    return _logged_unlock_count(worker_ids, rows)


async def cleanup(
    target: AsyncTarget,
    *,
    tasks: Sequence[str] = DEFAULT_CLEANUP_TASKS,
    task_identifiers_to_keep: Sequence[str] = (),
    schema: str = DEFAULT_SCHEMA,
) -> CleanupResult:
    """Run graphile-worker's cleanup tasks in one transaction and return how many rows each deleted.

    - ``DELETE_PERMAFAILED_JOBS`` deletes unlocked jobs with no attempts left.
    - ``GC_TASK_IDENTIFIERS`` deletes task identifiers that no job uses, except
      those in ``task_identifiers_to_keep``.
    - ``GC_JOB_QUEUES`` deletes unlocked queues that no job uses.

    NOTE: a running worker resolves its task identifiers to ids once, at start.
    If GC_TASK_IDENTIFIERS deletes one of them, the next job of that task gets a
    new id, and that worker does not fetch it until it restarts. Pass every task
    identifier of your running workers in ``task_identifiers_to_keep``.
    """
    steps, names = _cleanup_steps(schema, tasks, task_identifiers_to_keep)
    results = await _run(target, steps)
    return _logged_cleanup_result(names, results)


async def list_jobs(
    target: AsyncTarget,
    *,
    task: str | None = None,
    queue: str | None = None,
    state: str | None = None,
    limit: int = 100,
    schema: str = DEFAULT_SCHEMA,
) -> list[Job]:
    """Return up to ``limit`` jobs ordered by id, filtered by task identifier, queue name and state.

    ``state`` is one of the keys of `JOB_STATES`; ``None`` filters nothing.
    """
    step = _list_jobs_step(schema, task, queue, state, limit)
    (rows,) = await _run(target, [step])
    return _jobs(rows)


async def get_job(target: AsyncTarget, job_id: int, *, schema: str = DEFAULT_SCHEMA) -> Job | None:
    """Return the job with id ``job_id``, with its payload and last error, or ``None`` when there is none."""
    step = _get_job_step(schema, job_id)
    (rows,) = await _run(target, [step])
    return _first_job(rows)


async def queue_stats(target: AsyncTarget, *, schema: str = DEFAULT_SCHEMA) -> list[QueueStats]:
    """Return every named queue with its job count and lock, ordered by queue name."""
    step = _queue_stats_step(schema)
    (rows,) = await _run(target, [step])
    return _queue_stats(rows)


async def job_stats(target: AsyncTarget, *, schema: str = DEFAULT_SCHEMA) -> list[JobStats]:
    """Return job counts per task identifier and state, for each task that has jobs, ordered by identifier."""
    step = _job_stats_step(schema)
    (rows,) = await _run(target, [step])
    return _job_stats(rows)


async def _run(target: AsyncTarget, steps: Sequence[_Step]) -> list[_Rows]:
    """Run the steps on one connection and return their rows; several steps share one transaction."""
    async with async_connection(target) as conn:
        # Without autocommit, the steps already share the caller's or the pool's transaction.
        async with conn.transaction() if len(steps) > 1 and conn.autocommit else nullcontext():
            return [await _fetch(conn, step) for step in steps]


async def _fetch(conn: psycopg.AsyncConnection[Any], step: _Step) -> _Rows:
    statement, params = step
    async with conn.cursor(row_factory=dict_row) as cursor:
        await cursor.execute(statement, params)
        return await cursor.fetchall()


# ---------------------------------------------------------------------------
# Sync API, the same steps without await
# ---------------------------------------------------------------------------


def complete_jobs_sync(
    target: SyncTarget, job_ids: Sequence[int], *, schema: str = DEFAULT_SCHEMA
) -> list[Job]:
    """Delete the given jobs as done with a sync connection; see `complete_jobs`."""
    step = _complete_jobs_step(schema, job_ids)
    if step is None:
        return []
    (rows,) = _run_sync(target, [step])
    return _logged_jobs("completed", rows)


def permanently_fail_jobs_sync(
    target: SyncTarget, job_ids: Sequence[int], reason: str | None = None, *, schema: str = DEFAULT_SCHEMA
) -> list[Job]:
    """Mark the given jobs as permanently failed with a sync connection; see `permanently_fail_jobs`."""
    step = _permanently_fail_jobs_step(schema, job_ids, reason)
    if step is None:
        return []
    (rows,) = _run_sync(target, [step])
    return _logged_jobs("permanently failed", rows)


def reschedule_jobs_sync(
    target: SyncTarget,
    job_ids: Sequence[int],
    *,
    run_at: datetime | None = None,
    priority: int | None = None,
    attempts: int | None = None,
    max_attempts: int | None = None,
    schema: str = DEFAULT_SCHEMA,
) -> list[Job]:
    """Change the given fields of the given jobs with a sync connection; see `reschedule_jobs`."""
    step = _reschedule_jobs_step(schema, job_ids, run_at, priority, attempts, max_attempts)
    if step is None:
        return []
    (rows,) = _run_sync(target, [step])
    return _logged_jobs("rescheduled", rows)


def remove_job_sync(target: SyncTarget, job_key: str, *, schema: str = DEFAULT_SCHEMA) -> Job | None:
    """Delete the job with key ``job_key`` with a sync connection; see `remove_job`."""
    step = _remove_job_step(schema, job_key)
    (rows,) = _run_sync(target, [step])
    return _logged_removed_job(job_key, rows)


def force_unlock_workers_sync(
    target: SyncTarget, worker_ids: Sequence[str], *, schema: str = DEFAULT_SCHEMA
) -> int:
    """Unlock the jobs and queues of the given workers with a sync connection; see `force_unlock_workers`."""
    step = _force_unlock_workers_step(schema, worker_ids)
    if step is None:
        return 0
    (rows,) = _run_sync(target, [step])
    return _logged_unlock_count(worker_ids, rows)


def cleanup_sync(
    target: SyncTarget,
    *,
    tasks: Sequence[str] = DEFAULT_CLEANUP_TASKS,
    task_identifiers_to_keep: Sequence[str] = (),
    schema: str = DEFAULT_SCHEMA,
) -> CleanupResult:
    """Run graphile-worker's cleanup tasks with a sync connection; see `cleanup`."""
    steps, names = _cleanup_steps(schema, tasks, task_identifiers_to_keep)
    results = _run_sync(target, steps)
    return _logged_cleanup_result(names, results)


def list_jobs_sync(
    target: SyncTarget,
    *,
    task: str | None = None,
    queue: str | None = None,
    state: str | None = None,
    limit: int = 100,
    schema: str = DEFAULT_SCHEMA,
) -> list[Job]:
    """Return up to ``limit`` jobs with a sync connection; see `list_jobs`."""
    step = _list_jobs_step(schema, task, queue, state, limit)
    (rows,) = _run_sync(target, [step])
    return _jobs(rows)


def get_job_sync(target: SyncTarget, job_id: int, *, schema: str = DEFAULT_SCHEMA) -> Job | None:
    """Return the job with id ``job_id`` with a sync connection; see `get_job`."""
    step = _get_job_step(schema, job_id)
    (rows,) = _run_sync(target, [step])
    return _first_job(rows)


def queue_stats_sync(target: SyncTarget, *, schema: str = DEFAULT_SCHEMA) -> list[QueueStats]:
    """Return every named queue with a sync connection; see `queue_stats`."""
    step = _queue_stats_step(schema)
    (rows,) = _run_sync(target, [step])
    return _queue_stats(rows)


def job_stats_sync(target: SyncTarget, *, schema: str = DEFAULT_SCHEMA) -> list[JobStats]:
    """Return job counts per task identifier and state with a sync connection; see `job_stats`."""
    step = _job_stats_step(schema)
    (rows,) = _run_sync(target, [step])
    return _job_stats(rows)


def _run_sync(target: SyncTarget, steps: Sequence[_Step]) -> list[_Rows]:
    """Run the steps on one connection and return their rows; several steps share one transaction."""
    with sync_connection(target) as conn:
        # Without autocommit, the steps already share the caller's or the pool's transaction.
        with conn.transaction() if len(steps) > 1 and conn.autocommit else nullcontext():
            return [_fetch_sync(conn, step) for step in steps]


def _fetch_sync(conn: psycopg.Connection[Any], step: _Step) -> _Rows:
    statement, params = step
    with conn.cursor(row_factory=dict_row) as cursor:
        cursor.execute(statement, params)
        return cursor.fetchall()


# ---------------------------------------------------------------------------
# Steps shared by both APIs: validation first, so bad input writes nothing
# ---------------------------------------------------------------------------


def _complete_jobs_step(schema: str, job_ids: Sequence[int]) -> _Step | None:
    ids = _check_job_ids(job_ids)
    if not ids:
        return None
    return admin_queries_for(schema).complete_jobs, {"job_ids": ids}


def _permanently_fail_jobs_step(schema: str, job_ids: Sequence[int], reason: str | None) -> _Step | None:
    ids = _check_job_ids(job_ids)
    _check_reason(reason)
    if not ids:
        return None
    return admin_queries_for(schema).permanently_fail_jobs, {"job_ids": ids, "reason": reason}


def _reschedule_jobs_step(
    schema: str,
    job_ids: Sequence[int],
    run_at: datetime | None,
    priority: int | None,
    attempts: int | None,
    max_attempts: int | None,
) -> _Step | None:
    ids = _check_job_ids(job_ids)
    if run_at is None and priority is None and attempts is None and max_attempts is None:
        raise ValidationError(
            "reschedule_jobs has nothing to change: pass at least one of run_at, priority, "
            "attempts or max_attempts."
        )
    _check_run_at(run_at)
    _check_smallint("priority", priority, SMALLINT_MIN)
    _check_smallint("attempts", attempts, 0)
    _check_smallint("max_attempts", max_attempts, 1)
    if not ids:
        return None
    params = {
        "job_ids": ids,
        "run_at": run_at,
        "priority": priority,
        "attempts": attempts,
        "max_attempts": max_attempts,
    }
    return admin_queries_for(schema).reschedule_jobs, params


def _remove_job_step(schema: str, job_key: str) -> _Step:
    _check_text("job_key", job_key, MAX_JOB_KEY_LENGTH, required=True)
    return admin_queries_for(schema).remove_job, {"job_key": job_key}


def _force_unlock_workers_step(schema: str, worker_ids: Sequence[str]) -> _Step | None:
    ids = _check_names("worker_ids", worker_ids)
    if not ids:
        return None
    return admin_queries_for(schema).force_unlock_workers, {"worker_ids": ids}


def _cleanup_steps(
    schema: str, tasks: Sequence[str], task_identifiers_to_keep: Sequence[str]
) -> tuple[list[_Step], list[str]]:
    """Return the statements of the requested cleanup tasks in `CLEANUP_TASKS` order, and their names."""
    requested = _check_names("tasks", tasks)
    for index, name in enumerate(requested):
        if name not in CLEANUP_TASKS:
            raise ValidationError(
                f"tasks[{index}] is invalid: {name!r} is not a cleanup task; "
                "it must be one of " + ", ".join(DEFAULT_CLEANUP_TASKS) + "."
            )
    if not requested:
        raise ValidationError("tasks is empty: pass one or more of " + ", ".join(DEFAULT_CLEANUP_TASKS) + ".")
    keep = _check_names("task_identifiers_to_keep", task_identifiers_to_keep)

    statements = admin_queries_for(schema).cleanup
    names = [name for name in CLEANUP_TASKS if name in requested]
    params = {"task_identifiers_to_keep": keep}
    return [(statements[name], params) for name in names], names


def _list_jobs_step(schema: str, task: str | None, queue: str | None, state: str | None, limit: int) -> _Step:
    _check_optional_text("task", task)
    _check_optional_text("queue", queue)
    if state is not None and state not in JOB_STATES:
        raise ValidationError(
            f"state is invalid: {state!r}; it must be one of " + ", ".join(JOB_STATES) + "."
        )
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= BIGINT_MAX:
        raise ValidationError(f"limit is invalid: {limit!r}; pass an integer of 1 or more.")
    params = {"task": task, "queue": queue, "limit": limit}
    return admin_queries_for(schema).list_jobs[state], params


def _get_job_step(schema: str, job_id: int) -> _Step:
    _check_job_id("job_id", job_id)
    return admin_queries_for(schema).get_job, {"job_id": job_id}


def _queue_stats_step(schema: str) -> _Step:
    return admin_queries_for(schema).queue_stats, {}


def _job_stats_step(schema: str) -> _Step:
    return admin_queries_for(schema).job_stats, {}


# --- validation -------------------------------------------------------------------------------


def _check_job_ids(job_ids: Sequence[int]) -> list[int]:
    if isinstance(job_ids, str | bytes | int) or not isinstance(job_ids, Sequence | set | frozenset):
        raise ValidationError(
            f"job_ids is invalid: {job_ids!r} has type {type(job_ids).__name__}; pass a list of job ids, "
            "such as [1, 2]."
        )
    ids = list(job_ids)
    for index, job_id in enumerate(ids):
        _check_job_id(f"job_ids[{index}]", job_id)
    return ids


def _check_job_id(name: str, job_id: int) -> None:
    if isinstance(job_id, bool) or not isinstance(job_id, int):
        raise ValidationError(
            f"{name} is invalid: {job_id!r} has type {type(job_id).__name__}; a job id is an integer "
            f"from 1 to {BIGINT_MAX}."
        )
    if not 1 <= job_id <= BIGINT_MAX:
        raise ValidationError(
            f"{name} is invalid: {job_id} is out of range; a job id is from 1 to {BIGINT_MAX}."
        )


def _check_names(name: str, values: Sequence[str]) -> list[str]:
    """Check that ``values`` is a collection of non-empty strings and return it as a list."""
    if isinstance(values, str | bytes) or not isinstance(values, Sequence | set | frozenset):
        raise ValidationError(
            f"{name} is invalid: {values!r} has type {type(values).__name__}; pass a list of strings, "
            f"such as [{values!r}]."
        )
    names = list(values)
    for index, value in enumerate(names):
        if not isinstance(value, str) or not value or "\x00" in value:
            raise ValidationError(
                f"{name}[{index}] is invalid: {value!r}; pass a non-empty string without NUL characters."
            )
    return names


def _check_optional_text(name: str, value: str | None) -> None:
    if value is not None and (not isinstance(value, str) or not value or "\x00" in value):
        raise ValidationError(
            f"{name} is invalid: {value!r}; pass a non-empty string without NUL characters."
        )


def _check_reason(reason: str | None) -> None:
    if reason is None:
        return
    if not isinstance(reason, str):
        raise ValidationError(
            f"reason is invalid: {reason!r} has type {type(reason).__name__}; pass a string or None."
        )
    if "\x00" in reason:
        raise ValidationError(
            "reason is invalid: it contains a NUL character (\\x00), which PostgreSQL text cannot hold; "
            "remove it."
        )


# --- results ----------------------------------------------------------------------------------


def _jobs(rows: _Rows) -> list[Job]:
    return [
        Job.from_row(row, task_identifier=row["task_identifier"], queue_name=row["queue_name"])
        for row in rows
    ]


def _first_job(rows: _Rows) -> Job | None:
    jobs = _jobs(rows)
    return jobs[0] if jobs else None


def _logged_jobs(action: str, rows: _Rows) -> list[Job]:
    jobs = _jobs(rows)
    shown = [job.id for job in jobs[:20]]
    logger.info("%s %d job(s), ids %s%s", action, len(jobs), shown, " ..." if len(jobs) > 20 else "")
    return jobs


def _logged_removed_job(job_key: str, rows: _Rows) -> Job | None:
    job = _first_job(rows)
    if job is None:
        logger.info("removed no job: no job has key %r", job_key)
    elif job.key is None:
        logger.info("job %d with key %r is locked; it lost its key and its retries", job.id, job_key)
    else:
        logger.info("removed job %d with key %r", job.id, job_key)
    return job


def _logged_unlock_count(worker_ids: Sequence[str], rows: _Rows) -> int:
    jobs, queues = int(rows[0]["jobs"]), int(rows[0]["queues"])
    logger.info("force-unlocked %d job(s) and %d queue(s) of worker(s) %s", jobs, queues, list(worker_ids))
    return jobs


def _logged_cleanup_result(names: Sequence[str], results: Sequence[_Rows]) -> CleanupResult:
    counts = {name: int(rows[0]["count"]) for name, rows in zip(names, results, strict=True)}
    result = CleanupResult(
        permafailed_jobs_deleted=counts.get("DELETE_PERMAFAILED_JOBS", 0),
        task_identifiers_deleted=counts.get("GC_TASK_IDENTIFIERS", 0),
        job_queues_deleted=counts.get("GC_JOB_QUEUES", 0),
    )
    logger.info("cleanup deleted %s", result)
    return result


def _queue_stats(rows: _Rows) -> list[QueueStats]:
    return [
        QueueStats(
            queue_name=row["queue_name"],
            job_count=int(row["job_count"]),
            locked_by=row["locked_by"],
            locked_at=row["locked_at"],
        )
        for row in rows
    ]


def _job_stats(rows: _Rows) -> list[JobStats]:
    return [
        JobStats(
            task_identifier=row["task_identifier"],
            total=int(row["total"]),
            ready=int(row["ready"]),
            scheduled=int(row["scheduled"]),
            locked=int(row["locked"]),
            failed=int(row["failed"]),
            permanently_failed=int(row["permanently_failed"]),
        )
        for row in rows
    ]
