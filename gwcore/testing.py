"""Pytest fixtures for testing gwcore and gwcore plugins against a real PostgreSQL.

Enable them in a test suite with ``pytest_plugins = ["gwcore.testing"]`` in
``conftest.py``.

The database comes from ``GW_TEST_DATABASE_URL`` when it is set. Otherwise the
fixtures try ``postgresql://postgres@127.0.0.1:5432/test`` and, when no server
accepts connections there, start an embedded PostgreSQL (the ``embedded`` extra) in a
temporary folder for the test session. Each test that uses ``gw_schema`` gets a
schema of its own, migrated before the test and dropped after it.

For testing plugins and tasks, ``gw_worker_factory`` builds a worker on that
schema with only the plugins given, ``gw_add_job`` adds a job to it, and
``gw_run_until_idle`` (or `run_until_idle`) runs the worker until no job that
it could run is left.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from typing import Any, Protocol

import psycopg
import pytest
from psycopg import sql

from gwcore.add import add_job
from gwcore.job import Job
from gwcore.plugins import PluginManager, create_plugin_manager
from gwcore.tasks import TaskFunction
from gwcore.worker import Worker

DEFAULT_TEST_URL = "postgresql://postgres@127.0.0.1:5432/test"


def _server_answers(url: str) -> bool:
    try:
        with psycopg.connect(url, connect_timeout=3) as conn:
            conn.execute("select 1")
        return True
    except psycopg.OperationalError:
        return False


@pytest.fixture(scope="session")
def gw_database_url() -> Iterator[str]:
    """Connection string of the PostgreSQL database the tests run against."""
    configured = os.environ.get("GW_TEST_DATABASE_URL")
    if configured:
        yield configured
        return

    if _server_answers(DEFAULT_TEST_URL):
        yield DEFAULT_TEST_URL
        return

    from gwcore.embedded import start_embedded_server

    with tempfile.TemporaryDirectory(prefix="gwcore-test-pg-") as folder:
        server = start_embedded_server(os.path.join(folder, "data"), cleanup="delete")
        yield server.url


def new_schema_name(prefix: str = "gw_test") -> str:
    """Return a schema name that no other test uses."""
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


def drop_schema(url: str, schema: str) -> None:
    """Drop ``schema`` and everything in it, ignoring a schema that does not exist."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql.SQL("drop schema if exists {} cascade").format(sql.Identifier(schema)))


@pytest.fixture
def gw_schema_name() -> str:
    """A fresh schema name; nothing is created in the database."""
    return new_schema_name()


@pytest.fixture
async def gw_schema(gw_database_url: str, gw_schema_name: str) -> AsyncIterator[str]:
    """A schema of this test's own with gwcore's migrations applied, dropped afterwards."""
    from gwcore.migrate import migrate

    async with await psycopg.AsyncConnection.connect(gw_database_url, autocommit=True) as conn:
        await migrate(conn, gw_schema_name)
    try:
        yield gw_schema_name
    finally:
        drop_schema(gw_database_url, gw_schema_name)


@pytest.fixture
async def gw_conn(gw_database_url: str) -> AsyncIterator[psycopg.AsyncConnection]:
    """An autocommit async connection to the test database."""
    async with await psycopg.AsyncConnection.connect(gw_database_url, autocommit=True) as conn:
        yield conn


# ---------------------------------------------------------------------------
# Fixtures for plugin authors: a worker, adding jobs, running until idle
# ---------------------------------------------------------------------------

# Poll interval of the workers that `gw_worker_factory` builds, in seconds.
TEST_POLL_INTERVAL = 0.05
# Default limit of `run_until_idle`, in seconds: generous, since it only ends a test that hangs.
DEFAULT_IDLE_TIMEOUT = 30.0

# The jobs a worker could fetch now: the conditions of its fetch statement in gwcore.queries.
_RUNNABLE_JOBS = """
select jobs.id, tasks.identifier, jobs.attempts, jobs.max_attempts
from {schema}._private_jobs as jobs
join {schema}._private_tasks as tasks on tasks.id = jobs.task_id
where jobs.is_available = true
and jobs.run_at <= now()
and tasks.identifier = any(%(identifiers)s::text[])
and (
    jobs.job_queue_id is null
    or jobs.job_queue_id in (
        select queues.id from {schema}._private_job_queues as queues where queues.is_available = true
    )
)
and ((jobs.flags ?| %(forbidden_flags)s::text[]) is not true)
order by jobs.id
"""


class WorkerFactory(Protocol):
    """Signature of the `gw_worker_factory` fixture."""

    def __call__(
        self,
        tasks: Mapping[str, TaskFunction],
        plugins: Iterable[object] = (),
        **worker_options: Any,
    ) -> Worker: ...


class AddJob(Protocol):
    """Signature of the `gw_add_job` fixture."""

    async def __call__(
        self,
        identifier: str,
        payload: Any = None,
        *,
        worker: Worker | None = None,
        plugins: PluginManager | None = None,
        **job_options: Any,
    ) -> Job | None: ...


class RunUntilIdle(Protocol):
    """Signature of `run_until_idle` and the `gw_run_until_idle` fixture."""

    async def __call__(self, worker: Worker, *, timeout: float = DEFAULT_IDLE_TIMEOUT) -> None: ...  # noqa: ASYNC109


