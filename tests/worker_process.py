"""Run a gwcore worker as an OS process, for the signal and multi-process tests.

Usage::

    python tests/worker_process.py URL SCHEMA WORKER_ID [--concurrency N]
        [--grace-period SECONDS] [--poll-interval SECONDS]

The worker handles SIGINT and SIGTERM itself (``handle_signals=True``) and
logs to stderr. It runs two tasks, which write to the table
``<schema>.runs(job_id bigint, worker_id text)`` that the test creates:

- ``record`` inserts the job id and the worker id.
- ``hold`` does the same, then sleeps ``payload["seconds"]``.

The exit code is 0 after a shutdown, `SchemaTooNewError.EXIT_CODE` for a
schema that is too new, and 1 for any other error.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from typing import Any

from psycopg import sql
from psycopg_pool import AsyncConnectionPool

import gwcore


async def record(payload: Any, ctx: gwcore.JobContext) -> None:
    pool: AsyncConnectionPool = ctx.extensions["pool"]
    statement = sql.SQL("insert into {}.runs (job_id, worker_id) values (%s, %s)").format(
        sql.Identifier(ctx.extensions["schema"])
    )
    async with pool.connection() as conn:
        await conn.execute(statement, [ctx.id, ctx.worker_id])


async def hold(payload: Any, ctx: gwcore.JobContext) -> None:
    await record(payload, ctx)
    await asyncio.sleep(float(payload["seconds"]))


def parse_arguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Run a gwcore worker with the test tasks.")
    parser.add_argument("url", help="PostgreSQL connection string")
    parser.add_argument("schema", help="graphile-worker schema to use")
    parser.add_argument("worker_id", help="worker id written to locked_by")
    parser.add_argument("--concurrency", type=int, default=1, help="number of jobs run at once")
    parser.add_argument(
        "--grace-period", type=float, default=5.0, help="seconds that running jobs get to finish at shutdown"
    )
    parser.add_argument("--poll-interval", type=float, default=1.0, help="seconds between polls for due jobs")
    return parser.parse_args(argv)


async def run_worker(arguments: argparse.Namespace) -> None:
    pool = AsyncConnectionPool(
        arguments.url,
        min_size=1,
        max_size=arguments.concurrency,
        kwargs={"autocommit": True},
        open=False,
    )
    await pool.open(wait=True, timeout=15)
    try:
        worker = gwcore.Worker(
            arguments.url,
            schema=arguments.schema,
            tasks={"record": record, "hold": hold},
            concurrency=arguments.concurrency,
            poll_interval=arguments.poll_interval,
            grace_period=arguments.grace_period,
            worker_id=arguments.worker_id,
            plugin_manager=gwcore.create_plugin_manager(entry_points=False),
            extensions={"pool": pool, "schema": arguments.schema},
            handle_signals=True,
        )
        await worker.run()
    finally:
        await pool.close()


def main(argv: list[str]) -> int:
    logging.basicConfig(
        stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    arguments = parse_arguments(argv)
    try:
        asyncio.run(run_worker(arguments))
    except gwcore.SchemaTooNewError as error:
        logging.getLogger("worker_process").error("%s", error)
        return gwcore.SchemaTooNewError.EXIT_CODE
    except Exception:
        logging.getLogger("worker_process").exception("the worker failed")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
