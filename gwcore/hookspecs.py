"""Hook specifications: every point in a job's and a worker's life that a plugin can observe or change.

Each hook takes one argument, ``ctx``, a frozen dataclass from `gwcore.contexts`,
except the configuration hooks at the end, which take ``parser`` or ``config``.
A hook implementation may be a plain function or an ``async def`` coroutine
function: the core awaits whatever an implementation returns when it is
awaitable, so both work for every hook.

There are two kinds of hooks:

- Observers receive a notice that something happened. Their return value is ignored,
  and an exception they raise is logged with the plugin's name and otherwise
  ignored, so a broken observer never affects a job or the other plugins.
- Interceptors can change what happens next. They run as a chain in pluggy's
  order (``tryfirst``/``trylast`` honoured). Returning ``None`` or
  ``HookResult.CONTINUE`` passes to the next implementation. Returning
  ``HookResult.SKIP`` or ``HookResult.fail(reason)`` ends the chain with that
  result.

Mark implementations with `gwcore.hookimpl`; functions named ``gw_*`` are also
accepted unmarked. An implementation may take ``ctx`` or no argument at all.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from gwcore.config import Config, OptionParser
    from gwcore.contexts import (
        AfterJobRunContext,
        BeforeJobRunContext,
        BeforeJobScheduleContext,
        JobCompleteContext,
        JobFailContext,
        JobFetchContext,
        JobInterruptedContext,
        JobPermanentlyFailContext,
        JobStartContext,
        LocalQueueGetJobsCompleteContext,
        LocalQueueInitContext,
        LocalQueueRefetchDelayAbortContext,
        LocalQueueRefetchDelayExpiredContext,
        LocalQueueRefetchDelayStartContext,
        LocalQueueReturnJobsContext,
        LocalQueueSetModeContext,
        WorkerInitContext,
        WorkerShutdownContext,
        WorkerStartContext,
    )

PROJECT_NAME = "gwcore"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


# ---------------------------------------------------------------------------
# Worker lifecycle
# ---------------------------------------------------------------------------


@hookspec
def gw_worker_init(ctx: WorkerInitContext) -> None:
    """Observer. Fires each time a `Worker` starts to run, before it connects.

    ``ctx.database`` describes the connection (the password masked),
    ``ctx.schema`` is the graphile-worker schema and ``ctx.concurrency`` the
    number of jobs the worker runs at once. The return value is ignored.
    """


@hookspec
def gw_worker_start(ctx: WorkerStartContext) -> None:
    """Observer. Fires when the worker has migrated the schema and is about to fetch jobs.

    ``ctx.worker_id`` is the id written to ``locked_by`` of the jobs it takes,
    ``ctx.extensions`` the shared application state that tasks receive, and
    ``ctx.worker`` the running `Worker`, whose ``pool`` and ``schema`` a plugin
    may use for queries of its own. The return value is ignored.
    """


@hookspec
def gw_worker_shutdown(ctx: WorkerShutdownContext) -> None:
    """Observer. Fires once when the worker has stopped, after every job was completed or handed back.

    ``ctx.reason`` is ``"signal"`` (SIGINT or SIGTERM), ``"graceful"`` (`Worker.stop`
    or `Worker.run_once` running out of jobs) or ``"error"`` (a fatal error, in
    ``ctx.error``). The database pool is still open. It fires only after
    ``gw_worker_start``: when connecting or migrating fails, the run raises
    without it. The return value is ignored.
    """


# ---------------------------------------------------------------------------
# Running a job, in the order the hooks fire
# ---------------------------------------------------------------------------


@hookspec
def gw_job_fetch(ctx: JobFetchContext) -> None:
    """Observer. Fires when the worker has locked ``ctx.job`` for itself, before anything runs.

    ``ctx.job.attempts`` already counts this attempt. The return value is ignored.
    """


@hookspec(firstresult=True)
def gw_before_job_run(ctx: BeforeJobRunContext) -> Any:
    """Interceptor. Fires before the task is called with ``ctx.payload``.

    Return ``None`` or ``HookResult.CONTINUE`` to let the job run,
    ``HookResult.SKIP`` to remove the job as done without calling the task
    (``gw_job_complete`` fires), or ``HookResult.fail(reason)`` to fail the job
    without calling the task (the normal failure path runs, with retries). An
    exception raised here fails the job with that exception.

    Implementations run in the job's own asyncio task, so a context variable
    set here (a tracing span, fields for log records) is visible to the task
    and to ``gw_after_job_run``. Reset it there.
    """


@hookspec
def gw_job_start(ctx: JobStartContext) -> None:
    """Observer. Fires right before the task is called. The return value is ignored."""


@hookspec(firstresult=True)
def gw_after_job_run(ctx: AfterJobRunContext) -> Any:
    """Interceptor. Fires after the task returned or raised, before the outcome is written.

    ``ctx.result`` contains the task's return value or its exception, and
    ``ctx.duration`` the seconds the task ran. Return ``None`` or
    ``HookResult.CONTINUE`` to keep the outcome, ``HookResult.SKIP`` to mark
    the job done even if the task raised, or ``HookResult.fail(reason)`` to
    fail the job even if the task succeeded. An exception raised here fails
    the job with that exception.
    """


@hookspec
def gw_job_complete(ctx: JobCompleteContext) -> None:
    """Observer. Fires after the job's row was deleted as done.

    ``ctx.duration`` is the seconds from the start of the task (or of the
    ``gw_before_job_run`` chain, for a skipped job) to the outcome. The return
    value is ignored.
    """


@hookspec
def gw_job_fail(ctx: JobFailContext) -> None:
    """Observer. Fires after a failed attempt was written to the job's row.

    ``ctx.error`` is the exception, ``ctx.will_retry`` is false when this was
    the last allowed attempt (``gw_job_permanently_fail`` fires next) and
    ``ctx.job.run_at`` is when the next attempt may run. The return value is ignored.
    """


@hookspec
def gw_job_permanently_fail(ctx: JobPermanentlyFailContext) -> None:
    """Observer. Fires after the last allowed attempt of a job failed.

    The row stays in the table with ``attempts = max_attempts`` until an
    operator removes or reschedules it. The return value is ignored.
    """


@hookspec
def gw_job_interrupted(ctx: JobInterruptedContext) -> None:
    """Observer. Fires when shutdown stopped a running job and handed it back unlocked.

    The attempt that was interrupted is not counted, so the job runs again
    later with the attempts it had. ``ctx.reason`` is the cause (``"shutdown"``).
    The return value is ignored.
    """


# ---------------------------------------------------------------------------
# Local queue (only with the worker's local_queue option)
# ---------------------------------------------------------------------------


@hookspec
def gw_local_queue_init(ctx: LocalQueueInitContext) -> None:
    """Observer. Fires when a worker with ``local_queue`` creates its local queue, before the first fetch.

    ``ctx.worker_id`` is the worker's id. The return value is ignored.
    """


@hookspec
def gw_local_queue_set_mode(ctx: LocalQueueSetModeContext) -> None:
    """Observer. Fires on every change of the local queue's mode, in the order the changes happen.

    ``ctx.old_mode`` and ``ctx.new_mode`` are `LocalQueueMode` values. In
    ``STARTING`` nothing was fetched yet, and in ``POLLING`` a batch fetch runs.
    ``WAITING`` has jobs cached for the slots, or none and waits for work.
    ``TTL_EXPIRED`` follows cached jobs that outlived ``ttl`` and were handed
    back, and ``RELEASED`` means the worker is stopping. The return value is ignored.
    """


@hookspec
def gw_local_queue_get_jobs_complete(ctx: LocalQueueGetJobsCompleteContext) -> None:
    """Observer. Fires after each batch fetch, with ``ctx.jobs_count`` jobs now locked by the worker.

    A fetch that found nothing fires it with 0. The return value is ignored.
    """


@hookspec
def gw_local_queue_return_jobs(ctx: LocalQueueReturnJobsContext) -> None:
    """Observer. Fires after cached jobs were handed back unlocked without running.

    That happens on ``ttl`` expiry, at shutdown, and when a slot takes a
    cached job whose flag became forbidden after the fetch. ``ctx.jobs_count``
    jobs got their attempt back and may run on any worker. The return value
    is ignored.
    """


@hookspec
def gw_local_queue_refetch_delay_start(ctx: LocalQueueRefetchDelayStartContext) -> None:
    """Observer. Fires when a fetch returned at most ``ctx.threshold`` jobs, so the next one waits.

    ``ctx.duration`` is the jittered pause in seconds, and ``ctx.abort_threshold``
    the number of ``jobs:insert`` notifications that ends it early. The return
    value is ignored.
    """


@hookspec
def gw_local_queue_refetch_delay_abort(ctx: LocalQueueRefetchDelayAbortContext) -> None:
    """Observer. Fires when ``ctx.count`` notifications reached ``ctx.abort_threshold`` and ended the pause.

    The local queue fetches right after. The return value is ignored.
    """


@hookspec
def gw_local_queue_refetch_delay_expired(ctx: LocalQueueRefetchDelayExpiredContext) -> None:
    """Observer. Fires when the refetch pause ran its full duration. The return value is ignored."""


# ---------------------------------------------------------------------------
# Adding jobs
# ---------------------------------------------------------------------------


@hookspec(firstresult=True)
def gw_before_job_schedule(ctx: BeforeJobScheduleContext) -> Any:
    """Interceptor. Fires for every job added from Python (the API, a task's ``add_job`` and the CLI).

    ``ctx.identifier`` names the task, ``ctx.payload`` is the payload as the
    previous implementation left it and ``ctx.spec`` contains the other options.
    Return ``None`` to keep the payload, ``JobScheduleResult.continue_with(payload)``
    to replace it for the next implementation and the insert,
    ``JobScheduleResult.SKIP`` to insert nothing (``add_job`` returns ``None``;
    ``add_jobs`` drops only that job), or ``JobScheduleResult.fail(reason)``
    to raise `JobScheduleError` and insert nothing of the batch. An exception
    raised here propagates to the caller of ``add_job``.

    Jobs added in SQL with ``graphile_worker.add_job`` do not pass through this hook.
    """


# ---------------------------------------------------------------------------
# Configuration
#
# These hooks take ``parser`` or ``config`` in place of ``ctx``, as pytest's
# hooks of the same names do. They fire only in the ``gw`` command (and in
# `gwcore.config.load_config` for gw_addoption), not in a `Worker` created
# from Python, which receives its settings as arguments.
# ---------------------------------------------------------------------------


@hookspec
def gw_addoption(parser: OptionParser) -> None:
    """Declare a plugin's own options with ``parser.addoption("--name", type=..., default=..., help=...)``.

    Each option is a flag of every ``gw`` command but ``gw plugins``, a key of ``[tool.gw]`` in
    ``pyproject.toml`` (``--slowlog-threshold`` becomes ``slowlog_threshold``)
    and an environment variable (``GW_SLOWLOG_THRESHOLD``). Read the resolved
    value in ``gw_configure`` with ``config.get("slowlog_threshold")``. It runs
    before any event loop exists, so it must be a plain ``def``: an
    ``async def`` implementation is rejected with `PluginError`.
    """


@hookspec
def gw_configure(config: Config) -> None:
    """Fires once the configuration is resolved, before the command (such as ``gw worker``) starts.

    ``config`` is the `gwcore.config.Config` with every option's value and
    source. An exception raised here stops the command; raise
    `ConfigurationError` for a bad setting, and ``gw`` exits with status 2.
    """


@hookspec
def gw_unconfigure(config: Config) -> None:
    """Observer. Fires when the command ends, also after an error (one raised in ``gw_configure`` included).

    Exceptions raised here are logged and otherwise ignored. The return value is ignored.
    """
