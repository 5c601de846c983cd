"""Run a gwcore worker with a no-op task for bench/run.py.

Writes one JSON object a line to stdout: ``{"event": "ready"}`` once the
worker has started, ``{"event": "started", "n": ..., "t_ns": ...}`` per job
with ``--report-starts`` (``t_ns`` from `time.perf_counter_ns`, which reads
CLOCK_MONOTONIC on Linux, so the parent can subtract its own timestamps),
``{"event": "ran", "count": ...}`` when the task has run ``--jobs`` times,
and ``{"event": "stopped", "max_rss_kb": ...}`` after the line ``stop``
arrives on stdin.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import resource
import sys
import threading
import time
from typing import Any

import gwcore
from gwcore.contexts import JobCompleteContext, JobFetchContext, JobStartContext, WorkerStartContext


def emit(event: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


class ReadyReporter:
    """Reports ``ready`` once the worker has started; one call per run."""

    @gwcore.hookimpl
    def gw_worker_start(self, ctx: WorkerStartContext) -> None:
        emit({"event": "ready"})


class SyncObserver:
    """A plugin whose job hooks do nothing, to measure the cost of calling them."""

    @gwcore.hookimpl
    def gw_job_fetch(self, ctx: JobFetchContext) -> None:
        return None

    @gwcore.hookimpl
    def gw_job_start(self, ctx: JobStartContext) -> None:
        return None

    @gwcore.hookimpl
    def gw_job_complete(self, ctx: JobCompleteContext) -> None:
        return None


class AsyncObserver:
    """The async twin of `SyncObserver`: each hook returns a coroutine that the worker awaits."""

    @gwcore.hookimpl
    async def gw_job_fetch(self, ctx: JobFetchContext) -> None:
        return None

    @gwcore.hookimpl
    async def gw_job_start(self, ctx: JobStartContext) -> None:
        return None

    @gwcore.hookimpl
    async def gw_job_complete(self, ctx: JobCompleteContext) -> None:
        return None


OBSERVERS: dict[str, type] = {"sync": SyncObserver, "async": AsyncObserver}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Run a gwcore worker with a no-op task for bench/run.py.")
    parser.add_argument("--url", required=True, help="PostgreSQL connection string")
    parser.add_argument("--schema", required=True, help="graphile-worker schema to work on")
    parser.add_argument("--concurrency", type=int, required=True, help="worker slots")
    parser.add_argument("--jobs", type=int, required=True, help="report `ran` after this many task calls")
    parser.add_argument("--observers", choices=["sync", "async"], help="register no-op observer plugins")
    parser.add_argument("--observer-count", type=int, default=10, help="observer plugins (default: 10)")
    parser.add_argument("--report-starts", action="store_true", help="report a timestamp per task call")
    parser.add_argument(
        "--local-queue-size",
        type=int,
        help="fetch up to this many jobs per statement into a local queue (default: off, one job per fetch)",
    )
    parser.add_argument(
        "--complete-batch-delay",
        type=float,
        metavar="SECONDS",
        help="write completions in batches after this delay; 0 writes what is ready at once (default: off)",
    )
    parser.add_argument(
        "--fail-batch-delay",
        type=float,
        metavar="SECONDS",
        help="write failures in batches after this delay; 0 writes what is ready at once (default: off)",
    )
    args = parser.parse_args()
    if args.local_queue_size is not None and args.local_queue_size < 1:
        parser.error(f"--local-queue-size is {args.local_queue_size}; pass 1 or more, or leave it out")
    for option in ("complete_batch_delay", "fail_batch_delay"):
        delay = getattr(args, option)
        if delay is not None and not 0 <= delay < math.inf:
            parser.error(f"--{option.replace('_', '-')} is {delay}; pass 0 or more seconds, or leave it out")
    return args


async def main() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.WARNING)
    ran = 0

    async def noop(payload: Any, ctx: gwcore.JobContext) -> None:
        nonlocal ran
        if args.report_starts:
            emit({"event": "started", "n": payload["n"], "t_ns": time.perf_counter_ns()})
        ran += 1
        if ran == args.jobs:
            emit({"event": "ran", "count": ran})

    plugins: list[object] = [ReadyReporter()]
    if args.observers:
        plugins += [OBSERVERS[args.observers]() for _ in range(args.observer_count)]
    # The default plugins (the built-ins console and lock_sweep), without what the environment
    # of this machine might add through entry points or GW_PLUGINS.
    manager = gwcore.create_plugin_manager(plugins, entry_points=False, requests=[])
    local_queue = None if args.local_queue_size is None else gwcore.LocalQueueOptions(args.local_queue_size)
    worker = gwcore.Worker(
        args.url,
        tasks={"noop": noop},
        schema=args.schema,
        concurrency=args.concurrency,
        plugin_manager=manager,
        local_queue=local_queue,
        complete_job_batch_delay=args.complete_batch_delay,
        fail_job_batch_delay=args.fail_batch_delay,
    )

    loop = asyncio.get_running_loop()

    def wait_for_stop() -> None:
        for line in sys.stdin:
            if line.strip() == "stop":
                break
        loop.call_soon_threadsafe(worker.stop)

    threading.Thread(target=wait_for_stop, daemon=True).start()
    await worker.run()
    emit({"event": "stopped", "max_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss})


if __name__ == "__main__":
    asyncio.run(main())
