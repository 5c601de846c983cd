"""Batch fetches of the local queue keep named queues serial across worker processes.

The test runs ``gw worker --processes 4 --local-queue-size 100`` on one schema,
adds jobs in five named queues and some jobs in no queue, and stops the
workers with SIGTERM once every job is done. Idle processes poll every 0.05 s,
so a queue often moves from one process to another between two of its jobs.

The ``serial`` task records each run in ``<schema>.serial_runs``: its queue,
job id, process id, `clock_timestamp()` at its start and end, and how many jobs
of its queue were locked at its start. Every timestamp comes from the one
database server, so the intervals of different processes can be compared.

If a batch fetch locked two jobs of one queue, the first of them would see
``locked_in_queue = 2`` at its start, and the two could run at once in two
slots or two processes, so their intervals would overlap.
"""

from __future__ import annotations

import itertools
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import NamedTuple

import psycopg
import pytest
from psycopg import sql

import gwcore

ADD_PLUGINS = gwcore.create_plugin_manager(builtins=False, entry_points=False)
PROCESSES = 4
SLOTS_PER_PROCESS = 3
LOCAL_QUEUE_SIZE = 100
QUEUES = 5
JOBS_PER_QUEUE = 200
UNQUEUED_JOBS = 200
JOB_COUNT = QUEUES * JOBS_PER_QUEUE + UNQUEUED_JOBS
BATCH_SIZE = 200
POLL_INTERVAL = 0.05
RUN_TIMEOUT = 60.0

SERIAL_TASK = '''\
"""Record the run of a job in <RESULTS_SCHEMA>.serial_runs, sleeping 2 ms between the two statements."""

import asyncio
import os

import psycopg
from psycopg import sql

SCHEMA = sql.Identifier(os.environ["RESULTS_SCHEMA"])
# The clock at the start, and how many jobs of this job's queue are locked now, this job included.
START = sql.SQL(
    "select clock_timestamp(), count(*) from {schema}._private_jobs "
    "where job_queue_id = %s and locked_at is not null"
).format(schema=SCHEMA)
RECORD = sql.SQL(
    "insert into {schema}.serial_runs "
    "(queue_name, job_id, pid, started_at, ended_at, locked_in_queue) "
    "values (%s, %s, %s, %s, clock_timestamp(), %s)"
).format(schema=SCHEMA)

# Idle connections of this process. A running job takes one and puts it back when it ends.
_idle = []


async def task(payload, ctx):
    if _idle:
        conn = _idle.pop()
    else:
        conn = await psycopg.AsyncConnection.connect(os.environ["RESULTS_URL"], autocommit=True)
    try:
        cursor = await conn.execute(START, [ctx.job.job_queue_id])
        started_at, locked_in_queue = await cursor.fetchone()
        await asyncio.sleep(0.002)
        values = [ctx.queue_name, ctx.id, os.getpid(), started_at, locked_in_queue]
        await conn.execute(RECORD, values)
    finally:
        _idle.append(conn)
'''

STARTED = re.compile(r"started worker process \d+ \(pid (\d+)\)")


class Run(NamedTuple):
    """One row of ``serial_runs``."""

    queue_name: str | None
    job_id: int
    pid: int
    started_at: datetime
    ended_at: datetime
    locked_in_queue: int


class SupervisorProcess:
    """A ``gw worker --processes`` process with the local queue on, whose stderr goes to ``log_path``."""

    def __init__(self, url: str, schema: str, folder: Path) -> None:
        self.log_path = folder / "gw.log"
        environment = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith("GW_") and key != "DATABASE_URL"
        }
        environment.update({"RESULTS_URL": url, "RESULTS_SCHEMA": schema})
        command = [sys.executable, "-m", "gwcore.cli", "worker", "-c", url, "-s", schema, "--tasks", "tasks"]
        command += ["--processes", str(PROCESSES), "-j", str(SLOTS_PER_PROCESS)]
        command += ["--local-queue-size", str(LOCAL_QUEUE_SIZE), "--poll-interval", str(POLL_INTERVAL)]
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                command, cwd=folder, env=environment, stdout=subprocess.DEVNULL, stderr=log
            )

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def tail(self) -> str:
        return "\n".join(self.log().splitlines()[-40:])

    def child_pids(self) -> list[int]:
        """Return the pid of every worker process that the supervisor logged as started."""
        return [int(pid) for pid in STARTED.findall(self.log())]

    def kill(self) -> None:
        """Kill the supervisor and its children if they still run (cleanup after a failed test)."""
        if self.process.poll() is not None:
            return
        for pid in self.child_pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.process.kill()
        self.process.wait()


@pytest.fixture
def supervisors() -> Iterator[list[SupervisorProcess]]:
    started: list[SupervisorProcess] = []
    yield started
    for supervisor in started:
        supervisor.kill()


@pytest.fixture
def tasks_folder(tmp_path: Path) -> Path:
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "serial.py").write_text(SERIAL_TASK, encoding="utf-8")
    return tmp_path


@pytest.fixture
def results_schema(gw_database_url: str, gw_schema: str) -> str:
    """The test schema, with the table ``serial_runs`` that the ``serial`` task writes to."""
    with psycopg.connect(gw_database_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL(
                "create table {}.serial_runs ("
                "queue_name text, job_id bigint not null, pid int not null, "
                "started_at timestamptz not null, ended_at timestamptz not null, "
                "locked_in_queue bigint not null)"
            ).format(sql.Identifier(gw_schema))
        )
    return gw_schema


