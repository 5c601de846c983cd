"""gwcore plugin that logs a warning for every job that takes longer than a threshold.

Installed, it registers through the ``slowlog`` entry point of the
``gwcore.plugins`` group, so every worker and ``gw`` command runs it. For each
job that took longer than the threshold it logs one WARNING on the
``gwcore.slowlog`` logger::

    slow job send_email 42 took 1.204 s (threshold 1 s)

A failed attempt gets the same line with ``and failed (attempt N of M)``
appended. The threshold, in seconds (default 1.0), is the option
``--slowlog-threshold`` that the plugin adds through ``gw_addoption``, so
``gw`` also reads it as ``slowlog_threshold`` under ``[tool.gw]`` and as the
environment variable ``GW_SLOWLOG_THRESHOLD``. A `Worker` built in Python
fires no ``gw_configure``, so for it the module reads ``GW_SLOWLOG_THRESHOLD``
when it is imported.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Mapping

from gwcore import ConfigurationError, hookimpl
from gwcore.config import Config, OptionParser
from gwcore.contexts import (
    JobCompleteContext,
    JobFailContext,
    JobInterruptedContext,
    JobStartContext,
    WorkerShutdownContext,
)

__all__ = ["THRESHOLD_VARIABLE", "SlowLog", "plugin", "read_threshold"]

logger = logging.getLogger("gwcore.slowlog")

THRESHOLD_VARIABLE = "GW_SLOWLOG_THRESHOLD"
DEFAULT_THRESHOLD = 1.0


def read_threshold(environ: Mapping[str, str] | None = None) -> float:
    """Return the threshold in seconds from ``GW_SLOWLOG_THRESHOLD``, or 1.0 when it is unset or empty.

    Raises `gwcore.ConfigurationError` for a value that is not a finite number >= 0.
    """
    text = (os.environ if environ is None else environ).get(THRESHOLD_VARIABLE, "").strip()
    if not text:
        return DEFAULT_THRESHOLD
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise ConfigurationError(
            f"{THRESHOLD_VARIABLE} is invalid: {text!r} is not a number of seconds >= 0; "
            f"set it to a number such as 0.5, or unset it for the default of {DEFAULT_THRESHOLD:g} s."
        )
    return value


class SlowLog:
    """The plugin with a threshold of its own: ``Worker(url, plugins=[SlowLog(threshold=0.5)])``.

    ``threshold`` is in seconds. Durations of failed attempts are measured from
    ``gw_job_start``, so the start time of every running job is kept until its
    outcome, its interruption or its worker's shutdown.
    """

    def __init__(self, threshold: float = DEFAULT_THRESHOLD) -> None:
        if isinstance(threshold, bool) or not isinstance(threshold, int | float):
            raise ConfigurationError(f"threshold is invalid: {threshold!r}; pass a number of seconds >= 0.")
        if not math.isfinite(threshold) or threshold < 0:
            raise ConfigurationError(f"threshold is invalid: {threshold!r}; pass a number of seconds >= 0.")
        self.threshold = float(threshold)
        # Monotonic start time of each running job, keyed by (worker id, job id).
        self.started: dict[tuple[str, int], float] = {}

    @hookimpl
    def gw_job_start(self, ctx: JobStartContext) -> None:
        self.started[(ctx.worker_id, ctx.job.id)] = time.monotonic()

    @hookimpl
    def gw_job_complete(self, ctx: JobCompleteContext) -> None:
        self.started.pop((ctx.worker_id, ctx.job.id), None)
        if ctx.duration > self.threshold:
            logger.warning(
                "slow job %s %d took %.3f s (threshold %g s)",
                ctx.job.task_identifier,
                ctx.job.id,
                ctx.duration,
                self.threshold,
            )

    @hookimpl
    def gw_job_fail(self, ctx: JobFailContext) -> None:
        started = self.started.pop((ctx.worker_id, ctx.job.id), None)
        if started is None:
            return  # gw_before_job_run failed the job, so the task never started
        duration = time.monotonic() - started
        if duration > self.threshold:
            logger.warning(
                "slow job %s %d took %.3f s (threshold %g s) and failed (attempt %d of %d)",
                ctx.job.task_identifier,
                ctx.job.id,
                duration,
                self.threshold,
                ctx.job.attempts,
                ctx.job.max_attempts,
            )

    @hookimpl
    def gw_job_interrupted(self, ctx: JobInterruptedContext) -> None:
        self.started.pop((ctx.worker_id, ctx.job.id), None)

    @hookimpl
    def gw_worker_shutdown(self, ctx: WorkerShutdownContext) -> None:
        # A job whose outcome could not be written gets neither gw_job_complete nor gw_job_fail.
        for key in [key for key in self.started if key[0] == ctx.worker_id]:
            del self.started[key]


def _threshold_at_import() -> float:
    """Return the threshold from the environment, or the default after logging why it is invalid.

    ``gw`` checks the same variable again as the plugin's option, so a bad
    value still stops ``gw`` with a clear error, but a bad value does not make the import fail.
    """
    try:
        return read_threshold()
    except ConfigurationError as error:
        logger.warning("%s Using %g s.", error, DEFAULT_THRESHOLD)
        return DEFAULT_THRESHOLD


# The instance that the module-level hooks below use, with the threshold from the environment.
plugin = SlowLog(_threshold_at_import())


@hookimpl
def gw_addoption(parser: OptionParser) -> None:
    parser.addoption(
        "--slowlog-threshold",
        type=float,
        default=DEFAULT_THRESHOLD,
        metavar="SECONDS",
        help="log a warning for each job that runs longer than this many seconds",
    )


@hookimpl
def gw_configure(config: Config) -> None:
    threshold = config.get("slowlog_threshold")
    if not math.isfinite(threshold) or threshold < 0:
        raise ConfigurationError(
            f"slowlog_threshold is invalid: {threshold!r} (from {config.source('slowlog_threshold')}); "
            "set it to a number of seconds >= 0, such as 0.5."
        )
    plugin.threshold = float(threshold)


@hookimpl
def gw_job_start(ctx: JobStartContext) -> None:
    plugin.gw_job_start(ctx)


@hookimpl
def gw_job_complete(ctx: JobCompleteContext) -> None:
    plugin.gw_job_complete(ctx)


@hookimpl
def gw_job_fail(ctx: JobFailContext) -> None:
    plugin.gw_job_fail(ctx)


@hookimpl
def gw_job_interrupted(ctx: JobInterruptedContext) -> None:
    plugin.gw_job_interrupted(ctx)


@hookimpl
def gw_worker_shutdown(ctx: WorkerShutdownContext) -> None:
    plugin.gw_worker_shutdown(ctx)