@pytest.fixture
def gw_worker_factory(gw_database_url: str, gw_schema: str) -> WorkerFactory:
    """A function that builds a `Worker` on this test's schema: ``factory(tasks, plugins, **options)``.

    The worker gets exactly the built-ins and the ``plugins`` given: it is built
    with ``create_plugin_manager(plugins, entry_points=False)``, so plugins
    installed in the environment stay out. Pass ``builtins=False`` to leave out
    the built-ins too, or ``plugin_manager=`` to use a manager of your own
    (then ``plugins`` must be empty). Other keyword arguments go to `Worker`,
    whose defaults here suit tests: ``poll_interval`` is 0.05 s, and the worker
    neither listens for notifications (``listen=False``) nor migrates, because
    ``gw_schema`` is migrated already.
    """

    def make_worker(
        tasks: Mapping[str, TaskFunction],
        plugins: Iterable[object] = (),
        **worker_options: Any,
    ) -> Worker:
        builtins = worker_options.pop("builtins", True)
        plugins = list(plugins)
        manager = worker_options.pop("plugin_manager", None)
        if manager is not None and plugins:
            raise ValueError(
                "gw_worker_factory got both plugins and plugin_manager; register the plugins on "
                "the manager, or pass plugins without plugin_manager."
            )
        if manager is None:
            manager = create_plugin_manager(plugins, builtins=builtins, entry_points=False)
        worker_options.setdefault("poll_interval", TEST_POLL_INTERVAL)
        worker_options.setdefault("listen", False)
        worker_options.setdefault("migrate", False)
        return Worker(
            gw_database_url,
            tasks=tasks,
            schema=gw_schema,
            plugin_manager=manager,
            **worker_options,
        )

    return make_worker


@pytest.fixture
def gw_add_job(gw_database_url: str, gw_schema: str) -> AddJob:
    """An async function that adds a job to this test's schema and returns it.

    ``await gw_add_job(identifier, payload, worker=worker, **options)`` passes
    the job through ``gw_before_job_schedule`` of ``worker``'s plugins, or of
    the manager given as ``plugins=``. With neither, the job passes through no plugin.
    The options are those of `gwcore.add_job` (``queue_name``, ``run_at``,
    ``max_attempts``, ``job_key``, ``priority``, ``flags``, ...). The return
    value is ``None`` when a plugin skipped the job.
    """

    async def add(
        identifier: str,
        payload: Any = None,
        *,
        worker: Worker | None = None,
        plugins: PluginManager | None = None,
        **job_options: Any,
    ) -> Job | None:
        if worker is not None and plugins is not None:
            raise ValueError("gw_add_job got both worker and plugins; pass one of them.")
        if worker is not None:
            manager = worker.plugins
        elif plugins is not None:
            manager = plugins
        else:
            manager = create_plugin_manager(builtins=False, entry_points=False)
        return await add_job(
            gw_database_url, identifier, payload, schema=gw_schema, plugins=manager, **job_options
        )

    return add


# The timeout is a parameter rather than the caller's asyncio.timeout so that the
# TimeoutError can name the jobs left, which needs a query after the runs stop.
async def run_until_idle(worker: Worker, *, timeout: float = DEFAULT_IDLE_TIMEOUT) -> None:  # noqa: ASYNC109
    """Run ``worker.run_once()`` again and again until no job that the worker could run is left.

    A job counts when it is ready now (``run_at`` has passed, it is unlocked,
    has attempts left and its queue is free), belongs to one of the worker's
    tasks and has none of its forbidden flags. Jobs scheduled for later, such
    as a failed job waiting for its retry, do not count. Raises `TimeoutError`
    naming the jobs left when they are still there after ``timeout`` seconds,
    which also interrupts a task that hangs.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        remaining = deadline - loop.time()
        try:
            async with asyncio.timeout(max(remaining, 0)):
                await worker.run_once()
        except TimeoutError:
            pass
        left = await _runnable_jobs(worker)
        if not left:
            return
        if loop.time() >= deadline:
            raise TimeoutError(_describe_jobs_left(worker, left, timeout))
        await asyncio.sleep(min(worker.poll_interval, max(deadline - loop.time(), 0)))


@pytest.fixture
def gw_run_until_idle() -> RunUntilIdle:
    """The `run_until_idle` function: ``await gw_run_until_idle(worker, timeout=30.0)``."""
    return run_until_idle


async def _runnable_jobs(worker: Worker) -> list[tuple[int, str, int, int]]:
    # The worker's connection string and forbidden flags are not public; this module is part of gwcore.
    flags = await worker._current_forbidden_flags()
    statement = sql.SQL(_RUNNABLE_JOBS).format(schema=sql.Identifier(worker.schema))
    params = {"identifiers": list(worker.tasks), "forbidden_flags": flags}
    async with await psycopg.AsyncConnection.connect(worker._conninfo, autocommit=True) as conn:
        cursor = await conn.execute(statement, params)
        return [(int(row[0]), row[1], row[2], row[3]) for row in await cursor.fetchall()]


def _describe_jobs_left(worker: Worker, jobs: list[tuple[int, str, int, int]], timeout: float) -> str:
    shown = ", ".join(
        f"job {job_id} ({identifier}, {attempts} of {max_attempts} attempts made)"
        for job_id, identifier, attempts, max_attempts in jobs[:10]
    )
    more = f" and {len(jobs) - 10} more" if len(jobs) > 10 else ""
    return (
        f"run_until_idle timed out after {timeout:g} s with {len(jobs)} job(s) left that worker "
        f"{worker.worker_id} could run: {shown}{more}. A task may hang, or a job's queue may stay "
        "locked; pass a larger timeout= if the jobs only need more time."
    )