def wait_until(condition: Callable[[], bool], supervisor: SupervisorProcess) -> None:
    """Poll ``condition`` until it holds. Fail after `RUN_TIMEOUT` or when the supervisor exits."""
    deadline = time.monotonic() + RUN_TIMEOUT
    while not condition():
        assert supervisor.process.poll() is None, f"the supervisor exited:\n{supervisor.tail()}"
        assert time.monotonic() < deadline, f"timed out after {RUN_TIMEOUT} s:\n{supervisor.tail()}"
        time.sleep(0.1)


def queue_of(number: int) -> str | None:
    """Return the queue of job ``number``: the queues take turns, and every sixth job has none."""
    index = number % (QUEUES + 1)
    return f"queue-{index}" if index < QUEUES else None


def add_serial_jobs(url: str, schema: str) -> list[int]:
    """Add `JOB_COUNT` jobs of the task ``serial`` in batches of `BATCH_SIZE` and return their ids.

    The batches are added one after another, so job-id order is also fetch order within a queue.
    """
    specs = [gwcore.JobSpec.create("serial", {}, queue_name=queue_of(number)) for number in range(JOB_COUNT)]
    ids: list[int] = []
    with psycopg.connect(url, autocommit=True) as conn:
        for start in range(0, JOB_COUNT, BATCH_SIZE):
            batch = specs[start : start + BATCH_SIZE]
            ids += [job.id for job in gwcore.add_jobs_sync(conn, batch, schema=schema, plugins=ADD_PLUGINS)]
    return ids


def count(url: str, template: str, schema: str) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(sql.SQL(template).format(schema=sql.Identifier(schema))).fetchone()
    assert row is not None
    return int(row[0])


def fetch_runs(url: str, schema: str) -> list[Run]:
    """Return every row of ``serial_runs``, each queue's runs in the order they started."""
    query = sql.SQL(
        "select queue_name, job_id, pid, started_at, ended_at, locked_in_queue "
        "from {}.serial_runs order by queue_name, started_at, job_id"
    ).format(sql.Identifier(schema))
    with psycopg.connect(url, autocommit=True) as conn:
        return [Run(*row) for row in conn.execute(query).fetchall()]


def test_batch_fetch_keeps_queues_serial(
    gw_database_url: str, results_schema: str, tasks_folder: Path, supervisors: list[SupervisorProcess]
) -> None:
    schema = results_schema
    supervisor = SupervisorProcess(gw_database_url, schema, tasks_folder)
    supervisors.append(supervisor)
    wait_until(lambda: supervisor.log().count(" started: ") >= PROCESSES, supervisor)

    job_ids = add_serial_jobs(gw_database_url, schema)
    jobs_left = "select count(*) from {schema}._private_jobs"
    wait_until(lambda: count(gw_database_url, jobs_left, schema) == 0, supervisor)
    supervisor.process.send_signal(signal.SIGTERM)
    code = supervisor.process.wait(RUN_TIMEOUT)

    assert code == 0, supervisor.tail()
    assert len(job_ids) == JOB_COUNT
    runs = fetch_runs(gw_database_url, schema)

    # Every job ran exactly once, and none is left.
    runs_per_job = Counter(run.job_id for run in runs)
    assert sorted(job_id for job_id, runs_of_job in runs_per_job.items() if runs_of_job > 1) == []
    assert sorted(runs_per_job) == sorted(job_ids)
    assert count(gw_database_url, jobs_left, schema) == 0
    locked_queues = "select count(*) from {schema}._private_job_queues where locked_by is not null"
    assert count(gw_database_url, locked_queues, schema) == 0

    # Each named queue ran one job at a time, in job-id order.
    by_queue: dict[str, list[Run]] = defaultdict(list)
    for run in runs:
        if run.queue_name is not None:
            by_queue[run.queue_name].append(run)
    assert sorted(by_queue) == [f"queue-{index}" for index in range(QUEUES)]
    assert [len(queue_runs) for queue_runs in by_queue.values()] == [JOBS_PER_QUEUE] * QUEUES

    overlaps = []
    out_of_order = []
    for queue_runs in by_queue.values():
        for previous, current in itertools.pairwise(queue_runs):
            if current.started_at < previous.ended_at:
                overlaps.append((current.queue_name, previous.job_id, current.job_id))
            if current.job_id < previous.job_id:
                out_of_order.append((current.queue_name, previous.job_id, current.job_id))
    assert overlaps == []
    assert out_of_order == []

    # At its start, each job of a named queue was the only locked job of its queue.
    queued_runs = [run for queue_runs in by_queue.values() for run in queue_runs]
    assert [run for run in queued_runs if run.locked_in_queue != 1] == []

    # More than one process ran jobs, and some named queue moved from one process to another.
    jobs_per_pid = Counter(run.pid for run in runs)
    pids_per_queue = {name: len({run.pid for run in queue_runs}) for name, queue_runs in by_queue.items()}
    moves = sum(
        previous.pid != current.pid
        for queue_runs in by_queue.values()
        for previous, current in itertools.pairwise(queue_runs)
    )
    print(f"jobs per process: {sorted(jobs_per_pid.values())}; processes per named queue: {pids_per_queue}")
    print(f"a named queue moved to another process between two of its jobs {moves} times")
    assert len(jobs_per_pid) > 1
    assert max(pids_per_queue.values()) > 1
