"""The job context that a task receives as its second argument."""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
from collections.abc import Mapping, MutableMapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from gwcore.job import Job

if TYPE_CHECKING:
    from gwcore.worker import Worker


class JobLogger(logging.LoggerAdapter):  # type: ignore[type-arg]
    """A logger that prefixes each message with the job's task and id and adds them to the record."""

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, MutableMapping[str, Any]]:
        extra = self.extra or {}
        kwargs.setdefault("extra", {}).update(extra)
        return f"[{extra.get('task_identifier')} job {extra.get('job_id')}] {msg}", kwargs


class JobContext:
    """Context of a job for its task: the job's row and the worker running it.

    The job's row fields are attributes (``ctx.id``, ``ctx.attempts``,
    ``ctx.queue_name`` ...) and the whole row is ``ctx.job``.
    ``ctx.abort_signal`` is set when the worker shuts down and wants the task
    to stop: a long task should check ``ctx.aborted`` between steps, because a
    plain ``def`` task running in a thread cannot be cancelled.
    """

    def __init__(self, job: Job, worker: Worker, abort_signal: threading.Event) -> None:
        self.job = job
        self.worker_id = worker.worker_id
        self.extensions: Mapping[str, Any] = worker.extensions
        self.abort_signal = abort_signal
        self._worker = worker
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()

    @functools.cached_property
    def logger(self) -> JobLogger:
        """A logger named ``gwcore.task.<task identifier>`` that adds the job id to each record.

        Built on first use, because most no-op and short tasks never log.
        """
        return JobLogger(
            logging.getLogger(f"gwcore.task.{self.job.task_identifier}"),
            {"job_id": self.job.id, "task_identifier": self.job.task_identifier, "worker_id": self.worker_id},
        )

    # -- the job's row ------------------------------------------------------

    @property
    def id(self) -> int:
        return self.job.id

    @property
    def task_identifier(self) -> str:
        return self.job.task_identifier

    @property
    def attempts(self) -> int:
        return self.job.attempts

    @property
    def max_attempts(self) -> int:
        return self.job.max_attempts

    @property
    def key(self) -> str | None:
        return self.job.key

    @property
    def queue_name(self) -> str | None:
        return self.job.queue_name

    @property
    def run_at(self) -> datetime:
        return self.job.run_at

    @property
    def priority(self) -> int:
        return self.job.priority

    @property
    def flags(self) -> Mapping[str, bool] | None:
        return self.job.flags

    @property
    def created_at(self) -> datetime:
        return self.job.created_at

    @property
    def aborted(self) -> bool:
        return self.abort_signal.is_set()

    # -- adding jobs from a task --------------------------------------------

    async def add_job(
        self,
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
    ) -> Job | None:
        """Add a job through the worker's pool and plugins; see `gwcore.add_job`."""
        from gwcore.add import add_job

        return await add_job(
            self._worker.pool,
            identifier,
            payload,
            queue_name=queue_name,
            run_at=run_at,
            max_attempts=max_attempts,
            job_key=job_key,
            job_key_mode=job_key_mode,
            priority=priority,
            flags=flags,
            schema=self._worker.schema,
            plugins=self._worker.plugins,
        )

    def add_job_sync(self, identifier: str, payload: Any = None, **options: Any) -> Job | None:
        """Add a job from a plain ``def`` task running in the worker's thread pool.

        Takes the same arguments as `add_job` and blocks until the job is written.
        """
        if threading.get_ident() == self._loop_thread:
            raise RuntimeError(
                "ctx.add_job_sync was called on the event loop thread, where it would block "
                "the worker; in an async def task use `await ctx.add_job(...)`."
            )
        future = asyncio.run_coroutine_threadsafe(self.add_job(identifier, payload, **options), self._loop)
        return future.result()
