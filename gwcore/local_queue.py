"""The local queue: fetch jobs in batches, keep them locked in memory, and hand them to the slots.

Without it, every slot fetches its own job with one statement per job. With
it, one fetch locks up to ``size`` jobs for the worker, and slots take them
from memory. One asyncio task, the driver, owns every change of mode, so the
``gw_local_queue_*`` hooks fire in the order the changes happen:

- ``STARTING``: created, nothing fetched yet.
- ``POLLING``: a batch fetch is running.
- ``WAITING``: the fetch is done. With jobs cached, the queue waits for the
  slots to take them (or for their time to live to run out). With none, it
  waits for a ``jobs:insert`` notification, a slot asking for work, or the
  poll interval.
- ``TTL_EXPIRED``: cached jobs waited longer than ``ttl`` and were handed back;
  nothing is fetched until a slot requests a job.
- ``RELEASED``: the worker is stopping; cached jobs were handed back.

Jobs handed back are unlocked with the fetch's attempt given back, so a job
that only waited in memory keeps the attempts it had.
"""

from __future__ import annotations

import asyncio
import difflib
import enum
import logging
import math
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg_pool import PoolTimeout

from gwcore.contexts import (
    LocalQueueGetJobsCompleteContext,
    LocalQueueInitContext,
    LocalQueueRefetchDelayAbortContext,
    LocalQueueRefetchDelayExpiredContext,
    LocalQueueRefetchDelayStartContext,
    LocalQueueReturnJobsContext,
    LocalQueueSetModeContext,
)
from gwcore.errors import ConfigurationError
from gwcore.job import Job
from gwcore.listener import retry_delay

if TYPE_CHECKING:
    from gwcore.plugins import PluginManager

logger = logging.getLogger("gwcore.local_queue")

DEFAULT_TTL = 300.0
# The largest batch: a fetch locks it in one statement and the worker keeps it in memory.
MAX_SIZE = 100_000

# Fetches up to the given number of jobs and returns them locked by the worker.
FetchJobs = Callable[[int], Awaitable[list[Job]]]
# Hands jobs back unlocked with their attempt given back; returns how many were handed back.
ReturnJobs = Callable[[Sequence[Job]], Awaitable[int]]


class LocalQueueMode(enum.StrEnum):
    """The mode of a local queue; each change fires ``gw_local_queue_set_mode``."""

    STARTING = "STARTING"
    POLLING = "POLLING"
    WAITING = "WAITING"
    TTL_EXPIRED = "TTL_EXPIRED"
    RELEASED = "RELEASED"


# ---------------------------------------------------------------------------
# Options
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class RefetchDelay:
    """A pause after a fetch that found little work, so that idle workers do not all poll at once.

    After a fetch returned at most ``threshold`` jobs, the next fetch waits
    ``duration`` seconds, jittered to between half and all of it. The pause
    ends early once the worker has received a random number of ``jobs:insert``
    notifications between 1 and ``max_abort_threshold`` (default: 5 times
    the worker's concurrency).
    """

    duration: float
    threshold: int = 0
    max_abort_threshold: int | None = None


