"""Batched writes of job outcomes: many completions (or failures) in one statement.

A job that finishes submits its outcome and waits. The first submission of a
batch starts a timer of ``delay`` seconds. When it fires, every outcome
submitted so far goes to the database in one statement, and each waiting job
receives the result for its own row. A delay of 0 batches whatever is
ready at the next turn of the event loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Generic, TypeVar

Item = TypeVar("Item")

# Writes a batch and returns the result of each written job by id. A job missing from the
# mapping was not written, because this worker no longer locked it or the write was given up.
WriteBatch = Callable[[Sequence[Item]], Awaitable[Mapping[int, Any]]]


class OutcomeBatcher(Generic[Item]):
    """Collects outcomes for ``delay`` seconds and writes them with ``write`` in one call."""

    def __init__(self, write: WriteBatch[Item], delay: float) -> None:
        self._write = write
        self.delay = delay
        self._delay = delay
        self._items: list[Item] = []
        self._waiters: dict[int, asyncio.Future[Any]] = {}
        self._timer: asyncio.Task[None] | None = None
        self._writes: set[asyncio.Task[None]] = set()

    async def submit(self, job_id: int, item: Item) -> Any:
        """Queue ``item`` for job ``job_id`` and return its result once the batch is written.

        The result is the job's entry in what ``write`` returned, or None when
        its row was not written.
        """
        waiter: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._items.append(item)
        self._waiters[job_id] = waiter
        if self._timer is None:
            self._timer = asyncio.create_task(self._write_after_delay())
        # Cancelling the caller cancels only its waiter: the item stays in the batch and is
        # written, so its outcome is not lost.
        return await waiter

    def resume(self) -> None:
        """Batch with the configured delay again, as a new run of the worker starts."""
        self._delay = self.delay

    def write_at_once(self) -> None:
        """Start writing what is queued now, and write every later submission without delay.

        The worker calls this when it stops, so that no outcome waits for a timer.
        """
        self._delay = 0
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
            self._start_write()

    async def flush(self) -> None:
        """Write what is queued now and wait for every write in progress."""
        self.write_at_once()
        if self._writes:
            await asyncio.gather(*self._writes, return_exceptions=True)

    async def _write_after_delay(self) -> None:
        await asyncio.sleep(self._delay)
        self._timer = None
        self._start_write()

    def _start_write(self) -> None:
        items, waiters = self._items, self._waiters
        self._items, self._waiters = [], {}
        if not items:
            return
        task = asyncio.create_task(self._write_batch(items, waiters))
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def _write_batch(self, items: list[Item], waiters: dict[int, asyncio.Future[Any]]) -> None:
        try:
            results = await self._write(items)
        except BaseException as error:
            for waiter in waiters.values():
                if not waiter.done():
                    waiter.set_exception(error)
            raise
        for job_id, waiter in waiters.items():
            if not waiter.done():
                waiter.set_result(results.get(job_id))
