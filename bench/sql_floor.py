"""Run gwcore's batch fetch and delete statements with no worker around them, for bench/run.py.

``--concurrency`` connections each loop: lock up to ``--batch-size`` jobs with
``queries_for(schema).fetch_jobs``, the worker's fetch statement, delete the
whole batch with one ``complete_jobs`` call, and when no job is ready, sleep
1 ms and try again (the parent adds jobs while this runs).

bench/run.py passes a batch size of 1000, the local queue size of the batched
worker, and 2 connections unless its ``--floor-connections`` says otherwise:
each statement handles up to 1000 jobs, so a few connections keep PostgreSQL
busy, and more add contention for the same first rows of the index.

The same event protocol as gwcore_worker.py: ``ready``, ``ran`` after
``--jobs`` jobs, and ``stopped`` after ``stop`` arrives on stdin.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys
from typing import Any

import psycopg

from gwcore.queries import fetch_window, queries_for
from gwcore.worker import PREPARE_JOB_STATEMENTS

WORKER_ID = "bench-sql-floor"


def emit(event: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


async def drain(
    url: str, schema: str, task_id: int, batch_size: int, state: dict[str, int], target: int
) -> None:
    """Fetch and delete batches on one connection until ``target`` jobs are done across all loops."""
    queries = queries_for(schema)
    fetch_params = {
        "worker_id": WORKER_ID,
        "task_ids": [task_id],
        "size": batch_size,
        "window": fetch_window(batch_size),
    }
    delete_params: dict[str, object] = {"worker_id": WORKER_ID, "job_ids": []}
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        while state["done"] < target:
            cursor = await conn.execute(queries.fetch_jobs, fetch_params, prepare=PREPARE_JOB_STATEMENTS)
            rows = await cursor.fetchall()
            if not rows:
                await asyncio.sleep(0.001)
                continue
            delete_params["job_ids"] = [row[0] for row in rows]
            await conn.execute(queries.complete_jobs, delete_params, prepare=PREPARE_JOB_STATEMENTS)
            before = state["done"]
            state["done"] += len(rows)
            if before < target <= state["done"]:
                emit({"event": "ran", "count": state["done"]})


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="PostgreSQL connection string")
    parser.add_argument("--schema", required=True, help="graphile-worker schema to work on")
    parser.add_argument("--concurrency", type=int, required=True, help="connections, each fetching in a loop")
    parser.add_argument("--jobs", type=int, required=True, help="stop fetching after this many jobs")
    parser.add_argument(
        "--batch-size", type=int, default=1000, help="jobs locked per fetch statement (default: 1000)"
    )
    args = parser.parse_args()
    for option in ("concurrency", "jobs", "batch_size"):
        if getattr(args, option) < 1:
            parser.error(f"--{option.replace('_', '-')} is {getattr(args, option)}; it must be at least 1")

    async with await psycopg.AsyncConnection.connect(args.url, autocommit=True) as conn:
        cursor = await conn.execute(
            psycopg.sql.SQL("select id from {}._private_tasks where identifier = 'noop'").format(
                psycopg.sql.Identifier(args.schema)
            )
        )
        row = await cursor.fetchone()
    if row is None:
        raise SystemExit(f"task 'noop' is missing from {args.schema}._private_tasks; insert it first")

    state = {"done": 0}
    emit({"event": "ready"})
    task_id = row[0]
    loops = [
        drain(args.url, args.schema, task_id, args.batch_size, state, args.jobs)
        for _ in range(args.concurrency)
    ]
    await asyncio.gather(*loops)
    await asyncio.to_thread(sys.stdin.readline)
    emit({"event": "stopped", "max_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss})


if __name__ == "__main__":
    asyncio.run(main())