@dataclass(frozen=True)
class LocalQueueOptions:
    """The local queue's settings: jobs per fetch, their time to live in seconds, and the refetch delay."""

    size: int
    ttl: float = DEFAULT_TTL
    refetch_delay: RefetchDelay | None = None

    @classmethod
    def parse(cls, value: Any, *, poll_interval: float) -> LocalQueueOptions:
        """Validate ``value`` (options or a mapping of them) and return it as `LocalQueueOptions`.

        Raises `ConfigurationError` naming the invalid setting and the fix.
        """
        if isinstance(value, Mapping):
            value = _options_from_mapping(value)
        if not isinstance(value, LocalQueueOptions):
            raise ConfigurationError(
                f"local_queue is invalid: {value!r}; pass LocalQueueOptions(size=...) or a mapping "
                "such as {'size': 100, 'ttl': 300}."
            )
        options: LocalQueueOptions = value
        _check_integer("local_queue.size", options.size, minimum=1, maximum=MAX_SIZE)
        _check_positive("local_queue.ttl", options.ttl)

        delay: Any = options.refetch_delay
        if delay is None:
            return options
        if isinstance(delay, Mapping):
            delay = _refetch_delay_from_mapping(delay)
        if not isinstance(delay, RefetchDelay):
            raise ConfigurationError(
                f"local_queue.refetch_delay is invalid: {delay!r}; pass RefetchDelay(duration=...) "
                "or a mapping such as {'duration': 0.5}."
            )
        _check_positive("local_queue.refetch_delay.duration", delay.duration)
        if delay.duration > poll_interval:
            raise ConfigurationError(
                f"local_queue.refetch_delay.duration is invalid: {delay.duration!r} seconds is longer "
                f"than the poll interval ({poll_interval!r} seconds); pass a duration <= the poll interval."
            )
        _check_integer("local_queue.refetch_delay.threshold", delay.threshold, minimum=0)
        if delay.max_abort_threshold is not None:
            _check_integer(
                "local_queue.refetch_delay.max_abort_threshold", delay.max_abort_threshold, minimum=1
            )
        return LocalQueueOptions(size=options.size, ttl=float(options.ttl), refetch_delay=delay)


def _options_from_mapping(value: Mapping[str, Any]) -> LocalQueueOptions:
    _check_keys("local_queue", value, ("size", "ttl", "refetch_delay"))
    if "size" not in value:
        raise ConfigurationError(
            "local_queue is invalid: 'size' is missing; pass the number of jobs to fetch at once, "
            "such as {'size': 100}."
        )
    return LocalQueueOptions(
        size=value["size"],
        ttl=value.get("ttl", DEFAULT_TTL),
        refetch_delay=value.get("refetch_delay"),
    )


def _refetch_delay_from_mapping(value: Mapping[str, Any]) -> RefetchDelay:
    name = "local_queue.refetch_delay"
    _check_keys(name, value, ("duration", "threshold", "max_abort_threshold"))
    if "duration" not in value:
        raise ConfigurationError(
            f"{name} is invalid: 'duration' is missing; pass the pause in seconds, "
            "such as {'duration': 0.5}."
        )
    return RefetchDelay(
        duration=value["duration"],
        threshold=value.get("threshold", 0),
        max_abort_threshold=value.get("max_abort_threshold"),
    )


