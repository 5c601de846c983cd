"""The SQL that gwcore runs against graphile-worker's tables, one statement per operation.

Statements are built once per schema and reused as bytes, so psycopg can
prepare them on the server after a few executions. Every job id travels as ``bigint``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

from psycopg import sql


def _render(template: str, schema: str) -> bytes:
    # Rendered to bytes once: psycopg would otherwise compose the statement on every execution.
    from gwcore.migrate import quote_schema

    return sql.SQL(template).format(schema=sql.SQL(quote_schema(schema))).as_bytes(None)


@dataclass(frozen=True)
class Queries:
    """Every statement of the job path and the add API, for one schema."""

    schema: str
    add_job: bytes
    add_jobs: bytes
    task_and_queue_names: bytes
    task_ids: bytes
    insert_missing_tasks: bytes
    fetch_jobs: bytes
    fetch_jobs_with_flags: bytes
    complete_jobs: bytes
    fail_jobs: bytes
    return_jobs: bytes
    unlock_worker: bytes
    release_stale_locks: bytes


# Add one job through graphile-worker's own SQL function, so job keys behave exactly as theirs.
# The function returns a row of nulls when a keyed job could not be written under contention.
# A task or queue row that the function inserts is invisible to this statement's snapshot, so
# the caller fills in the task identifier and queue name from what it passed.
_ADD_JOB = """
select jobs.*
from {schema}.add_job(
    identifier => %(identifier)s::text,
    payload => %(payload)s::json,
    queue_name => %(queue_name)s::text,
    run_at => %(run_at)s::timestamptz,
    max_attempts => %(max_attempts)s::int,
    job_key => %(job_key)s::text,
    priority => %(priority)s::int,
    flags => %(flags)s::text[],
    job_key_mode => coalesce(%(job_key_mode)s::text, 'replace')
) as jobs
"""

# Add a batch of jobs in one round trip through graphile-worker's add_jobs.
_ADD_JOBS = """
select jobs.*
from {schema}.add_jobs(
    (
        select array_agg(
            row(
                spec->>'identifier',
                spec->'payload',
                spec->>'queue_name',
                (spec->>'run_at')::timestamptz,
                (spec->>'max_attempts')::smallint,
                spec->>'job_key',
                (spec->>'priority')::smallint,
                case when json_typeof(spec->'flags') = 'array' then (
                    select array_agg(flag) from json_array_elements_text(spec->'flags') as flag
                ) end
            )::{schema}.job_spec
            order by position
        )
        from json_array_elements(%(specs)s::json) with ordinality as specs(spec, position)
    ),
    %(preserve_run_at)s::boolean
) as jobs
"""

# Ids of the tasks and queues that a batch names. It is sent in the same pipeline as the batch
# and runs after it, so the task and queue rows that the batch inserted are visible to it.
_TASK_AND_QUEUE_NAMES = """
select 'task' as kind, id, identifier as name
from {schema}._private_tasks where identifier = any(%(identifiers)s::text[])
union all
select 'queue', id, queue_name
from {schema}._private_job_queues where queue_name = any(%(queue_names)s::text[])
"""

_TASK_IDS = """
select id, identifier from {schema}._private_tasks where identifier = any(%(identifiers)s::text[])
"""

# Insert only the identifiers that are missing, so a known identifier consumes no identity value.
_INSERT_MISSING_TASKS = """
insert into {schema}._private_tasks (identifier)
select wanted.identifier
from unnest(%(identifiers)s::text[]) as wanted(identifier)
where not exists (
    select 1 from {schema}._private_tasks as existing where existing.identifier = wanted.identifier
)
on conflict do nothing
"""

# Lock up to %(size)s runnable jobs for this worker, in the order priority, run_at, id (id is a
# stable FIFO tie-break).
#
# 1. candidates: for each of the worker's tasks, the first %(window)s due jobs in fetch order, read
#    from gwcore_jobs_task_fetch_index without locks by gwcore_fetch_candidates (gwcore's second
#    migration). A fetch so never steps over the due jobs of tasks that this worker does not run,
#    however many there are.
# 2. locked: the candidates in fetch order, each locked with SKIP LOCKED and rechecked against the
#    row's latest version, until %(size)s are locked. Jobs that a concurrent fetch is locking are
#    skipped rather than waited for, and only the jobs taken stay locked.
#    The window must exceed %(size)s by the jobs that concurrent fetches may be locking, or a fetch
#    comes back short.
# 3. A named queue runs one job at a time across all workers: only queues that no worker locks are
#    candidates, and the batch takes at most one job of each, the first in fetch order. The jobs of
#    a queue after its first stay unlocked once the statement ends, because only the jobs taken
#    are updated. Rows come back in no particular order; the caller sorts them.
_FETCH_JOBS = """
with available_queues as (
    select queues.id
    from {schema}._private_job_queues as queues
    where queues.is_available = true
    for update
    skip locked
),
candidates as materialized (
    select candidate.id, candidate.priority, candidate.run_at
    from {schema}.gwcore_fetch_candidates(
        %(task_ids)s::int[], %(window)s::int, {forbidden_flags}
    ) as candidate
    order by candidate.priority asc, candidate.run_at asc, candidate.id asc
),
locked as (
    select candidates.id, candidates.priority, candidates.run_at, lock.queue[1] as job_queue_id
    from candidates
    cross join lateral (
        select (
            select array[jobs.job_queue_id]
            from {schema}._private_jobs as jobs
            where jobs.id = candidates.id
            and jobs.is_available = true
            and jobs.run_at <= now()
            and (jobs.job_queue_id is null or jobs.job_queue_id in (select id from available_queues))
            {flags_filter}
            for update
            skip locked
        ) as queue
        offset 0  -- keeps the subquery whole, so that each candidate is locked once
    ) as lock
    where lock.queue is not null
    limit %(size)s
),
next_jobs as (
    select ranked.id, ranked.job_queue_id
    from (
        select
            locked.id,
            locked.job_queue_id,
            row_number() over (
                partition by locked.job_queue_id
                order by locked.priority, locked.run_at, locked.id
            ) as position_in_queue
        from locked
    ) as ranked
    where ranked.job_queue_id is null or ranked.position_in_queue = 1
),
locked_queues as (
    update {schema}._private_job_queues as queues
    set locked_by = %(worker_id)s::text, locked_at = now()
    from next_jobs
    where queues.id = next_jobs.job_queue_id
    returning queues.id, queues.queue_name
)
update {schema}._private_jobs as jobs
set attempts = jobs.attempts + 1, locked_by = %(worker_id)s::text, locked_at = now()
from next_jobs
left join locked_queues on locked_queues.id = next_jobs.job_queue_id
where jobs.id = next_jobs.id
returning jobs.*, locked_queues.queue_name
"""

_FLAGS_FILTER = "and ((jobs.flags ?| %(forbidden_flags)s::text[]) is not true)"


# Delete finished jobs and unlock their queues; one statement for one job or a batch.
_COMPLETE_JOBS = """
with done as (
    delete from {schema}._private_jobs
    where id = any(%(job_ids)s::bigint[]) and locked_by = %(worker_id)s::text
    returning id, job_queue_id
),
unlocked_queues as (
    update {schema}._private_job_queues as queues
    set locked_by = null, locked_at = null
    from done
    where queues.id = done.job_queue_id and queues.locked_by = %(worker_id)s::text
)
select id from done
"""

# Record failed attempts: each job's error, and the next run_at after an exponential backoff of
# e^min(attempts, 10) seconds. At attempts = max_attempts the row is permanently failed.
_FAIL_JOBS = """
with failed as (
    update {schema}._private_jobs as jobs
    set
        last_error = attempt.error,
        run_at = greatest(now(), jobs.run_at) + exp(least(jobs.attempts, 10)) * interval '1 second',
        locked_by = null,
        locked_at = null
    from unnest(%(job_ids)s::bigint[], %(errors)s::text[]) as attempt(id, error)
    where jobs.id = attempt.id and jobs.locked_by = %(worker_id)s::text
    returning jobs.*
),
unlocked_queues as (
    update {schema}._private_job_queues as queues
    set locked_by = null, locked_at = null
    from failed
    where queues.id = failed.job_queue_id and queues.locked_by = %(worker_id)s::text
)
select * from failed
"""

# Hand jobs back unlocked without counting the attempt that the fetch added. A job whose key
# changed while it ran was detached by add_job or remove_job (key cleared, attempts set to
# max_attempts so that it never runs again), so it keeps its attempts.
_RETURN_JOBS = """
with fetched as (
    select *
    from unnest(%(job_ids)s::bigint[], %(keys)s::text[]) as fetched(id, key)
),
returned as (
    update {schema}._private_jobs as jobs
    set
        attempts = case
            when jobs.key is not distinct from fetched.key then greatest(0, jobs.attempts - 1)
            else jobs.attempts
        end,
        locked_by = null,
        locked_at = null
    from fetched
    where jobs.id = fetched.id and jobs.locked_by = %(worker_id)s::text
    returning jobs.id, jobs.job_queue_id
),
unlocked_queues as (
    update {schema}._private_job_queues as queues
    set locked_by = null, locked_at = null
    from returned
    where queues.id = returned.job_queue_id and queues.locked_by = %(worker_id)s::text
)
select id from returned
"""

# Last step of every shutdown: nothing may stay locked by this worker id, except the jobs in
# keep_locked, whose outcome is known but could not be written. Jobs reach this statement only
# when the worker lost track of them (a fetch whose reply never arrived), so none ran.
_UNLOCK_WORKER = """
with returned as (
    update {schema}._private_jobs as jobs
    set attempts = greatest(0, jobs.attempts - 1), locked_by = null, locked_at = null
    where jobs.locked_by = %(worker_id)s::text and not (jobs.id = any(%(keep_locked)s::bigint[]))
    returning jobs.id, jobs.job_queue_id
),
unlocked_queues as (
    update {schema}._private_job_queues as queues
    set locked_by = null, locked_at = null
    where queues.locked_by = %(worker_id)s::text
    and not exists (
        select 1
        from {schema}._private_jobs as kept
        where kept.id = any(%(keep_locked)s::bigint[]) and kept.job_queue_id = queues.id
    )
    returning queues.id
)
select
    (select count(*) from returned) as jobs,
    (select count(*) from unlocked_queues) as queues
