"""Two worker processes on one schema run every job exactly once."""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

import gwcore

ADD_PLUGINS = gwcore.create_plugin_manager(builtins=False, entry_points=False)
WORKER_PROCESS = Path(__file__).with_name("worker_process.py")
JOB_COUNT = 2000
BATCH_SIZE = 250
RUN_TIMEOUT = 60.0


class WorkerProcess:
    """A worker started from tests/worker_process.py, with its stderr collected as it arrives.

    The worker logs a line per job, so stderr must be read continuously or the
    pipe fills up and blocks the worker.
    """

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.lines: list[str] = []
        self._reader = asyncio.create_task(self._read_stderr())

    @classmethod
    async def start(cls, url: str, schema: str, worker_id: str, *options: str) -> WorkerProcess:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            str(WORKER_PROCESS),
            url,
            schema,
            worker_id,
            *options,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        return cls(process)

    async def _read_stderr(self) -> None:
        assert self.process.stderr is not None
        async for raw in self.process.stderr:
            self.lines.append(raw.decode(errors="replace").rstrip())

    def output(self) -> str:
        return "\n".join(self.lines[-40:])

    async def wait_started(self) -> None:
        deadline = time.monotonic() + 20
        while not any(" started: " in line for line in self.lines):
            if self.process.returncode is not None or time.monotonic() > deadline:
                raise AssertionError(f"the worker did not start:\n{self.output()}")
            await asyncio.sleep(0.05)

    async def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(self.process.wait(), 30)
        await asyncio.wait_for(self._reader, 10)
        return code

    async def kill(self) -> None:
        """Kill the process if it still runs (cleanup after a failed test)."""
        if self.process.returncode is None:
            self.process.kill()
            await self.process.wait()
        self._reader.cancel()


def job_spec(number: int) -> gwcore.JobSpec:
    """Return the spec of job ``number``; every tenth job goes to one of five named queues."""
    queue_name = f"queue-{number % 5}" if number % 10 == 0 else None
    return gwcore.JobSpec.create("record", {"n": number}, queue_name=queue_name)


async def count(conn: psycopg.AsyncConnection[Any], template: str, schema: str) -> int:
    cursor = await conn.execute(sql.SQL(template).format(schema=sql.Identifier(schema)))
    row = await cursor.fetchone()
    assert row is not None
    return int(row[0])


async def test_two_processes_run_once_each(
    gw_database_url: str, gw_schema: str, gw_conn: psycopg.AsyncConnection[Any]
) -> None:
    await gw_conn.execute(
        sql.SQL("create table {}.runs (job_id bigint not null, worker_id text not null)").format(
            sql.Identifier(gw_schema)
        )
    )
    workers = [
        await WorkerProcess.start(
            gw_database_url,
            gw_schema,
            f"worker-process-{index}",
            "--concurrency",
            "4",
            "--poll-interval",
            "0.5",
        )
        for index in range(2)
    ]
    try:
        for worker in workers:
            await worker.wait_started()

        # Jobs are added in batches while both workers already run.
        added = 0
        while added < JOB_COUNT:
            specs = [job_spec(added + index) for index in range(BATCH_SIZE)]
            jobs = await gwcore.add_jobs(gw_conn, specs, schema=gw_schema, plugins=ADD_PLUGINS)
            assert len(jobs) == BATCH_SIZE
            added += BATCH_SIZE

        deadline = time.monotonic() + RUN_TIMEOUT
        while await count(gw_conn, "select count(*) from {schema}._private_jobs", gw_schema) > 0:
            outputs = "\n".join(worker.output() for worker in workers)
            assert time.monotonic() < deadline, f"jobs left after {RUN_TIMEOUT} s:\n{outputs}"
            assert all(worker.process.returncode is None for worker in workers), outputs
            await asyncio.sleep(0.2)

        codes = [await worker.stop() for worker in workers]
    finally:
        for worker in workers:
            await worker.kill()

    assert codes == [0, 0], "\n".join(worker.output() for worker in workers)
    assert await count(gw_conn, "select count(*) from {schema}.runs", gw_schema) == JOB_COUNT
    assert await count(gw_conn, "select count(distinct job_id) from {schema}.runs", gw_schema) == JOB_COUNT
    assert await count(gw_conn, "select count(*) from {schema}._private_jobs", gw_schema) == 0
    assert (
        await count(
            gw_conn,
            "select count(*) from {schema}._private_job_queues where locked_by is not null",
            gw_schema,
        )
        == 0
    )
    cursor = await gw_conn.execute(
        sql.SQL("select distinct worker_id from {}.runs order by worker_id").format(sql.Identifier(gw_schema))
    )
    assert await cursor.fetchall() == [("worker-process-0",), ("worker-process-1",)]
