"""The worker: fetch a job, run its task, write the outcome, and shut down without losing a job.

A worker runs ``concurrency`` slots. Each slot fetches one job with one
statement (``FOR UPDATE SKIP LOCKED``), runs it in an asyncio task of its own
and fetches again. An idle slot waits for a ``jobs:insert`` notification or
the poll interval, whichever comes first.

Shutdown stops fetching, lets running jobs finish within the grace period,
then sets their abort signal and cancels them. A cancelled job is handed back
unlocked without counting the attempt. Last of all, one statement unlocks
anything still locked by this worker id, except jobs whose outcome is known
but could not be written (those stay locked for the stale-lock sweep rather
than run twice).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import math
import os
import secrets
import signal
import threading
import time
import traceback
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from gwcore.batching import OutcomeBatcher
from gwcore.contexts import (
    AfterJobRunContext,
    BeforeJobRunContext,
    DatabaseInfo,
    JobCompleteContext,
    JobFailContext,
    JobFetchContext,
    JobInterruptedContext,
    JobPermanentlyFailContext,
    JobStartContext,
    ShutdownReason,
    TaskResult,
    WorkerInitContext,
    WorkerShutdownContext,
    WorkerStartContext,
)
from gwcore.errors import ConfigurationError, GwError
from gwcore.job import Job
from gwcore.listener import JobListener, retry_delay
from gwcore.local_queue import LocalQueue, LocalQueueOptions
from gwcore.plugins import PluginManager, create_plugin_manager
from gwcore.queries import fetch_window, queries_for
from gwcore.results import HookResult, describe_reason
from gwcore.task_context import JobContext
from gwcore.tasks import TaskFunction, TaskRegistry, default_registry, is_async_task

logger = logging.getLogger("gwcore.worker")

DEFAULT_SCHEMA = "graphile_worker"
ForbiddenFlags = Sequence[str] | Callable[[], Sequence[str] | Awaitable[Sequence[str]]] | None

# How long shutdown keeps retrying the outcome of a finished job when the database is unreachable.
OUTCOME_WRITE_DEADLINE = 30.0

# The fetch and outcome statements are planned on every execution rather than prepared, because
# a job table can go from empty to a million rows within minutes. A prepared statement's generic
# plan, made while the table was empty, stayed in use after it filled: batch deletes of 1,000 ids
# ran as sequential scans, and fetches took seconds on 100,000 rows.
PREPARE_JOB_STATEMENTS = False


class JobFailure(Exception):
    """A job failed because a hook returned a failure, not because its task raised."""


@dataclass
class _RunningJob:
    job: Job
    abort_signal: threading.Event = field(default_factory=threading.Event)
    # The executor call of a plain def task, or the job's own asyncio task while it awaits an
    # async def task: what shutdown cancels to interrupt the task.
    task_call: asyncio.Future[Any] | None = None
    job_task: asyncio.Task[Any] | None = None
    task_finished: bool = False
    interrupted: bool = False
    # Done when the slot may take its next job: the job ended, or its outcome waits for a batched write.
    slot_free: asyncio.Future[None] | None = None

    def free_slot(self) -> None:
        if self.slot_free is not None and not self.slot_free.done():
            self.slot_free.set_result(None)


class Worker:
    """Runs jobs from graphile-worker's tables.

    ``connection`` is a connection string or an `AsyncConnectionPool`
    (default: the ``DATABASE_URL`` environment variable). ``tasks`` maps task
    identifiers to functions (default: the tasks registered with
    `gwcore.task`). ``plugins`` are registered after the built-ins and the
    installed plugins; pass ``plugin_manager`` instead to control all of them.
    """

    def __init__(
        self,
        connection: str | AsyncConnectionPool | None = None,
        *,
        tasks: Mapping[str, TaskFunction] | None = None,
        concurrency: int = 1,
        poll_interval: float = 2.0,
        schema: str = DEFAULT_SCHEMA,
        plugins: Iterable[object] = (),
        plugin_manager: PluginManager | None = None,
        forbidden_flags: ForbiddenFlags = None,
        grace_period: float = 5.0,
        complete_job_batch_delay: float | None = None,
        fail_job_batch_delay: float | None = None,
        local_queue: LocalQueueOptions | Mapping[str, Any] | None = None,
        extensions: Mapping[str, Any] | None = None,
        worker_id: str | None = None,
        listen: bool = True,
        migrate: bool = True,
        handle_signals: bool = False,
    ) -> None:
        self._conninfo, self._given_pool = _resolve_connection(connection)
        _check_number("concurrency", concurrency, minimum=1, integer=True)
        _check_number("poll_interval", poll_interval, minimum=0, exclusive=True)
        _check_number("grace_period", grace_period, minimum=0)
        for name, delay in (
            ("complete_job_batch_delay", complete_job_batch_delay),
            ("fail_job_batch_delay", fail_job_batch_delay),
        ):
            if delay is not None:
                _check_number(name, delay, minimum=0)
        if tasks is not None and not isinstance(tasks, Mapping):
            raise ConfigurationError(
                f"tasks is invalid: {tasks!r} is of type {type(tasks).__name__}; pass a mapping "
                "from task identifier to function, such as tasks={'send_email': send_email}."
            )
        registry = TaskRegistry(tasks if tasks is not None else default_registry)
        if not registry:
            raise ConfigurationError(
                "the worker has no task: register one with @gwcore.task('name') or pass "
                "tasks={'name': function} to Worker (with gw worker: --tasks MODULE_OR_DIR)."
            )

        self.tasks = registry
        self.concurrency = concurrency
        self.poll_interval = float(poll_interval)
        # Off (None) by default: each slot fetches its own job.
        self.local_queue_options: LocalQueueOptions | None = None
        if local_queue is not None:
            self.local_queue_options = LocalQueueOptions.parse(local_queue, poll_interval=self.poll_interval)
        self.grace_period = float(grace_period)
        # Off (None) by default: each outcome is written on its own as soon as it is known.
        self._complete_batcher: OutcomeBatcher[int] | None = None
        if complete_job_batch_delay is not None:
            self._complete_batcher = OutcomeBatcher(self._write_completion_batch, complete_job_batch_delay)
        self._fail_batcher: OutcomeBatcher[tuple[int, str]] | None = None
        if fail_job_batch_delay is not None:
            self._fail_batcher = OutcomeBatcher(self._write_failures, fail_job_batch_delay)
        self.schema = schema
        self.extensions: Mapping[str, Any] = extensions or {}
        self.worker_id = worker_id or f"worker-{secrets.token_hex(10)}"
        self.plugins = plugin_manager or create_plugin_manager(plugins)
        self.database = DatabaseInfo.from_conninfo(self._conninfo)
        self._forbidden_flags = forbidden_flags
        self._listen = listen
        self._migrate = migrate
        self._handle_signals = handle_signals
        self._queries = queries_for(schema)

        self._pool: AsyncConnectionPool | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._listener: JobListener | None = None
        self._local_queue: LocalQueue | None = None
        self._task_names: dict[int, str] = {}
        self._async_tasks: dict[str, bool] = {}  # by task identifier, filled when a run starts
        self._task_ids: list[int] = []
        self._running: dict[int, _RunningJob] = {}
        self._job_tasks: set[asyncio.Task[None]] = set()
        self._unwritten_outcomes: set[int] = set()
        self._idle_slots: deque[asyncio.Future[None]] = deque()
        self._missed_wakes = 0
        self._stopping = False
        self._stop_requested: asyncio.Event | None = None
        self._shutdown_reason: ShutdownReason = "graceful"
        self._immediate = False

    # -- public API ----------------------------------------------------------

    @property
    def pool(self) -> AsyncConnectionPool:
        """The worker's connection pool; only available while the worker runs."""
        if self._pool is None:
            raise GwError("the worker is not running, so it has no connection pool")
        return self._pool

    async def run(self) -> None:
        """Run jobs until `stop` is called or, with ``handle_signals``, SIGINT or SIGTERM arrives."""
        await self._run(until_idle=False)

    async def run_once(self) -> None:
        """Run jobs until no runnable job is left, then shut down."""
        await self._run(until_idle=True)

    def stop(self, *, immediate: bool = False, reason: ShutdownReason = "graceful") -> None:
        """Ask the worker to shut down; ``immediate`` skips the grace period.

        Safe to call from a signal handler or another task on the worker's loop.
        """
        if self._stopping and immediate:
            self._immediate = True
        if not self._stopping:
            self._shutdown_reason = reason
        self._stopping = True
        self._immediate = self._immediate or immediate
        for batcher in (self._complete_batcher, self._fail_batcher):
            if batcher is not None:
                batcher.write_at_once()
        for waiter in self._idle_slots:
            if not waiter.done():
                waiter.set_result(None)
        if self._local_queue is not None:
            self._local_queue.release()
        if self._stop_requested is not None:
            self._stop_requested.set()

    # -- the run -------------------------------------------------------------

    async def _run(self, *, until_idle: bool) -> None:
        self._stopping = False
        self._immediate = False
        for batcher in (self._complete_batcher, self._fail_batcher):
            if batcher is not None:
                batcher.resume()
        self._stop_requested = asyncio.Event()
        await self.plugins.notify(
            "gw_worker_init",
            WorkerInitContext(database=self.database, schema=self.schema, concurrency=self.concurrency),
        )

        await self._open()
        error: BaseException | None = None
        try:
            self._install_signal_handlers()
            await self.plugins.notify(
                "gw_worker_start",
                WorkerStartContext(
                    database=self.database,
                    worker_id=self.worker_id,
                    extensions=self.extensions,
                    worker=self,
                ),
            )
            logger.info(
                "worker %s started: %d slot(s), %d task(s), schema %s",
                self.worker_id,
                self.concurrency,
                len(self.tasks),
                self.schema,
            )
            await self._work(until_idle)
        except BaseException as raised:
            error = raised
            self._stopping = True
            self._immediate = True
            raise
        finally:
            await self._shut_down(error)

    async def _open(self) -> None:
        if self._given_pool is not None:
            self._pool = self._given_pool
        else:
            pool = AsyncConnectionPool(
                self._conninfo,
                min_size=1,
                max_size=self.concurrency + 2,
                kwargs={"autocommit": True},
                open=False,
                name=f"gwcore-{self.worker_id}",
            )
            try:
                await pool.open(wait=True, timeout=15)
            except PoolTimeout as error:
                await pool.close()
                raise GwError(
                    f"could not connect to the database {self.database.url} within 15 s; "
                    "check the connection string and that PostgreSQL is running."
                ) from error
            self._pool = pool

        try:
            if self._migrate:
                from gwcore.migrate import migrate

                async with self._pool.connection() as conn:
                    await migrate(conn, self.schema)
            await self._load_task_ids()
        except BaseException:
            await self._close_pool()
            raise

        self._executor = ThreadPoolExecutor(self.concurrency, thread_name_prefix="gwcore-task")
        if self._listen:
            self._listener = JobListener(
                self._conninfo,
                on_jobs=self._wake,
                on_connect=self._wake_all,
                connect_kwargs=self._listener_connect_kwargs(),
            )
            self._listener.start()

    def _listener_connect_kwargs(self) -> dict[str, Any]:
        """Return the connection options of a given pool (a password, say) for the LISTEN connection."""
        options = self._given_pool.kwargs if self._given_pool is not None else None
        if not isinstance(options, dict):
            return {}  # NOTE: options given as a callable are not passed on to the LISTEN connection.
        return {key: value for key, value in options.items() if key != "autocommit"}

    async def _load_task_ids(self) -> None:
        identifiers = list(self.tasks)
        async with self.pool.connection() as conn:
            await conn.execute(self._queries.insert_missing_tasks, {"identifiers": identifiers})
            cursor = await conn.execute(self._queries.task_ids, {"identifiers": identifiers})
            rows = await cursor.fetchall()
        self._task_names = {int(task_id): identifier for task_id, identifier in rows}
        self._async_tasks = {identifier: is_async_task(self.tasks[identifier]) for identifier in identifiers}
        self._task_ids = sorted(self._task_names)

    async def _work(self, until_idle: bool) -> None:
        """Run the slots until a stop is requested, a slot fails, or (``until_idle``) all slots are idle."""
        assert self._stop_requested is not None
        watched: set[asyncio.Task[Any]] = set()
        if self.local_queue_options is not None:
            self._local_queue = LocalQueue(
                self.local_queue_options,
                worker_id=self.worker_id,
                concurrency=self.concurrency,
                poll_interval=self.poll_interval,
                plugins=self.plugins,
                fetch_jobs=self._fetch_batch,
                return_jobs=self._return_jobs,
                until_idle=until_idle,
            )
            await self._local_queue.start()
            watched.add(self._local_queue.task)  # a failure of the queue stops the worker

        slots = {
            asyncio.create_task(self._slot(until_idle), name=f"gwcore-slot-{index}")
            for index in range(self.concurrency)
        }
        stop_waiter = asyncio.create_task(self._stop_requested.wait())
        pending: set[asyncio.Task[Any]] = slots | watched
        try:
            while pending and not stop_waiter.done():
                done, pending = await asyncio.wait(
                    pending | {stop_waiter}, return_when=asyncio.FIRST_COMPLETED
                )
                pending.discard(stop_waiter)
                for slot in done - {stop_waiter}:
                    failure = slot.exception()
                    if failure is not None:
                        raise failure
                if not pending & slots:
                    break  # every slot ended (run_once ran out of jobs)
        finally:
            stop_waiter.cancel()
            for slot in slots:
                slot.cancel()
            await asyncio.gather(*slots, stop_waiter, return_exceptions=True)

    async def _slot(self, until_idle: bool) -> None:
        failures = 0
        while not self._stopping:
            if self._local_queue is not None:
                job = await self._local_queue.get_job()
                if job is None:
                    return  # released, or (until_idle) a fetch found nothing
                # Checked here, not in the coroutine, so that a job without flags costs no coroutine.
                if job.flags and self._forbidden_flags is not None and await self._flag_became_forbidden(job):
                    logger.info("job %d has a flag forbidden since it was fetched; handing it back", job.id)
                    await self._local_queue.return_job(job)
                    continue
                await self._start_job(job)
                continue

            try:
                job = await self._fetch()
            except (psycopg.Error, PoolTimeout) as error:
                delay = min(retry_delay(failures), self.poll_interval * 5)
                failures += 1
                logger.error("fetching a job failed (%s); retrying in %.1f s", error, delay)
                await self._wait_for_work(delay)
                continue
            failures = 0

            if job is None:
                if until_idle:
                    return
                await self._wait_for_work(self.poll_interval)
                continue

            await self._start_job(job)

    async def _start_job(self, job: Job) -> None:
        """Run ``job`` in an asyncio task of its own; return when the slot may take its next job.

        The slot waits on a future of its own rather than on the job's task, so
        that cancelling the slot never cancels the job. With batched writes the
        future is done as soon as the outcome is queued, so the slot takes its
        next job while the outcome waits for its batch.
        """
        running = _RunningJob(job)
        running.slot_free = asyncio.get_running_loop().create_future()
        job_task = asyncio.create_task(self._process(running), name=f"gwcore-job-{job.id}")
        self._job_tasks.add(job_task)
        job_task.add_done_callback(self._job_tasks.discard)
        job_task.add_done_callback(lambda _: running.free_slot())
        await running.slot_free

    # -- waking idle slots ---------------------------------------------------

    async def _wait_for_work(self, delay: float) -> None:
        if self._stopping:
            return
        if self._missed_wakes:
            # A notification arrived while this slot was busy; its job may have been
            # committed after this slot's last fetch began, so fetch again at once.
            self._missed_wakes -= 1
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._idle_slots.append(waiter)
        try:
            await asyncio.wait_for(waiter, delay)
        except TimeoutError:
            pass
        finally:
            if waiter in self._idle_slots:
                self._idle_slots.remove(waiter)

    def _wake(self, count: int) -> None:
        """Wake up to ``count`` idle slots; remember the rest for slots that are busy now."""
        if self._local_queue is not None:
            self._local_queue.nudge(count)
            return
        woken = 0
        while woken < count and self._idle_slots:
            waiter = self._idle_slots.popleft()
            if not waiter.done():
                waiter.set_result(None)
                woken += 1
        self._missed_wakes = min(self.concurrency, self._missed_wakes + count - woken)

    def _wake_all(self) -> None:
        self._wake(self.concurrency)

    # -- fetch, run, complete, fail ------------------------------------------

    async def _fetch(self) -> Job | None:
        """Lock the next runnable job for this slot, or return None when none is ready."""
        jobs = await self._fetch_batch(1)
        return jobs[0] if jobs else None

    async def _fetch_batch(self, size: int) -> list[Job]:
        """Lock up to ``size`` jobs, at most one per named queue, and return them in fetch order."""
        params: dict[str, Any] = {
            "worker_id": self.worker_id,
            "task_ids": self._task_ids,
            "size": size,
            "window": fetch_window(size),
        }
        statement = self._queries.fetch_jobs
        flags = await self._current_forbidden_flags()
        if flags:
            statement = self._queries.fetch_jobs_with_flags
            params["forbidden_flags"] = flags

        async with self.pool.connection() as conn:
            async with conn.cursor(row_factory=dict_row) as cursor:
                await cursor.execute(statement, params, prepare=PREPARE_JOB_STATEMENTS)
                rows = await cursor.fetchall()
        jobs = [
            Job.from_row(row, task_identifier=self._task_names[row["task_id"]], queue_name=row["queue_name"])
            for row in rows
        ]
        if len(jobs) > 1:
            jobs.sort(key=lambda job: (job.priority, job.run_at, job.id))
        return jobs

    async def _flag_became_forbidden(self, job: Job) -> bool:
        """Tell whether a cached job carries a flag that became forbidden after its batch was fetched."""
        forbidden = await self._current_forbidden_flags()
        return any(flag in (job.flags or ()) for flag in forbidden)

    async def _current_forbidden_flags(self) -> list[str]:
        flags = self._forbidden_flags
        if flags is None:
            return []
        if callable(flags):
            value = flags()
            if isinstance(value, Awaitable):
                value = await value
            return list(value)
        return list(flags)

    async def _process(self, running: _RunningJob) -> None:
        job = running.job
        self._running[job.id] = running
        try:
            await self._process_job(running)
        finally:
            del self._running[job.id]

    async def _process_job(self, running: _RunningJob) -> None:
        job = running.job
        # Each hook's context is built only when a plugin implements the hook: this runs per job.
        plugins = self.plugins
        if plugins.has_calls("gw_job_fetch"):
            await plugins.notify("gw_job_fetch", JobFetchContext(job=job, worker_id=self.worker_id))
        started = time.monotonic()

        try:
            decision = HookResult.CONTINUE
            if plugins.has_calls("gw_before_job_run"):
                decision = await plugins.intercept(
                    "gw_before_job_run",
                    BeforeJobRunContext(job=job, worker_id=self.worker_id, payload=job.payload),
                )
        except Exception as error:
            await self._record_failure(running, error)
            return
        if decision.is_skip:
            await self._record_success(running, time.monotonic() - started)
            return
        if decision.is_fail:
            await self._record_failure(running, _failure_from(decision))
            return

        if plugins.has_calls("gw_job_start"):
            await plugins.notify("gw_job_start", JobStartContext(job=job, worker_id=self.worker_id))
        started = time.monotonic()
        result = await self._call_task(running)
        duration = time.monotonic() - started
        if running.interrupted:
            await self._hand_back(running)
            return

        try:
            verdict = HookResult.CONTINUE
            if plugins.has_calls("gw_after_job_run"):
                verdict = await plugins.intercept(
                    "gw_after_job_run",
                    AfterJobRunContext(job=job, worker_id=self.worker_id, result=result, duration=duration),
                )
        except Exception as error:
            await self._record_failure(running, error)
            return
        if verdict.is_fail:
            await self._record_failure(running, _failure_from(verdict))
        elif verdict.is_skip or result.error is None:
            await self._record_success(running, duration)
        else:
            await self._record_failure(running, result.error)

    async def _call_task(self, running: _RunningJob) -> TaskResult:
        job = running.job
        function = self.tasks[job.task_identifier]
        if running.interrupted:
            return TaskResult(error=asyncio.CancelledError("shutdown before the task started"))
        job_context = JobContext(job, self, running.abort_signal)
        current = asyncio.current_task()
        try:
            is_async = self._async_tasks.get(job.task_identifier)
            if is_async is None:
                is_async = is_async_task(function)
            if is_async:
                # Awaited in the job's own task: a task of its own would cost a task step per job.
                # To interrupt it, shutdown cancels the job's task (see _interrupt_jobs).
                running.job_task = current
                value = await function(job.payload, job_context)
            else:
                context = contextvars.copy_context()
                running.task_call = asyncio.get_running_loop().run_in_executor(
                    self._executor, context.run, function, job.payload, job_context
                )
                value = await running.task_call
        except asyncio.CancelledError as error:
            if not running.interrupted:
                raise  # the job's own asyncio task is being cancelled, not by shutdown
            return TaskResult(error=error)
        except Exception as error:
            return TaskResult(error=error)
        finally:
            running.task_finished = True
            if running.interrupted and running.job_task is not None and current is not None:
                while current.cancelling():
                    current.uncancel()  # the cancellation was shutdown's, and it ends here
        return TaskResult(value=value)

    async def _record_success(self, running: _RunningJob, duration: float) -> None:
        job = running.job
        if self._complete_batcher is not None:
            running.free_slot()
            written = await self._complete_batcher.submit(job.id, job.id)
        else:
            written = job.id in await self._write_completions([job.id])
        if written and self.plugins.has_calls("gw_job_complete"):
            await self.plugins.notify(
                "gw_job_complete",
                JobCompleteContext(job=job, worker_id=self.worker_id, duration=duration),
            )

    async def _record_failure(self, running: _RunningJob, error: BaseException) -> None:
        job = running.job
        if self._fail_batcher is not None:
            running.free_slot()
            row = await self._fail_batcher.submit(job.id, (job.id, format_error(error)))
        else:
            row = (await self._write_failures([(job.id, format_error(error))])).get(job.id)
        if not row:
            return
        failed = Job.from_row(row, task_identifier=job.task_identifier, queue_name=job.queue_name)
        will_retry = failed.attempts < failed.max_attempts
        await self.plugins.notify(
            "gw_job_fail",
            JobFailContext(job=failed, worker_id=self.worker_id, error=error, will_retry=will_retry),
        )
        if not will_retry:
            await self.plugins.notify(
                "gw_job_permanently_fail",
                JobPermanentlyFailContext(job=failed, worker_id=self.worker_id, error=error),
            )

    async def _write_outcome(
        self,
        job_ids: Sequence[int],
        statement: bytes,
        params: dict[str, Any],
        *,
        action: str = "writing the outcome of",
        keep_locked: bool = True,
    ) -> Any:
        """Run an outcome statement for ``job_ids``, retrying while the database is unreachable.

        Returns the statement's rows, or None when it was given up. While
        running, it retries until it succeeds. During shutdown it gives up
        after `OUTCOME_WRITE_DEADLINE` seconds. With ``keep_locked`` the jobs
        then stay locked, so that they are recovered rather than run twice;
        without it, the last unlock at shutdown tries them once more.
        """
        failures = 0
        deadline: float | None = None
        while True:
            try:
                async with self.pool.connection() as conn:
                    async with conn.cursor(row_factory=dict_row) as cursor:
                        await cursor.execute(statement, params, prepare=PREPARE_JOB_STATEMENTS)
                        return await cursor.fetchall()
            except (psycopg.Error, PoolTimeout) as error:
                if self._stopping and deadline is None:
                    deadline = time.monotonic() + OUTCOME_WRITE_DEADLINE
                if deadline is not None and time.monotonic() > deadline:
                    logger.error(
                        "%s job(s) %s failed for %.0f s (%s); giving up, so they stay locked by %s%s",
                        action,
                        _id_list(job_ids),
                        OUTCOME_WRITE_DEADLINE,
                        error,
                        self.worker_id,
                        " until the stale-lock sweep releases them"
                        if keep_locked
                        else " unless the last unlock at shutdown succeeds",
                    )
                    if keep_locked:
                        self._unwritten_outcomes.update(job_ids)
                    return None
                delay = retry_delay(failures)
                failures += 1
                logger.warning(
                    "%s job(s) %s failed (%s); retrying in %.1f s",
                    action,
                    _id_list(job_ids),
                    error,
                    delay,
                )
                await asyncio.sleep(delay)

    async def _write_completions(self, job_ids: Sequence[int]) -> set[int]:
        """Delete finished jobs in one statement; return the ids that were deleted."""
        params = {"job_ids": list(job_ids), "worker_id": self.worker_id}
        rows = await self._write_outcome(job_ids, self._queries.complete_jobs, params)
        written = {int(row["id"]) for row in rows or ()}
        self._warn_not_locked(job_ids, written, rows)
        return written

    async def _write_completion_batch(self, job_ids: Sequence[int]) -> dict[int, bool]:
        return dict.fromkeys(await self._write_completions(job_ids), True)

    async def _write_failures(self, failures: Sequence[tuple[int, str]]) -> dict[int, dict[str, Any]]:
        """Record failed attempts in one statement; return the updated rows by job id."""
        job_ids = [job_id for job_id, _ in failures]
        params = {
            "job_ids": job_ids,
            "errors": [error for _, error in failures],
            "worker_id": self.worker_id,
        }
        rows = await self._write_outcome(job_ids, self._queries.fail_jobs, params)
        written = {int(row["id"]): row for row in rows or ()}
        self._warn_not_locked(job_ids, set(written), rows)
        return written

    def _warn_not_locked(self, job_ids: Sequence[int], written: set[int], rows: Any) -> None:
        if rows is None:
            return  # given up, and logged as such
        missing = [job_id for job_id in job_ids if job_id not in written]
        if missing:
            logger.warning(
                "job(s) %s were no longer locked by worker %s, so their outcome was not written",
                _id_list(missing),
                self.worker_id,
            )

    async def _return_jobs(self, jobs: Sequence[Job]) -> int:
        """Hand back jobs that never ran, unlocked with their attempt given back; return how many.

        Retries like an outcome write. When it is given up at shutdown, the
        jobs stay locked until the last unlock of this worker's jobs.
        """
        job_ids = [job.id for job in jobs]
        params = {"job_ids": job_ids, "keys": [job.key for job in jobs], "worker_id": self.worker_id}
        rows = await self._write_outcome(
            job_ids, self._queries.return_jobs, params, action="handing back", keep_locked=False
        )
        if rows is None:
            return 0
        logger.debug("handed back job(s) %s unlocked", _id_list(job_ids))
        return len(rows)

    async def _hand_back(self, running: _RunningJob) -> None:
        job = running.job
        try:
            async with self.pool.connection() as conn:
                await conn.execute(
                    self._queries.return_jobs,
                    {"job_ids": [job.id], "keys": [job.key], "worker_id": self.worker_id},
                )
        except (psycopg.Error, PoolTimeout) as error:
            logger.error("handing back interrupted job %d failed: %s", job.id, error)
            return
        await self.plugins.notify(
            "gw_job_interrupted",
            JobInterruptedContext(job=job, worker_id=self.worker_id, reason="shutdown"),
        )

    # -- shutdown ------------------------------------------------------------

    def _install_signal_handlers(self) -> None:
        if not self._handle_signals or threading.current_thread() is not threading.main_thread():
            return
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, self._on_signal, signum)

    def _remove_signal_handlers(self) -> None:
        if not self._handle_signals or threading.current_thread() is not threading.main_thread():
            return
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)

    def _on_signal(self, signum: int) -> None:
        name = signal.Signals(signum).name
        if self._stopping:
            logger.warning("received %s again: shutting down at once", name)
            self.stop(immediate=True, reason="signal")
            self._interrupt_jobs()
            return
        logger.info(
            "received %s: finishing running jobs (grace period %.1f s); send it again to stop at once",
            name,
            self.grace_period,
        )
        self.stop(reason="signal")

    def _interrupt_jobs(self) -> None:
        """Set the abort signal of every job whose task has not finished, and cancel the task."""
        for running in list(self._running.values()):
            if running.task_finished:
                continue  # the task finished; its outcome is being written
            running.interrupted = True
            running.abort_signal.set()
            if running.task_call is not None:
                running.task_call.cancel()
            elif running.job_task is not None:
                running.job_task.cancel()

    async def _shut_down(self, error: BaseException | None) -> None:
        reason: ShutdownReason = (
            "error"
            if error is not None and not isinstance(error, asyncio.CancelledError)
            else self._shutdown_reason
        )
        try:
            if self._local_queue is not None:
                await self._local_queue.close()
                self._local_queue = None
            await self._finish_running_jobs()
            await self._flush_outcomes()
            await self._unlock_remaining()
            await self.plugins.notify(
                "gw_worker_shutdown",
                WorkerShutdownContext(
                    database=self.database,
                    worker_id=self.worker_id,
                    reason=reason,
                    error=error,
                    worker=self,
                ),
            )
        finally:
            self._remove_signal_handlers()
            if self._listener is not None:
                await self._listener.stop()
                self._listener = None
            if self._executor is not None:
                self._executor.shutdown(wait=False, cancel_futures=True)
                self._executor = None
            await self._close_pool()
            logger.info("worker %s stopped (%s)", self.worker_id, reason)

    async def _finish_running_jobs(self) -> None:
        if not self._job_tasks:
            return
        if not self._immediate and self.grace_period > 0:
            _, pending = await asyncio.wait(set(self._job_tasks), timeout=self.grace_period)
            if not pending:
                return
            logger.warning(
                "%d job(s) still running after the %.1f s grace period; interrupting them",
                len(pending),
                self.grace_period,
            )
        self._interrupt_jobs()
        await asyncio.wait(set(self._job_tasks), timeout=OUTCOME_WRITE_DEADLINE + 5)

    async def _flush_outcomes(self) -> None:
        """Write the outcomes still waiting in a batch, before the last unlock and the pool's close."""
        for batcher in (self._complete_batcher, self._fail_batcher):
            if batcher is not None:
                await batcher.flush()

    async def _unlock_remaining(self) -> None:
        if self._pool is None:
            return
        try:
            async with self._pool.connection(timeout=10) as conn:
                cursor = await conn.execute(
                    self._queries.unlock_worker,
                    {"worker_id": self.worker_id, "keep_locked": sorted(self._unwritten_outcomes)},
                )
                row = await cursor.fetchone()
        except (psycopg.Error, PoolTimeout) as error:
            logger.error(
                "unlocking the jobs of worker %s at shutdown failed: %s; they stay locked until "
                "the stale-lock sweep releases them",
                self.worker_id,
                error,
            )
            return
        if row and (row[0] or row[1]):
            logger.warning(
                "handed back %d job(s) and %d queue(s) still locked by %s at shutdown",
                row[0],
                row[1],
                self.worker_id,
            )

    async def _close_pool(self) -> None:
        if self._pool is not None and self._given_pool is None:
            await self._pool.close()
        self._pool = None


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------