"""

# Release locks held for more than 4 hours by workers that crashed, in one statement.
# A released job may run at once, so its run_at moves up to now when it lies in the past.
_RELEASE_STALE_LOCKS = """
with stale_jobs as (
    update {schema}._private_jobs as jobs
    set locked_at = null, locked_by = null, run_at = greatest(jobs.run_at, now())
    where jobs.locked_at < now() - interval '4 hours'
    returning jobs.id
),
stale_queues as (
    update {schema}._private_job_queues as queues
    set locked_at = null, locked_by = null
    where queues.locked_at < now() - interval '4 hours'
    returning queues.id
)
select
    (select count(*) from stale_jobs) as jobs,
    (select count(*) from stale_queues) as queues
"""


def fetch_window(size: int) -> int:
    """Return how many candidates per task a fetch of ``size`` jobs reads before it locks any.

    The margin over ``size`` covers jobs that concurrent fetches are locking at
    the same moment: twice the batch, plus 100 for the single-job fetches of
    many slots and processes. A fetch whose window was all taken by others
    comes back short (empty at worst), and the worker fetches again later.
    """
    return 2 * size + 100


@cache
def queries_for(schema: str) -> Queries:
    """Return the statements for ``schema``, built once."""
    return Queries(
        schema=schema,
        add_job=_render(_ADD_JOB, schema),
        add_jobs=_render(_ADD_JOBS, schema),
        task_and_queue_names=_render(_TASK_AND_QUEUE_NAMES, schema),
        task_ids=_render(_TASK_IDS, schema),
        insert_missing_tasks=_render(_INSERT_MISSING_TASKS, schema),
        fetch_jobs=_render(
            _FETCH_JOBS.replace("{flags_filter}", "").replace("{forbidden_flags}", "null"), schema
        ),
        fetch_jobs_with_flags=_render(
            _FETCH_JOBS.replace("{flags_filter}", _FLAGS_FILTER).replace(
                "{forbidden_flags}", "%(forbidden_flags)s::text[]"
            ),
            schema,
        ),
        complete_jobs=_render(_COMPLETE_JOBS, schema),
        fail_jobs=_render(_FAIL_JOBS, schema),
        return_jobs=_render(_RETURN_JOBS, schema),
        unlock_worker=_render(_UNLOCK_WORKER, schema),
        release_stale_locks=_render(_RELEASE_STALE_LOCKS, schema),
    )
