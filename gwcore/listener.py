"""LISTEN for ``jobs:insert`` on a dedicated connection, reconnecting when it drops.

graphile-worker's ``add_job`` and ``add_jobs`` send ``jobs:insert`` with a
JSON text such as ``{"r":0.42,"count":3}``, where ``count`` is how many jobs
were added (``remove_job`` sends -1). The listener passes that count on, so a
bulk add wakes as many idle workers as it added jobs.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg import sql

logger = logging.getLogger("gwcore.listener")

CHANNEL = "jobs:insert"
FIRST_RETRY_DELAY = 0.5
MAX_RETRY_DELAY = 30.0


def parse_job_count(payload: str) -> int:
    """Return how many jobs a ``jobs:insert`` payload announces; 1 when the payload has no count."""
    try:
        count = json.loads(payload)["count"]
    except (ValueError, TypeError, KeyError):
        return 1
    if isinstance(count, bool) or not isinstance(count, int):
        return 1
    return max(count, 0)


def retry_delay(failures: int) -> float:
    """Return the wait before reconnect number ``failures``: capped exponential backoff, full jitter."""
    ceiling = min(MAX_RETRY_DELAY, FIRST_RETRY_DELAY * 2 ** min(failures, 16))
    return random.uniform(FIRST_RETRY_DELAY / 2, ceiling)


class JobListener:
    """Calls ``on_jobs(count)`` for each notification and ``on_connect()`` after each (re)connect.

    ``on_connect`` lets the worker fetch at once, because the notifications
    of jobs added while the connection was down were lost.
    """

    def __init__(
        self,
        conninfo: str,
        *,
        on_jobs: Callable[[int], None],
        on_connect: Callable[[], None],
        connect_kwargs: dict[str, Any] | None = None,
    ) -> None:
        self._conninfo = conninfo
        self._on_jobs = on_jobs
        self._on_connect = on_connect
        self._connect_kwargs = connect_kwargs or {}
        self._task: asyncio.Task[None] | None = None
        self.connected = asyncio.Event()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="gwcore-listener")

    async def stop(self) -> None:
        if self._task is None:
            return
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass
        self._task = None

    async def _run(self) -> None:
        failures = 0
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    self._conninfo, autocommit=True, **self._connect_kwargs
                ) as conn:
                    await conn.execute(sql.SQL("listen {}").format(sql.Identifier(CHANNEL)))
                    if failures:
                        logger.info("listener reconnected after %d failed attempts", failures)
                    failures = 0
                    self.connected.set()
                    self._on_connect()
                    async for notify in conn.notifies():
                        self._on_jobs(parse_job_count(notify.payload))
                    raise psycopg.OperationalError("the notification stream ended")
            except psycopg.Error as error:
                self.connected.clear()
                delay = retry_delay(failures)
                failures += 1
                logger.warning(
                    "listener connection for %s failed (%s); reconnecting in %.1f s",
                    CHANNEL,
                    error,
                    delay,
                )
                await asyncio.sleep(delay)