def format_error(error: BaseException) -> str:
    """Format an exception for ``last_error``: type and message, then the traceback."""
    summary = f"{type(error).__name__}: {error}"
    trace = "".join(traceback.format_exception(error))
    return f"{summary}\n{trace}" if error.__traceback__ is not None else summary


def _failure_from(result: HookResult) -> BaseException:
    if isinstance(result.reason, BaseException):
        return result.reason
    return JobFailure(describe_reason(result.reason))


def _resolve_connection(
    connection: str | AsyncConnectionPool | None,
) -> tuple[str, AsyncConnectionPool | None]:
    if isinstance(connection, AsyncConnectionPool):
        if not isinstance(connection.conninfo, str):
            raise ConfigurationError(
                "connection is invalid: the pool's conninfo is a callable; gwcore needs a connection "
                "string to open its LISTEN connection, so create the pool with a string."
            )
        return connection.conninfo, connection
    if connection is None:
        connection = os.environ.get("DATABASE_URL")
        if not connection:
            raise ConfigurationError(
                "no database is configured: pass a connection string or pool to Worker, "
                "or set DATABASE_URL, for example postgresql://user:password@localhost:5432/mydb."
            )
    if not isinstance(connection, str):
        raise ConfigurationError(
            f"connection is invalid: {connection!r}; pass a connection string or an AsyncConnectionPool."
        )
    return connection, None


def _check_number(
    name: str, value: Any, *, minimum: float, integer: bool = False, exclusive: bool = False
) -> None:
    kind = "an integer" if integer else "a number"
    bound = f"> {minimum}" if exclusive else f">= {minimum}"
    valid_type = isinstance(value, int) if integer else isinstance(value, int | float)
    if isinstance(value, bool) or not valid_type or value != value or value in (math.inf, -math.inf):
        raise ConfigurationError(f"{name} is invalid: {value!r} is not {kind}; pass {kind} {bound}.")
    if value < minimum or (exclusive and value == minimum):
        raise ConfigurationError(f"{name} is invalid: {value!r}; it must be {bound}.")


def _id_list(job_ids: Sequence[int]) -> str:
    """Return job ids for a log line, shortened after the first ten."""
    shown = ", ".join(str(job_id) for job_id in job_ids[:10])
    return shown if len(job_ids) <= 10 else f"{shown} and {len(job_ids) - 10} more"
