"""Stale-lock sweep: releases jobs and queues that a crashed worker left locked for over 4 hours.

Registered as ``lock_sweep``. While a worker runs, the plugin calls
`gwcore.release_stale_locks` once at start and then every 8 to 10 minutes,
at a random point so that many workers do not sweep at the same moment.
Block it with ``create_plugin_manager(blocked=["lock_sweep"])`` when another
process does the sweeping.
"""

from __future__ import annotations

import asyncio
import logging
import random

import psycopg
from psycopg_pool import PoolTimeout

from gwcore import hookimpl, release_stale_locks
from gwcore.contexts import WorkerShutdownContext, WorkerStartContext
from gwcore.worker import Worker

logger = logging.getLogger("gwcore.lock_sweep")

MIN_INTERVAL = 8 * 60.0
MAX_INTERVAL = 10 * 60.0

_sweeps: dict[str, asyncio.Task[None]] = {}


async def _sweep_forever(worker: Worker) -> None:
    while True:
        try:
            jobs, queues = await release_stale_locks(worker.pool, worker.schema)
        except (psycopg.Error, PoolTimeout) as error:
            logger.warning("stale-lock sweep failed: %s; trying again at the next sweep", error)
        else:
            if jobs or queues:
                logger.warning(
                    "released %d job(s) and %d queue(s) locked for more than 4 hours", jobs, queues
                )
        await asyncio.sleep(random.uniform(MIN_INTERVAL, MAX_INTERVAL))


@hookimpl
def gw_worker_start(ctx: WorkerStartContext) -> None:
    _sweeps[ctx.worker_id] = asyncio.create_task(
        _sweep_forever(ctx.worker), name=f"gwcore-lock-sweep-{ctx.worker_id}"
    )


@hookimpl
async def gw_worker_shutdown(ctx: WorkerShutdownContext) -> None:
    task = _sweeps.pop(ctx.worker_id, None)
    if task is None:
        return
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass
