"""``gw worker --processes N``: one supervisor process running N worker processes.

The end-to-end tests run ``python -m gwcore.cli worker ... --processes 4`` with
a tasks directory whose ``record`` task inserts its job id into
``<schema>.runs``, and write the supervisor's stderr (which the children share)
to a file. The unit tests run `Supervisor` on small Python commands.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

import gwcore
from gwcore.supervisor import RestartPolicy, Supervisor, describe_exit

ADD_PLUGINS = gwcore.create_plugin_manager(builtins=False, entry_points=False)
PROCESSES = 4
JOB_COUNT = 20_000
BATCH_SIZE = 1_000
WAIT_TIMEOUT = 60.0
STARTED = re.compile(r"started worker process (\d+) \(pid (\d+)\)")

RECORD_TASK = '''\
"""Insert the job id into <RUNS_SCHEMA>.runs, over one connection per worker process."""

import asyncio
import os

import psycopg
from psycopg import sql

_lock = asyncio.Lock()
_connection = None


async def task(payload, ctx):
    global _connection
    async with _lock:
        if _connection is None:
            _connection = await psycopg.AsyncConnection.connect(os.environ["RUNS_URL"], autocommit=True)
    statement = sql.SQL("insert into {}.runs (job_id) values (%s)").format(
        sql.Identifier(os.environ["RUNS_SCHEMA"])
    )
    await _connection.execute(statement, [ctx.id])
    seconds = (payload or {}).get("seconds")
    if seconds:
        await asyncio.sleep(seconds)
'''


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------


class SupervisorProcess:
    """A ``gw worker --processes 4`` process whose stderr goes to ``log_path``."""

    def __init__(self, url: str, schema: str, folder: Path, *options: str) -> None:
        self.log_path = folder / "gw.log"
        environment = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith("GW_") and key != "DATABASE_URL"
        }
        environment.update({"RUNS_URL": url, "RUNS_SCHEMA": schema})
        command = [sys.executable, "-m", "gwcore.cli", "worker", "-c", url, "-s", schema]
        command += ["--tasks", "tasks", "--processes", str(PROCESSES), "-j", "4", "--poll-interval", "0.5"]
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [*command, *options], cwd=folder, env=environment, stdout=subprocess.DEVNULL, stderr=log
            )

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def tail(self) -> str:
        return "\n".join(self.log().splitlines()[-40:])

    def started(self) -> list[tuple[int, int]]:
        """Return (slot, pid) of every child started so far, in order."""
        return [(int(slot), int(pid)) for slot, pid in STARTED.findall(self.log())]

    def wait(self, timeout: float = WAIT_TIMEOUT) -> int:
        return self.process.wait(timeout)

    def kill(self) -> None:
        """Kill the supervisor and its children if they still run (cleanup after a failed test)."""
        if self.process.poll() is None:
            for _slot, pid in self.started():
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            self.process.kill()
            self.process.wait()


@pytest.fixture
def tasks_folder(tmp_path: Path) -> Path:
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "record.py").write_text(RECORD_TASK, encoding="utf-8")
    return tmp_path


@pytest.fixture
def runs_table(gw_database_url: str, gw_schema: str) -> str:
    with psycopg.connect(gw_database_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("create table {}.runs (job_id bigint not null)").format(sql.Identifier(gw_schema))
        )
    return gw_schema


@pytest.fixture
def supervisors() -> Iterator[list[SupervisorProcess]]:
    started: list[SupervisorProcess] = []
    yield started
    for supervisor in started:
        supervisor.kill()


def count(url: str, template: str, schema: str) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(sql.SQL(template).format(schema=sql.Identifier(schema))).fetchone()
    assert row is not None
    return int(row[0])


def add_records(url: str, schema: str, number: int, payload: dict[str, Any] | None = None) -> None:
    """Add ``number`` jobs of the task ``record``, in batches of `BATCH_SIZE`."""
    specs = [gwcore.JobSpec.create("record", payload or {}) for _ in range(number)]
    with psycopg.connect(url, autocommit=True) as conn:
        for start in range(0, number, BATCH_SIZE):
            batch = specs[start : start + BATCH_SIZE]
            jobs = gwcore.add_jobs_sync(conn, batch, schema=schema, plugins=ADD_PLUGINS)
            assert len(jobs) == len(batch)


def wait_until(
    condition: Callable[[], bool], describe: Callable[[], str], timeout: float = WAIT_TIMEOUT
) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout} s:\n{describe()}"
        time.sleep(0.1)


def wait_all_started(supervisor: SupervisorProcess, expected: int = PROCESSES) -> None:
    """Wait until ``expected`` children have logged that their worker started."""
    wait_until(
        lambda: supervisor.log().count(" started: ") >= expected or supervisor.process.poll() is not None,
        supervisor.tail,
    )
    assert supervisor.process.poll() is None, supervisor.tail()


def is_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


LOCKED_JOBS = "select count(*) from {schema}._private_jobs where locked_by is not null"
LOCKED_QUEUES = "select count(*) from {schema}._private_job_queues where locked_by is not null"


# ---------------------------------------------------------------------------
# gw worker --processes
# ---------------------------------------------------------------------------


def test_processes_run_jobs_once(
    gw_database_url: str, runs_table: str, tasks_folder: Path, supervisors: list[SupervisorProcess]
) -> None:
    schema = runs_table
    add_records(gw_database_url, schema, JOB_COUNT)

    started = time.monotonic()
    supervisor = SupervisorProcess(gw_database_url, schema, tasks_folder, "--once")
    supervisors.append(supervisor)
    code = supervisor.wait(timeout=100)
    elapsed = time.monotonic() - started
    print(f"{JOB_COUNT} jobs with {PROCESSES} processes x 4 slots: {elapsed:.1f} s")

    assert code == 0, supervisor.tail()
    assert len(supervisor.started()) == PROCESSES, supervisor.tail()
    assert supervisor.log().count("finished: no runnable job is left") == PROCESSES
    assert count(gw_database_url, "select count(*) from {schema}.runs", schema) == JOB_COUNT
    assert count(gw_database_url, "select count(distinct job_id) from {schema}.runs", schema) == JOB_COUNT
    assert count(gw_database_url, "select count(*) from {schema}._private_jobs", schema) == 0


def test_sigterm_stops_all_processes(
    gw_database_url: str, runs_table: str, tasks_folder: Path, supervisors: list[SupervisorProcess]
) -> None:
    schema = runs_table
    supervisor = SupervisorProcess(gw_database_url, schema, tasks_folder)
    supervisors.append(supervisor)
    wait_all_started(supervisor)
    add_records(gw_database_url, schema, 40, {"seconds": 0.5})
    wait_until(lambda: count(gw_database_url, LOCKED_JOBS, schema) > 0, supervisor.tail)

    supervisor.process.send_signal(signal.SIGTERM)
    code = supervisor.wait()

    assert code == 0, supervisor.tail()
    children = [pid for _slot, pid in supervisor.started()]
    assert len(children) == PROCESSES
    assert [pid for pid in children if is_running(pid)] == []
    assert len(re.findall(r"worker process \d \(pid \d+\) stopped", supervisor.log())) == PROCESSES
    assert "restarting" not in supervisor.log()
    assert count(gw_database_url, LOCKED_JOBS, schema) == 0
    assert count(gw_database_url, LOCKED_QUEUES, schema) == 0
    runs = count(gw_database_url, "select count(*) from {schema}.runs", schema)
    left = count(gw_database_url, "select count(*) from {schema}._private_jobs", schema)
    assert runs + left == 40


def test_killed_process_restarted(
    gw_database_url: str, runs_table: str, tasks_folder: Path, supervisors: list[SupervisorProcess]
) -> None:
    schema = runs_table
    supervisor = SupervisorProcess(gw_database_url, schema, tasks_folder)
    supervisors.append(supervisor)
    wait_all_started(supervisor)
    slot, victim = supervisor.started()[0]

    os.kill(victim, signal.SIGKILL)
    wait_until(lambda: len(supervisor.started()) > PROCESSES, supervisor.tail)
    wait_all_started(supervisor, PROCESSES + 1)
    add_records(gw_database_url, schema, 200)
    wait_until(
        lambda: count(gw_database_url, "select count(*) from {schema}._private_jobs", schema) == 0,
        supervisor.tail,
    )
    supervisor.process.send_signal(signal.SIGTERM)
    code = supervisor.wait()

    log = supervisor.log()
    assert f"worker process {slot} (pid {victim}) was killed by SIGKILL" in log
    replacement = supervisor.started()[PROCESSES]
    assert replacement[0] == slot
    assert replacement[1] != victim
    assert code == 0, supervisor.tail()
    assert count(gw_database_url, "select count(*) from {schema}.runs", schema) == 200
    assert count(gw_database_url, "select count(distinct job_id) from {schema}.runs", schema) == 200


def test_failing_import_exits_2(
    gw_database_url: str, gw_schema: str, tmp_path: Path, supervisors: list[SupervisorProcess]
) -> None:
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "broken.py").write_text(
        "raise RuntimeError('broken on import')\n", encoding="utf-8"
    )

    supervisor = SupervisorProcess(gw_database_url, gw_schema, tmp_path)
    supervisors.append(supervisor)
    code = supervisor.wait()

    log = supervisor.log()
    assert code == 2, supervisor.tail()
    assert "broken on import" in log
    assert "which a restart cannot fix" in log
    assert "restarting" not in log
    assert len(supervisor.started()) == PROCESSES


def test_processes_zero_rejected(gw_database_url: str, gw_schema: str, tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "gwcore.cli",
            "worker",
            "-c",
            gw_database_url,
            "-s",
            gw_schema,
            "--processes",
            "0",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=WAIT_TIMEOUT,
        check=False,
    )

    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "--processes" in result.stderr
    assert "0 is out of range" in result.stderr
    assert ">= 1" in result.stderr


# ---------------------------------------------------------------------------
# Supervisor on small commands
# ---------------------------------------------------------------------------

FAST_POLICY = RestartPolicy(initial_delay=0.01, max_delay=0.05, max_restarts=3, window=60)


def python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


async def test_supervisor_restart_limit(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="gwcore.supervisor")
    supervisor = Supervisor(python("raise SystemExit(3)"), 1, policy=FAST_POLICY, handle_signals=False)

    code = await asyncio.wait_for(supervisor.run(), WAIT_TIMEOUT)

    starts = [record for record in caplog.records if record.getMessage().startswith("started worker process")]
    assert code == 1
    assert len(starts) == 1 + FAST_POLICY.max_restarts
    assert caplog.text.count("restarting it in") == FAST_POLICY.max_restarts
    assert "more than 3 restarts within 60 s" in caplog.text


async def test_supervisor_fatal_code_57(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="gwcore.supervisor")
    supervisor = Supervisor(python("raise SystemExit(57)"), 1, policy=FAST_POLICY, handle_signals=False)

    code = await asyncio.wait_for(supervisor.run(), WAIT_TIMEOUT)

    assert code == 57
    assert "restarting" not in caplog.text


async def test_supervisor_once_no_restart(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="gwcore.supervisor")
    supervisor = Supervisor(python("pass"), 3, once=True, policy=FAST_POLICY, handle_signals=False)

    code = await asyncio.wait_for(supervisor.run(), WAIT_TIMEOUT)

    starts = [record for record in caplog.records if record.getMessage().startswith("started worker process")]
    assert code == 0
    assert len(starts) == 3
    assert "restarting" not in caplog.text


async def test_supervisor_forwards_stop(tmp_path: Path) -> None:
    child = (
        "import os, pathlib, signal, sys, time\n"
        f"folder = pathlib.Path({str(tmp_path)!r})\n"
        "def stop(*_):\n"
        "    (folder / f'stopped-{os.getpid()}').touch()\n"
        "    sys.exit(0)\n"
        "signal.signal(signal.SIGTERM, stop)\n"
        "(folder / f'ready-{os.getpid()}').touch()\n"
        "time.sleep(60)\n"
    )
    supervisor = Supervisor(python(child), 2, policy=FAST_POLICY, handle_signals=False)
    run = asyncio.create_task(supervisor.run())
    deadline = time.monotonic() + WAIT_TIMEOUT
    while len(list(tmp_path.glob("ready-*"))) < 2:  # noqa: ASYNC240 - a few files in a test folder
        assert time.monotonic() < deadline, "the children did not start"
        await asyncio.sleep(0.05)
    pids = sorted(supervisor.pids.values())

    supervisor.stop(signal.SIGTERM)
    code = await asyncio.wait_for(run, WAIT_TIMEOUT)

    assert code == 0
    stopped = tmp_path.glob("stopped-*")  # noqa: ASYNC240 - a few files in a test folder
    assert sorted(int(path.name.split("-")[1]) for path in stopped) == pids
    assert supervisor.pids == {}
    assert [pid for pid in pids if is_running(pid)] == []


def test_describe_exit_codes() -> None:
    assert describe_exit(1) == "exited with 1"
    assert describe_exit(-signal.SIGKILL) == "was killed by SIGKILL"
