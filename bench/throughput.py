"""Measure how fast one worker runs no-op jobs, and how fast jobs are added.

    .venv/bin/python bench/throughput.py --jobs 10000 --concurrency 10

Uses DATABASE_URL, or the local test database by default, in a schema of its
own that it drops afterwards. Prints one JSON line per measurement, then a
summary table. The figures depend on the machine and on what else it runs;
compare runs made on the same machine, one after the other.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import time
import uuid
from typing import Any

import psycopg
from psycopg import sql

import gwcore
from gwcore.migrate import migrate

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/test"
BATCH_SIZE = 1000


async def noop(payload: Any, ctx: gwcore.JobContext) -> None:
    return None


async def add_in_batches(url: str, schema: str, count: int, plugins: gwcore.PluginManager) -> float:
    started = time.perf_counter()
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        for offset in range(0, count, BATCH_SIZE):
            size = min(BATCH_SIZE, count - offset)
            specs = [gwcore.JobSpec.create("noop", {"n": offset + i}) for i in range(size)]
            await gwcore.add_jobs(conn, specs, schema=schema, plugins=plugins)
    return time.perf_counter() - started


async def add_one_by_one(url: str, schema: str, count: int, plugins: gwcore.PluginManager) -> float:
    started = time.perf_counter()
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        for n in range(count):
            await gwcore.add_job(conn, "noop", {"n": n}, schema=schema, plugins=plugins)
    return time.perf_counter() - started


async def run_all(url: str, schema: str, concurrency: int, plugins: gwcore.PluginManager) -> float:
    worker = gwcore.Worker(
        url,
        tasks={"noop": noop},
        schema=schema,
        concurrency=concurrency,
        plugin_manager=plugins,
        listen=False,
        migrate=False,
    )
    started = time.perf_counter()
    await worker.run_once()
    return time.perf_counter() - started


def report(name: str, jobs: int, seconds: float, **extra: Any) -> dict[str, Any]:
    figure = {"measurement": name, "jobs": jobs, "seconds": round(seconds, 3)}
    figure["jobs_per_second"] = round(jobs / seconds, 1) if seconds else None
    figure.update(extra)
    print(json.dumps(figure), flush=True)
    return figure


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10_000, help="no-op jobs to run (default: 10000)")
    parser.add_argument("--concurrency", type=int, default=10, help="worker slots (default: 10)")
    parser.add_argument(
        "--single-adds", type=int, default=1000, help="jobs added one add_job call at a time (default: 1000)"
    )
    args = parser.parse_args()

    logging.basicConfig(level=logging.WARNING)
    url = os.environ.get("DATABASE_URL", DEFAULT_URL)
    schema = f"gw_bench_{uuid.uuid4().hex[:8]}"
    plugins = gwcore.create_plugin_manager(entry_points=False, blocked=["console"])
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await migrate(conn, schema)

    figures = []
    try:
        seconds = await add_in_batches(url, schema, args.jobs, plugins)
        figures.append(report("add_jobs", args.jobs, seconds, batch_size=BATCH_SIZE))
        seconds = await run_all(url, schema, args.concurrency, plugins)
        figures.append(report("run", args.jobs, seconds, concurrency=args.concurrency))
        seconds = await add_one_by_one(url, schema, args.single_adds, plugins)
        figures.append(report("add_job", args.single_adds, seconds))
    finally:
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            await conn.execute(sql.SQL("drop schema {} cascade").format(sql.Identifier(schema)))

    print()
    print(f"{'measurement':<12} {'jobs':>8} {'seconds':>9} {'jobs/s':>10}")
    for figure in figures:
        print(
            f"{figure['measurement']:<12} {figure['jobs']:>8} {figure['seconds']:>9.3f} "
            f"{figure['jobs_per_second']:>10.1f}"
        )


if __name__ == "__main__":
    asyncio.run(main())
