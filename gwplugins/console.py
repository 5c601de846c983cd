"""Console reporter: one log line per job outcome, with task, job id and duration.

Registered as ``console``; block it with
``create_plugin_manager(blocked=["console"])``. Lines go to the standard
``logging`` logger ``gwcore.console``, so the application's logging
configuration decides where they appear.
"""

from __future__ import annotations

import logging

from gwcore import hookimpl
from gwcore.contexts import (
    JobCompleteContext,
    JobFailContext,
    JobInterruptedContext,
    JobPermanentlyFailContext,
)

logger = logging.getLogger("gwcore.console")


def _first_line(error: BaseException) -> str:
    text = f"{type(error).__name__}: {error}"
    return text.splitlines()[0] if text else type(error).__name__


@hookimpl
def gw_job_complete(ctx: JobCompleteContext) -> None:
    logger.info("completed %s job %d in %.1f ms", ctx.job.task_identifier, ctx.job.id, ctx.duration * 1000)


@hookimpl
def gw_job_fail(ctx: JobFailContext) -> None:
    if not ctx.will_retry:
        return  # gw_job_permanently_fail reports the last attempt
    logger.warning(
        "failed %s job %d (attempt %d of %d), retrying at %s: %s",
        ctx.job.task_identifier,
        ctx.job.id,
        ctx.job.attempts,
        ctx.job.max_attempts,
        ctx.job.run_at.isoformat(timespec="seconds"),
        _first_line(ctx.error),
    )


@hookimpl
def gw_job_permanently_fail(ctx: JobPermanentlyFailContext) -> None:
    logger.error(
        "permanently failed %s job %d after %d attempt(s): %s",
        ctx.job.task_identifier,
        ctx.job.id,
        ctx.job.attempts,
        _first_line(ctx.error),
    )


@hookimpl
def gw_job_interrupted(ctx: JobInterruptedContext) -> None:
    logger.warning(
        "interrupted %s job %d (%s); handed it back to run again",
        ctx.job.task_identifier,
        ctx.job.id,
        ctx.reason,
    )