def _check_keys(name: str, value: Mapping[str, Any], known: tuple[str, ...]) -> None:
    for key in value:
        if key in known:
            continue
        close = difflib.get_close_matches(str(key), known, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ConfigurationError(
            f"{name} is invalid: unknown key {key!r}; {hint}the keys are {', '.join(known)}."
        )


def _check_integer(name: str, value: Any, *, minimum: int, maximum: int | None = None) -> None:
    allowed = f">= {minimum}" if maximum is None else f"from {minimum} to {maximum:,}"
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigurationError(
            f"{name} is invalid: {value!r} is not an integer; pass an integer {allowed}."
        )
    if value < minimum or (maximum is not None and value > maximum):
        raise ConfigurationError(f"{name} is invalid: {value!r}; pass an integer {allowed}.")


def _check_positive(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigurationError(f"{name} is invalid: {value!r} is not a finite number; pass seconds > 0.")
    if value <= 0:
        raise ConfigurationError(f"{name} is invalid: {value!r}; it must be > 0 seconds.")


# ---------------------------------------------------------------------------
# The queue
# ---------------------------------------------------------------------------


class LocalQueue:
    """Fetches jobs in batches with ``fetch_jobs`` and hands them to the slots that call `get_job`.

    With ``until_idle``, a fetch that finds nothing returns None to every
    waiting slot, so that `Worker.run_once` can end.
    """

    def __init__(
        self,
        options: LocalQueueOptions,
        *,
        worker_id: str,
        concurrency: int,
        poll_interval: float,
        plugins: PluginManager,
        fetch_jobs: FetchJobs,
        return_jobs: ReturnJobs,
        until_idle: bool = False,
    ) -> None:
        self.options = options
        self.worker_id = worker_id
        self.mode = LocalQueueMode.STARTING
        self._concurrency = concurrency
        self._poll_interval = poll_interval
        self._plugins = plugins
        self._fetch_jobs = fetch_jobs
        self._return_jobs = return_jobs
        self._until_idle = until_idle

        self._jobs: deque[Job] = deque()
        self._waiters: deque[asyncio.Future[Job | None]] = deque()
        self._changed = asyncio.Event()
        self._driver: asyncio.Task[None] | None = None
        self._releasing = False

        # Reasons to fetch again, gathered while the queue waits or polls.
        self._pulses = 0  # jobs:insert notifications since the last fetch began
        self._demand = False  # a slot began to wait for a job since the last fetch began
        self._fetch_soon = False  # the last fetch found jobs, so more may be ready
        self._next_poll = 0.0
        self._retry_at = 0.0  # after a failed fetch, nothing fetches again before this time
        self._fetch_failures = 0
        self._cached_since = 0.0

        # The refetch delay in progress, if any.
        self._delay_until: float | None = None
        self._delay_abort_threshold = 0
        self._delay_pulses = 0
        self._fetch_after_delay = False

    @property
    def task(self) -> asyncio.Task[None]:
        """The driver task; it raises if the queue failed, and ends after `release`."""
        if self._driver is None:
            raise RuntimeError("the local queue has not been started")
        return self._driver

    @property
    def cached_jobs(self) -> int:
        """How many fetched jobs wait in memory for a slot."""
        return len(self._jobs)

    async def start(self) -> None:
        """Fire ``gw_local_queue_init`` and start the driver, which fetches the first batch."""
        await self._plugins.notify("gw_local_queue_init", LocalQueueInitContext(worker_id=self.worker_id))
        self._driver = asyncio.create_task(self._drive(), name=f"gwcore-local-queue-{self.worker_id}")

    # -- the slots' side -----------------------------------------------------

    async def get_job(self) -> Job | None:
        """Return the next job, waiting for one to be fetched; None once the queue is released.

        With ``until_idle``, None also means that a fetch found no job.
        """
        if self._releasing:
            return None
        if self._jobs:
            job = self._jobs.popleft()
            if not self._jobs:
                self._changed.set()  # the cache ran dry: fetch the next batch
            return job

        waiter: asyncio.Future[Job | None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        self._demand = True
        self._changed.set()
        try:
            return await waiter
        except asyncio.CancelledError:
            self._take_back(waiter)
            raise

    def _take_back(self, waiter: asyncio.Future[Job | None]) -> None:
        """Pass on the job of a slot that was cancelled while its job was on the way."""
        if waiter in self._waiters:
            self._waiters.remove(waiter)
        if not waiter.done() or waiter.cancelled():
            return
        job = waiter.result()
        if job is None:
            return
        other = self._next_waiter()
        if other is not None:
            other.set_result(job)
            return
        if not self._jobs:
            self._cached_since = time.monotonic()
        self._jobs.appendleft(job)
        self._changed.set()

    def nudge(self, count: int = 1) -> None:
        """Count ``count`` ``jobs:insert`` notifications; they make an idle queue fetch at once."""
        self._pulses += count
        # Counted from the start of the last fetch, so a notification that arrives while a fetch
        # runs also counts toward ending the refetch delay that may follow that fetch.
        self._delay_pulses += count
        self._changed.set()

    async def return_job(self, job: Job) -> None:
        """Hand back a job that a slot took but will not run, and fire ``gw_local_queue_return_jobs``."""
        await self._hand_back([job])

    def release(self) -> None:
        """Stop fetching and return None to every waiting slot; `close` hands back the cached jobs."""
        self._releasing = True
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._waiters.clear()
        self._changed.set()

    async def close(self) -> None:
        """Release the queue and wait until the driver has handed back every cached job."""
        self.release()
        if self._driver is not None:
            await asyncio.gather(self._driver, return_exceptions=True)

    # -- the driver ----------------------------------------------------------

    async def _drive(self) -> None:
        try:
            await self._set_mode(LocalQueueMode.POLLING)
            while not self._releasing:
                if self.mode is LocalQueueMode.POLLING:
                    await self._poll()
                elif self.mode is LocalQueueMode.WAITING:
                    await self._wait()
                else:
                    await self._wait_after_ttl()
        finally:
            await self._hand_back_on_release()

    async def _poll(self) -> None:
        """Fetch one batch, hand it to waiting slots and cache the rest, then wait."""
        self._pulses = 0
        self._delay_pulses = 0
        self._demand = False
        self._fetch_soon = False
        try:
            jobs = await self._fetch_jobs(self.options.size)
        except (psycopg.Error, PoolTimeout) as error:
            delay = min(retry_delay(self._fetch_failures), self._poll_interval * 5)
            self._fetch_failures += 1
            logger.error("fetching a batch of jobs failed (%s); retrying in %.1f s", error, delay)
            self._next_poll = self._retry_at = time.monotonic() + delay
            await self._set_mode(LocalQueueMode.WAITING)
            return
        self._fetch_failures = 0

        await self._plugins.notify(
            "gw_local_queue_get_jobs_complete",
            LocalQueueGetJobsCompleteContext(worker_id=self.worker_id, jobs_count=len(jobs)),
        )
        self._hand_out(jobs)
        if not jobs and self._until_idle:
            self._resolve_waiters(None)
        # A batch that found jobs may have left some behind: the fetch takes one job per named
        # queue, so a queue's backlog can shrink a batch below its size. Fetch again once drained.
        self._fetch_soon = bool(jobs)
        self._next_poll = time.monotonic() + self._poll_interval

        refetch_delay = self.options.refetch_delay
        if refetch_delay is not None and len(jobs) <= refetch_delay.threshold and not self._releasing:
            await self._start_refetch_delay(refetch_delay)
        await self._set_mode(LocalQueueMode.WAITING)

    def _hand_out(self, jobs: list[Job]) -> None:
        for job in jobs:
            waiter = self._next_waiter()
            if waiter is not None:
                waiter.set_result(job)
                continue
            if not self._jobs:
                self._cached_since = time.monotonic()
            self._jobs.append(job)

    def _next_waiter(self) -> asyncio.Future[Job | None] | None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                return waiter
        return None

    def _resolve_waiters(self, value: None) -> None:
        while (waiter := self._next_waiter()) is not None:
            waiter.set_result(value)

    async def _wait(self) -> None:
        """Wait in ``WAITING`` until the next fetch is due, the cached jobs expire, or a release."""
        if self._jobs:
            expires = self._cached_since + self.options.ttl
            await self._sleep_until(expires)
            if self._releasing or not self._jobs:
                return  # drained: the next round finds the cache empty and fetches
            if time.monotonic() >= expires:
                await self._expire_cached_jobs()
            return

        if self._delay_until is not None:
            await self._wait_for_refetch_delay()
            return
        if self._fetch_is_due():
            await self._set_mode(LocalQueueMode.POLLING)
            return
        await self._sleep_until(self._next_poll)

    def _fetch_is_due(self) -> bool:
        now = time.monotonic()
        if self._releasing or now < self._retry_at:
            return False
        if self._pulses or self._fetch_soon or now >= self._next_poll:
            return True
        # A slot that begins to wait has just finished a job, which may have unlocked a named
        # queue, so it is worth one more fetch. Slots that already waited through a fetch are not.
        return self._demand and bool(self._waiters)

    async def _wait_for_refetch_delay(self) -> None:
        assert self._delay_until is not None
        if self._delay_pulses >= self._delay_abort_threshold:
            count = self._delay_pulses
            self._delay_until = None
            await self._plugins.notify(
                "gw_local_queue_refetch_delay_abort",
                LocalQueueRefetchDelayAbortContext(
                    worker_id=self.worker_id, count=count, abort_threshold=self._delay_abort_threshold
                ),
            )
            await self._set_mode(LocalQueueMode.POLLING)
            return

        if time.monotonic() >= self._delay_until:
            self._delay_until = None
            await self._plugins.notify(
                "gw_local_queue_refetch_delay_expired",
                LocalQueueRefetchDelayExpiredContext(worker_id=self.worker_id),
            )
            if self._fetch_after_delay or self._fetch_is_due():
                await self._set_mode(LocalQueueMode.POLLING)
            return

        # Anything that would fetch now waits for the end of the delay instead.
        if self._fetch_is_due():
            self._fetch_after_delay = True
            self._pulses = 0
            self._demand = False
            self._fetch_soon = False
        await self._sleep_until(self._delay_until)

    async def _start_refetch_delay(self, delay: RefetchDelay) -> None:
        maximum = delay.max_abort_threshold or 5 * self._concurrency
        duration = delay.duration * random.uniform(0.5, 1.0)
        self._delay_abort_threshold = random.randint(1, maximum)
        self._fetch_after_delay = False
        self._delay_until = time.monotonic() + duration
        await self._plugins.notify(
            "gw_local_queue_refetch_delay_start",
            LocalQueueRefetchDelayStartContext(
                worker_id=self.worker_id,
                duration=duration,
                threshold=delay.threshold,
                abort_threshold=self._delay_abort_threshold,
            ),
        )

    async def _expire_cached_jobs(self) -> None:
        """Hand back the jobs that no slot took within ``ttl``; fetch again once a slot requests a job."""
        await self._set_mode(LocalQueueMode.TTL_EXPIRED)
        jobs = list(self._jobs)
        self._jobs.clear()
        logger.info(
            "%d cached job(s) waited longer than the local queue's ttl of %.1f s; handing them back",
            len(jobs),
            self.options.ttl,
        )
        await self._hand_back(jobs)

    async def _wait_after_ttl(self) -> None:
        if self._demand and self._waiters:
            await self._set_mode(LocalQueueMode.POLLING)
            return
        self._demand = False
        await self._sleep_until(math.inf)

    async def _hand_back_on_release(self) -> None:
        self._resolve_waiters(None)
        if self.mode is not LocalQueueMode.RELEASED:
            await self._set_mode(LocalQueueMode.RELEASED)
        jobs = list(self._jobs)
        self._jobs.clear()
        if jobs:
            logger.info("handing back %d cached job(s) unlocked as the worker stops", len(jobs))
            await self._hand_back(jobs)

    async def _hand_back(self, jobs: list[Job]) -> None:
        returned = await self._return_jobs(jobs)
        if returned:
            await self._plugins.notify(
                "gw_local_queue_return_jobs",
                LocalQueueReturnJobsContext(worker_id=self.worker_id, jobs_count=returned),
            )

    async def _sleep_until(self, deadline: float) -> None:
        """Sleep until ``deadline`` (monotonic seconds) or the next change, whichever comes first."""
        self._changed.clear()
        if self._releasing:
            return
        timeout = deadline - time.monotonic()
        if timeout <= 0:
            return
        try:
            await asyncio.wait_for(self._changed.wait(), None if math.isinf(timeout) else timeout)
        except TimeoutError:
            pass

    async def _set_mode(self, mode: LocalQueueMode) -> None:
        old_mode, self.mode = self.mode, mode
        logger.debug("local queue of %s: %s -> %s", self.worker_id, old_mode, mode)
        await self._plugins.notify(
            "gw_local_queue_set_mode",
            LocalQueueSetModeContext(worker_id=self.worker_id, old_mode=old_mode, new_mode=mode),
        )
