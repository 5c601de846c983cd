"""Run gwcore's fetch and complete statements with no worker around them, for bench/run.py.

``--concurrency`` connections each loop: fetch one job with
``queries_for(schema).fetch_job``, delete it with ``complete_jobs``, and when
no job is ready, sleep 1 ms and try again (the parent adds jobs while this
runs). The same event protocol as gwcore_worker.py: ``ready``, ``ran`` after
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

from gwcore.queries import queries_for


def emit(event: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


async def drain(url: str, schema: str, params: dict[str, Any], state: dict[str, int], target: int) -> None:
    queries = queries_for(schema)
    delete_params: dict[str, object] = {"worker_id": params["worker_id"], "job_ids": []}
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        while state["done"] < target:
            cursor = await conn.execute(queries.fetch_job, params)
            row = await cursor.fetchone()
            if row is None:
                await asyncio.sleep(0.001)
                continue
            delete_params["job_ids"] = [row[0]]
            await conn.execute(queries.complete_jobs, delete_params)
            state["done"] += 1
            if state["done"] == target:
                emit({"event": "ran", "count": target})


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="PostgreSQL connection string")
    parser.add_argument("--schema", required=True, help="graphile-worker schema to work on")
    parser.add_argument("--concurrency", type=int, required=True, help="connections, each fetching in a loop")
    parser.add_argument("--jobs", type=int, required=True, help="stop fetching after this many jobs")
    args = parser.parse_args()

    async with await psycopg.AsyncConnection.connect(args.url, autocommit=True) as conn:
        cursor = await conn.execute(
            psycopg.sql.SQL("select id from {}._private_tasks where identifier = 'noop'").format(
                psycopg.sql.Identifier(args.schema)
            )
        )
        row = await cursor.fetchone()
    if row is None:
        raise SystemExit(f"task 'noop' is missing from {args.schema}._private_tasks; insert it first")
    params = {"worker_id": "bench-sql-floor", "task_ids": [row[0]]}

    state = {"done": 0}
    emit({"event": "ready"})
    loops = [drain(args.url, args.schema, params, state, args.jobs) for _ in range(args.concurrency)]
    await asyncio.gather(*loops)
    await asyncio.to_thread(sys.stdin.readline)
    emit({"event": "stopped", "max_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss})


if __name__ == "__main__":
    asyncio.run(main())
