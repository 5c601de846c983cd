"""Adding jobs from Python: `add_job` and `add_jobs`, async and sync.

Both go through graphile-worker's SQL functions ``add_job`` and ``add_jobs``,
so job keys, queues and the ``jobs:insert`` notification behave exactly as
they do for a Node.js worker. Every spec is validated and passed through the
``gw_before_job_schedule`` hook before anything reaches the database.

The target is a psycopg connection, a connection pool or a connection string.
On a connection, the job is added inside the caller's open transaction, if
there is one, and appears only when that transaction commits.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager, AbstractContextManager, nullcontext
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row

from gwcore.connections import AsyncTarget, SyncTarget, async_connection, sync_connection
from gwcore.errors import GwError, ValidationError
from gwcore.job import Job, JobSpec
from gwcore.plugins import PluginManager, default_plugin_manager
from gwcore.queries import Queries, queries_for

logger = logging.getLogger("gwcore.add")

DEFAULT_SCHEMA = "graphile_worker"


# A keyed job can lose a race with a worker that locks the old row between the two statements
# of graphile-worker's add_jobs, which then writes nothing. Such an add is simply tried again.
MAX_KEY_CONTENTION_RETRIES = 20
KEY_CONTENTION_DELAY = 0.005


class JobKeyContentionError(GwError):
    """A keyed job could not be written because other sessions kept changing the same key."""


# ---------------------------------------------------------------------------
# Async API
# ---------------------------------------------------------------------------


async def add_job(
    target: AsyncTarget,
    identifier: str,
    payload: Any = None,
    *,
    queue_name: str | None = None,
    run_at: datetime | None = None,
    max_attempts: int | None = None,
    job_key: str | None = None,
    job_key_mode: str | None = None,
    priority: int | None = None,
    flags: Sequence[str] | None = None,
    schema: str = DEFAULT_SCHEMA,
    plugins: PluginManager | None = None,
) -> Job | None:
    """Add one job and return its row, or ``None`` when a ``gw_before_job_schedule`` hook skipped it.

    Raises `ValidationError` for a bad argument and `JobScheduleError` when a
    hook rejects the job; in both cases nothing is written.
    """
    spec = JobSpec.create(
        identifier,
        payload,
        queue_name=queue_name,
        run_at=run_at,
        max_attempts=max_attempts,
        job_key=job_key,
        job_key_mode=job_key_mode,
        priority=priority,
        flags=flags,
    )
    return await add_job_spec(target, spec, schema=schema, plugins=plugins)


async def add_job_spec(
    target: AsyncTarget,
    spec: JobSpec,
    *,
    schema: str = DEFAULT_SCHEMA,
    plugins: PluginManager | None = None,
) -> Job | None:
    """Add the job that ``spec`` describes; see `add_job`."""
    manager = plugins or default_plugin_manager()
    scheduled = await manager.schedule(spec)
    if scheduled is None:
        logger.debug("a plugin skipped adding a job of task %r", spec.identifier)
        return None

    statement = queries_for(schema).add_job
    params = _add_job_params(scheduled)
    owned = not isinstance(target, psycopg.AsyncConnection)
    async with async_connection(target) as conn:
        for attempt in range(MAX_KEY_CONTENTION_RETRIES):
            try:
                async with _own_transaction(conn, owned), conn.cursor(row_factory=dict_row) as cursor:
                    await cursor.execute(statement, params)
                    row = await cursor.fetchone()
            except psycopg.errors.DeadlockDetected:
                if not (owned or conn.autocommit):
                    raise  # the caller's transaction is aborted; only the caller can retry it
                logger.debug("adding a job of task %r hit a deadlock; retrying it", spec.identifier)
            else:
                if row is not None and row["id"] is not None:
                    return _job_from_spec(row, scheduled)
            await asyncio.sleep(KEY_CONTENTION_DELAY * (attempt + 1))
    raise _contention_error(scheduled)


async def add_jobs(
    target: AsyncTarget,
    specs: Sequence[JobSpec],
    *,
    job_key_preserve_run_at: bool = False,
    schema: str = DEFAULT_SCHEMA,
    plugins: PluginManager | None = None,
) -> list[Job]:
    """Add a batch of jobs in one round trip and return the rows written.

    Build each spec with `JobSpec.create`. A spec that a hook skips is left
    out; a hook that fails any spec raises `JobScheduleError` before anything
    is written. ``job_key_preserve_run_at`` applies ``preserve_run_at`` to
    every keyed spec. The rows come back in the order the database returns
    them, which is not always the order of ``specs``.
    """
    manager = plugins or default_plugin_manager()
    batch = _check_batch(specs, job_key_preserve_run_at)
    scheduled = [spec for spec in [await manager.schedule(spec) for spec in batch] if spec]
    if not scheduled:
        return []

    queries = queries_for(schema)
    written: list[dict[str, Any]] = []
    pending = scheduled
    names: _Names = ({}, {})
    owned = not isinstance(target, psycopg.AsyncConnection)
    async with async_connection(target) as conn:
        for attempt in range(MAX_KEY_CONTENTION_RETRIES):
            try:
                async with _own_transaction(conn, owned):
                    rows, name_rows = await _insert_batch(conn, queries, pending, job_key_preserve_run_at)
                written += rows
                names = _merge_names(names, name_rows)
            except psycopg.errors.DeadlockDetected:
                if not (owned or conn.autocommit):
                    raise  # the caller's transaction is aborted; only the caller can retry it
                logger.debug("a batch of %d job(s) hit a deadlock; retrying it", len(pending))
            else:
                pending = _unwritten(written, pending)
                if not pending:
                    break
            await asyncio.sleep(KEY_CONTENTION_DELAY * (attempt + 1))
        else:
            raise _contention_error(pending[0])
    return _jobs_from_rows(written, names)


def _own_transaction(conn: psycopg.AsyncConnection[Any], owned: bool) -> AbstractAsyncContextManager[Any]:
    """Return a transaction on a connection gwcore owns and that is not in autocommit mode.

    Its rollback after a deadlock leaves the connection ready for the retry.
    """
    if owned and not conn.autocommit:
        return conn.transaction()
    return nullcontext()


def _own_transaction_sync(conn: psycopg.Connection[Any], owned: bool) -> AbstractContextManager[Any]:
    """Return a transaction as `_own_transaction` does, for the sync API."""
    if owned and not conn.autocommit:
        return conn.transaction()
    return nullcontext()


async def _insert_batch(
    conn: psycopg.AsyncConnection[Any], queries: Queries, specs: Sequence[JobSpec], preserve_run_at: bool
) -> tuple[list[dict[str, Any]], list[tuple[Any, ...]]]:
    """Insert a batch and look up the ids of its tasks and queues, in one round trip."""
    async with conn.cursor(row_factory=dict_row) as insert, conn.cursor() as lookup:
        async with conn.pipeline():
            await insert.execute(queries.add_jobs, _add_jobs_params(specs, preserve_run_at))
            await lookup.execute(queries.task_and_queue_names, _name_lookup_params(specs))
        return await insert.fetchall(), await lookup.fetchall()


# ---------------------------------------------------------------------------
# Sync API, the same steps without await
# ---------------------------------------------------------------------------


def add_job_sync(
    target: SyncTarget,
    identifier: str,
    payload: Any = None,
    *,
    queue_name: str | None = None,
    run_at: datetime | None = None,
    max_attempts: int | None = None,
    job_key: str | None = None,
    job_key_mode: str | None = None,
    priority: int | None = None,
    flags: Sequence[str] | None = None,
    schema: str = DEFAULT_SCHEMA,
    plugins: PluginManager | None = None,
) -> Job | None:
    """Add one job with a sync connection, pool or connection string; see `add_job`."""
    spec = JobSpec.create(
        identifier,
        payload,
        queue_name=queue_name,
        run_at=run_at,
        max_attempts=max_attempts,
        job_key=job_key,
        job_key_mode=job_key_mode,
        priority=priority,
        flags=flags,
    )
    return add_job_spec_sync(target, spec, schema=schema, plugins=plugins)


def add_job_spec_sync(
    target: SyncTarget,
    spec: JobSpec,
    *,
    schema: str = DEFAULT_SCHEMA,
    plugins: PluginManager | None = None,
) -> Job | None:
    """Add the job that ``spec`` describes with a sync connection; see `add_job`."""
    manager = plugins or default_plugin_manager()
    scheduled = manager.schedule_sync(spec)
    if scheduled is None:
        logger.debug("a plugin skipped adding a job of task %r", spec.identifier)
        return None

    statement = queries_for(schema).add_job
    params = _add_job_params(scheduled)
    owned = not isinstance(target, psycopg.Connection)
    with sync_connection(target) as conn:
        for attempt in range(MAX_KEY_CONTENTION_RETRIES):
            try:
                with _own_transaction_sync(conn, owned), conn.cursor(row_factory=dict_row) as cursor:
                    cursor.execute(statement, params)
                    row = cursor.fetchone()
            except psycopg.errors.DeadlockDetected:
                if not (owned or conn.autocommit):
                    raise  # the caller's transaction is aborted; only the caller can retry it
                logger.debug("adding a job of task %r hit a deadlock; retrying it", spec.identifier)
            else:
                if row is not None and row["id"] is not None:
                    return _job_from_spec(row, scheduled)
            time.sleep(KEY_CONTENTION_DELAY * (attempt + 1))
    raise _contention_error(scheduled)


def add_jobs_sync(
    target: SyncTarget,
    specs: Sequence[JobSpec],
    *,
    job_key_preserve_run_at: bool = False,
    schema: str = DEFAULT_SCHEMA,
    plugins: PluginManager | None = None,
) -> list[Job]:
    """Add a batch of jobs with a sync connection; see `add_jobs`."""
    manager = plugins or default_plugin_manager()
    batch = _check_batch(specs, job_key_preserve_run_at)
    scheduled = [spec for spec in [manager.schedule_sync(spec) for spec in batch] if spec]
    if not scheduled:
        return []

    queries = queries_for(schema)
    written: list[dict[str, Any]] = []
    pending = scheduled
    names: _Names = ({}, {})
    owned = not isinstance(target, psycopg.Connection)
    with sync_connection(target) as conn:
        for attempt in range(MAX_KEY_CONTENTION_RETRIES):
            try:
                with _own_transaction_sync(conn, owned):
                    rows, name_rows = _insert_batch_sync(conn, queries, pending, job_key_preserve_run_at)
                written += rows
                names = _merge_names(names, name_rows)
            except psycopg.errors.DeadlockDetected:
                if not (owned or conn.autocommit):
                    raise  # the caller's transaction is aborted; only the caller can retry it
                logger.debug("a batch of %d job(s) hit a deadlock; retrying it", len(pending))
            else:
                pending = _unwritten(written, pending)
                if not pending:
                    break
            time.sleep(KEY_CONTENTION_DELAY * (attempt + 1))
        else:
            raise _contention_error(pending[0])
    return _jobs_from_rows(written, names)


def _insert_batch_sync(
    conn: psycopg.Connection[Any], queries: Queries, specs: Sequence[JobSpec], preserve_run_at: bool
) -> tuple[list[dict[str, Any]], list[tuple[Any, ...]]]:
    """Insert a batch and look up the ids of its tasks and queues, in one round trip."""
    with conn.cursor(row_factory=dict_row) as insert, conn.cursor() as lookup:
        with conn.pipeline():
            insert.execute(queries.add_jobs, _add_jobs_params(specs, preserve_run_at))
            lookup.execute(queries.task_and_queue_names, _name_lookup_params(specs))
        return insert.fetchall(), lookup.fetchall()


# ---------------------------------------------------------------------------
# Steps shared by both APIs
# ---------------------------------------------------------------------------


def _add_job_params(spec: JobSpec) -> dict[str, Any]:
    return {
        "identifier": spec.identifier,
        "payload": spec.payload_json(),
        "queue_name": spec.queue_name,
        "run_at": spec.run_at,
        "max_attempts": spec.max_attempts,
        "job_key": spec.job_key,
        "priority": spec.priority,
        "flags": list(spec.flags) if spec.flags is not None else None,
        "job_key_mode": spec.job_key_mode,
    }


def _check_batch(specs: Sequence[JobSpec], preserve_run_at: bool) -> list[JobSpec]:
    batch = list(specs)
    keys: dict[str, int] = {}
    for index, spec in enumerate(batch):
        if not isinstance(spec, JobSpec):
            raise ValidationError(
                f"specs[{index}] is invalid: {spec!r}; build each job with gwcore.JobSpec.create(...)."
            )
        try:
            spec.validate()
        except ValidationError as error:
            raise ValidationError(f"specs[{index}].{error}") from error
        if spec.job_key is not None:
            if spec.job_key in keys:
                raise ValidationError(
                    f"specs[{index}].job_key is invalid: {spec.job_key!r} is also the key of "
                    f"specs[{keys[spec.job_key]}]; one batch can hold each key once, so merge the two."
                )
            keys[spec.job_key] = index
        if spec.job_key_mode == "unsafe_dedupe":
            raise ValidationError(
                f"specs[{index}].job_key_mode is invalid: 'unsafe_dedupe' is not supported in a "
                "batch; add such a job with add_job."
            )
        if spec.job_key_mode == "preserve_run_at" and not preserve_run_at:
            raise ValidationError(
                f"specs[{index}].job_key_mode is invalid: 'preserve_run_at' applies to a whole "
                "batch; pass job_key_preserve_run_at=True to add_jobs instead."
            )
    return batch


def _add_jobs_params(specs: Sequence[JobSpec], preserve_run_at: bool) -> dict[str, Any]:
    rows = [
        {
            "identifier": spec.identifier,
            "payload": json.loads(spec.payload_json()),
            "queue_name": spec.queue_name,
            "run_at": spec.run_at.isoformat() if spec.run_at else None,
            "max_attempts": spec.max_attempts,
            "job_key": spec.job_key,
            "priority": spec.priority,
            "flags": list(spec.flags) if spec.flags is not None else None,
        }
        for spec in specs
    ]
    return {"specs": json.dumps(rows, separators=(",", ":")), "preserve_run_at": preserve_run_at}


def _unwritten(rows: Sequence[dict[str, Any]], pending: list[JobSpec]) -> list[JobSpec]:
    """Return the keyed specs of ``pending`` that no row in ``rows`` was written for."""
    written_keys = {row["key"] for row in rows if row["key"] is not None}
    return [spec for spec in pending if spec.job_key is not None and spec.job_key not in written_keys]


# Task identifiers by task id and queue names by queue id.
_Names = tuple[dict[int, str], dict[int, str]]


def _name_lookup_params(specs: Sequence[JobSpec]) -> dict[str, Any]:
    return {
        "identifiers": sorted({spec.identifier for spec in specs}),
        "queue_names": sorted({spec.queue_name for spec in specs if spec.queue_name is not None}),
    }


def _merge_names(names: _Names, rows: Sequence[tuple[Any, ...]]) -> _Names:
    tasks, queues = names
    for kind, object_id, name in rows:
        (tasks if kind == "task" else queues)[int(object_id)] = str(name)
    return tasks, queues


def _jobs_from_rows(rows: Sequence[dict[str, Any]], names: _Names) -> list[Job]:
    tasks, queues = names
    return [
        Job.from_row(
            row,
            task_identifier=tasks.get(row["task_id"]) or "",
            queue_name=queues.get(row["job_queue_id"]) if row["job_queue_id"] is not None else None,
        )
        for row in rows
    ]


def _job_from_spec(row: dict[str, Any], spec: JobSpec) -> Job:
    return Job.from_row(row, task_identifier=spec.identifier, queue_name=spec.queue_name)


def _contention_error(spec: JobSpec) -> JobKeyContentionError:
    return JobKeyContentionError(
        f"job key {spec.job_key!r} of task {spec.identifier!r} could not be written after "
        f"{MAX_KEY_CONTENTION_RETRIES} tries because workers kept locking the existing job; "
        "nothing was added. Try again later."
    )
