"""The admin and inspection commands of ``gw``, run as subprocesses against the test database.

Job ids start at 3000000000, above the int4 range, so every command must handle bigint ids.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.rows import dict_row

from gwcore import cli
from gwcore.job import Job

FIRST_JOB_ID = 3_000_000_000
FUTURE = datetime(2031, 5, 6, 7, 8, 9, tzinfo=UTC)
COMMAND_TIMEOUT = 60.0
UNUSED_URL = "postgresql://postgres@127.0.0.1:1/unused"  # never reached: argparse fails first


def run_gw(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run ``gw ARGS`` in ``cwd`` with DATABASE_URL removed from the environment."""
    environment = {key: value for key, value in os.environ.items() if key != "DATABASE_URL"}
    return subprocess.run(
        [sys.executable, "-m", "gwcore.cli", *args],
        cwd=cwd,
        env=environment,
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT,
        check=False,
    )


class Gw:
    """Runs ``gw`` against one schema and reads and writes that schema's rows directly."""

    def __init__(self, url: str, schema: str, cwd: Path) -> None:
        self.url = url
        self.schema = schema
        self.cwd = cwd

    def __call__(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run ``gw ARGS -c URL -s SCHEMA`` with logs at WARNING, so stderr holds only gw's messages."""
        return run_gw(*args, "-c", self.url, "-s", self.schema, "--log-level", "WARNING", cwd=self.cwd)

    def execute(self, template: str, *params: Any) -> list[dict[str, Any]]:
        query = sql.SQL(template).format(schema=sql.Identifier(self.schema))
        with psycopg.connect(self.url, autocommit=True, row_factory=dict_row) as conn:
            cursor = conn.execute(query, params)
            return cursor.fetchall() if cursor.description else []

    def add(
        self,
        identifier: str,
        payload: Any = None,
        *,
        queue: str | None = None,
        run_at: datetime | None = None,
        max_attempts: int | None = None,
        key: str | None = None,
        priority: int | None = None,
    ) -> int:
        rows = self.execute(
            "select id from {schema}.add_job(%s, %s::json, queue_name => %s, run_at => %s,"
            " max_attempts => %s, job_key => %s, priority => %s)",
            identifier,
            None if payload is None else json.dumps(payload),
            queue,
            run_at,
            max_attempts,
            key,
            priority,
        )
        return int(rows[0]["id"])

    def lock(self, job_id: int, worker_id: str = "w1", age: str = "1 minute") -> None:
        """Lock the job, and its queue if it has one, for ``worker_id`` as a fetch did ``age`` ago."""
        self.execute(
            "update {schema}._private_jobs set locked_by = %s, locked_at = now() - %s::interval,"
            " attempts = attempts + 1 where id = %s",
            worker_id,
            age,
            job_id,
        )
        self.execute(
            "update {schema}._private_job_queues set locked_by = %s, locked_at = now() - %s::interval"
            " where id = (select job_queue_id from {schema}._private_jobs where id = %s)",
            worker_id,
            age,
            job_id,
        )

    def fail_attempt(self, job_id: int, error: str = "boom") -> None:
        """Record one failed attempt, as a worker does, with the retry due in the future."""
        self.execute(
            "update {schema}._private_jobs set attempts = attempts + 1, last_error = %s, run_at = %s"
            " where id = %s",
            error,
            FUTURE,
            job_id,
        )

    def row(self, job_id: int) -> dict[str, Any] | None:
        rows = self.execute("select * from {schema}._private_jobs where id = %s", job_id)
        return rows[0] if rows else None

    def job_ids(self) -> list[int]:
        return [row["id"] for row in self.execute("select id from {schema}._private_jobs order by id")]

    def names(self, table: str, column: str) -> list[str]:
        rows = self.execute(f"select {column} as name from {{schema}}.{table} order by {column}")
        return [row["name"] for row in rows]


@pytest.fixture
def gw(gw_database_url: str, gw_schema: str, tmp_path: Path) -> Gw:
    runner = Gw(gw_database_url, gw_schema, tmp_path)
    runner.execute(
        "select setval(pg_get_serial_sequence(%s, 'id'), %s, false)",
        f'"{gw_schema}"._private_jobs',
        FIRST_JOB_ID,
    )
    return runner


def table_rows(output: str) -> list[list[str]]:
    """Split a table that gw printed into rows of cells, which are separated by two or more spaces."""
    return [re.split(r" {2,}", line.strip()) for line in output.splitlines() if line.strip()]


def json_lines(output: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in output.splitlines()]


def add_jobs_in_every_state(gw: Gw) -> dict[str, int]:
    """Add one job per state, of tasks a and b, some in queues q and r. Worker w1 locks the locked one."""
    jobs = {
        "ready": gw.add("a", queue="q", key="k" * 60, priority=3),
        "scheduled": gw.add("b", run_at=FUTURE),
        "locked": gw.add("a", queue="q"),
        "failed": gw.add("b", queue="r"),
        "permafailed": gw.add("a", max_attempts=1),
    }
    gw.lock(jobs["locked"])
    gw.fail_attempt(jobs["failed"])
    gw.fail_attempt(jobs["permafailed"])
    return jobs


# ---------------------------------------------------------------------------
# gw jobs
# ---------------------------------------------------------------------------


def test_jobs_table_shows_states(gw: Gw) -> None:
    jobs = add_jobs_in_every_state(gw)

    result = gw("jobs")

    assert result.returncode == 0, result.stderr
    rows = table_rows(result.stdout)
    assert rows[0] == ["ID", "TASK", "QUEUE", "PRIORITY", "RUN_AT", "ATTEMPTS", "STATE", "KEY"]
    by_id = {int(row[0]): row for row in rows[1:]}
    assert list(by_id) == list(jobs.values())
    assert by_id[jobs["ready"]][1:4] == ["a", "q", "3"]
    assert by_id[jobs["ready"]][5:] == ["0/25", "ready", "k" * 37 + "..."]
    assert by_id[jobs["scheduled"]][2] == "-"
    assert by_id[jobs["scheduled"]][4] == "2031-05-06T07:08:09+00:00"
    assert by_id[jobs["scheduled"]][6] == "scheduled"
    assert by_id[jobs["locked"]][5:7] == ["1/25", "locked by w1"]
    assert by_id[jobs["failed"]][5:7] == ["1/25", "failed"]
    assert by_id[jobs["permafailed"]][5:7] == ["1/1", "permanently_failed"]
    assert result.stderr == ""


def test_jobs_filters_select_jobs(gw: Gw) -> None:
    jobs = add_jobs_in_every_state(gw)
    cases: list[tuple[list[str], list[str]]] = [
        (["--task", "a"], ["ready", "locked", "permafailed"]),
        (["--queue", "q"], ["ready", "locked"]),
        (["--state", "ready"], ["ready"]),
        (["--state", "scheduled"], ["scheduled"]),
        (["--state", "locked"], ["locked"]),
        (["--state", "failed"], ["failed"]),
        (["--state", "permanently_failed"], ["permafailed"]),
        (["--task", "b", "--queue", "r", "--state", "failed"], ["failed"]),
        (["--limit", "2"], ["ready", "scheduled"]),
        (["--task", "nothing"], []),
    ]

    for options, expected in cases:
        result = gw("jobs", "--json", *options)

        assert result.returncode == 0, (options, result.stderr)
        listed = [item["id"] for item in json_lines(result.stdout)]
        assert listed == [jobs[name] for name in expected], options
        if options == ["--limit", "2"]:
            assert (
                "listed 2 job(s), the --limit; more may match, so raise --limit to see them" in result.stderr
            )
        if not expected:
            assert result.stdout == ""


def test_jobs_json_every_field(gw: Gw) -> None:
    job_id = gw.add("send_email", {"to": "someone@example.com", "n": [1, 2]}, queue="mail", run_at=FUTURE)

    result = gw("jobs", "--json")

    assert result.returncode == 0, result.stderr
    (item,) = json_lines(result.stdout)
    row = gw.row(job_id)
    assert row is not None
    assert set(item) == {field.name for field in fields(Job)}
    assert item["id"] == job_id
    assert item["task_identifier"] == "send_email"
    assert item["queue_name"] == "mail"
    assert item["payload"] == {"to": "someone@example.com", "n": [1, 2]}
    assert datetime.fromisoformat(item["run_at"]) == FUTURE
    assert datetime.fromisoformat(item["created_at"]) == row["created_at"]
    assert item["locked_at"] is None


# ---------------------------------------------------------------------------
# gw jobs show
# ---------------------------------------------------------------------------


def test_jobs_show_found(gw: Gw) -> None:
    job_id = gw.add("send_email", {"to": "someone@example.com"}, queue="mail", key="welcome")
    gw.fail_attempt(job_id, "SMTP timed out\nafter 30 s")

    table = gw("jobs", "show", str(job_id))
    # -c and -s given to `gw jobs`, before `show`, must reach the show command.
    as_json = run_gw("jobs", "-c", gw.url, "-s", gw.schema, "--json", "show", str(job_id), cwd=gw.cwd)

    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert f"id:         {job_id}" in lines
    assert "task:       send_email" in lines
    assert "queue:      mail" in lines
    assert "state:      failed" in lines
    assert "attempts:   1 of 25" in lines
    assert "key:        welcome" in lines
    assert "run_at:     2031-05-06T07:08:09+00:00" in lines
    payload_start = lines.index("payload:")
    assert lines[payload_start + 1 : payload_start + 4] == ["  {", '    "to": "someone@example.com"', "  }"]
    assert lines[-3:] == ["last_error:", "  SMTP timed out", "  after 30 s"]
    assert as_json.returncode == 0, as_json.stderr
    item = json.loads(as_json.stdout)
    assert item["id"] == job_id
    assert item["last_error"] == "SMTP timed out\nafter 30 s"
    assert item["payload"] == {"to": "someone@example.com"}


def test_jobs_show_not_found(gw: Gw) -> None:
    gw.add("send_email")

    result = gw("jobs", "show", str(FIRST_JOB_ID + 99))

    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr == f"gw: error: job {FIRST_JOB_ID + 99} not found\n"


# ---------------------------------------------------------------------------
# gw queues and gw stats
# ---------------------------------------------------------------------------


def test_queues_table_and_json(gw: Gw) -> None:
    add_jobs_in_every_state(gw)
    gw.add("c", queue="q")

    table = gw("queues")
    as_json = gw("queues", "--json")

    assert table.returncode == 0, table.stderr
    rows = table_rows(table.stdout)
    assert rows[0] == ["QUEUE", "JOBS", "LOCKED_BY", "LOCKED_AT"]
    assert rows[1][:3] == ["q", "3", "w1"]
    assert datetime.fromisoformat(rows[1][3]) > datetime(2000, 1, 1, tzinfo=UTC)
    assert rows[2] == ["r", "1", "-", "-"]
    assert len(rows) == 3
    assert as_json.returncode == 0, as_json.stderr
    items = json_lines(as_json.stdout)
    assert [(item["queue_name"], item["job_count"], item["locked_by"]) for item in items] == [
        ("q", 3, "w1"),
        ("r", 1, None),
    ]
    assert items[1]["locked_at"] is None


def test_stats_table_and_json(gw: Gw) -> None:
    add_jobs_in_every_state(gw)

    table = gw("stats")
    as_json = gw("stats", "--json")

    assert table.returncode == 0, table.stderr
    assert table_rows(table.stdout) == [
        ["TASK", "TOTAL", "READY", "SCHEDULED", "LOCKED", "FAILED", "PERMANENTLY_FAILED"],
        ["a", "3", "1", "0", "1", "0", "1"],
        ["b", "2", "0", "1", "0", "1", "0"],
        ["(all tasks)", "5", "1", "1", "1", "1", "1"],
    ]
    assert as_json.returncode == 0, as_json.stderr
    document = json.loads(as_json.stdout)
    assert document["total"] == 5
    assert document["states"] == {
        "ready": 1,
        "scheduled": 1,
        "locked": 1,
        "failed": 1,
        "permanently_failed": 1,
    }
    assert [item["task_identifier"] for item in document["tasks"]] == ["a", "b"]
    assert document["tasks"][1] == {
        "task_identifier": "b",
        "total": 2,
        "ready": 0,
        "scheduled": 1,
        "locked": 0,
        "failed": 1,
        "permanently_failed": 0,
    }


def test_schema_not_installed(gw_database_url: str, gw_schema_name: str, tmp_path: Path) -> None:
    result = Gw(gw_database_url, gw_schema_name, tmp_path)("stats")

    assert result.returncode == 2
    assert f"the schema '{gw_schema_name}' is not installed" in result.stderr
    assert f"gw migrate -s {gw_schema_name}" in result.stderr
    assert "Traceback" not in result.stderr


# ---------------------------------------------------------------------------
# gw complete, gw fail, gw reschedule
# ---------------------------------------------------------------------------


def test_complete_matching_ids(gw: Gw) -> None:
    first = gw.add("a")
    stale = gw.add("a")
    untouched = gw.add("a")
    gw.lock(stale, age="5 hours")  # a lock over 4 hours old belongs to a crashed worker

    result = gw("complete", str(first), str(stale), str(first))

    assert result.returncode == 0, result.stderr
    assert result.stdout == f"completed 2 job(s): {first}, {stale}\n"
    assert gw.job_ids() == [untouched]


def test_fail_matching_ids(gw: Gw) -> None:
    first = gw.add("a")
    second = gw.add("b", max_attempts=5)

    result = gw("fail", str(first), str(second), "--reason", "bad payload")

    assert result.returncode == 0, result.stderr
    assert result.stdout == f"permanently failed 2 job(s): {first}, {second}\n"
    for job_id, max_attempts in ((first, 25), (second, 5)):
        row = gw.row(job_id)
        assert row is not None
        assert row["attempts"] == max_attempts
        assert row["last_error"] == "bad payload"


def test_reschedule_matching_ids(gw: Gw) -> None:
    first = gw.add("a")
    second = gw.add("a")
    gw.fail_attempt(second)

    result = gw(
        "reschedule",
        str(first),
        str(second),
        "--run-at",
        "2031-05-06T09:08:09+02:00",
        "--priority",
        "-7",
        "--attempts",
        "0",
        "--max-attempts",
        "3",
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout == (
        f"rescheduled 2 job(s): {first}, {second} "
        "(run_at 2031-05-06T07:08:09+00:00, priority -7, attempts 0, max_attempts 3)\n"
    )
    for job_id in (first, second):
        row = gw.row(job_id)
        assert row is not None
        assert row["run_at"] == FUTURE
        assert row["priority"] == -7
        assert row["attempts"] == 0
        assert row["max_attempts"] == 3


ACTIONS: dict[str, tuple[list[str], str]] = {
    "complete": ([], "completed"),
    "fail": (["--reason", "stop"], "permanently failed"),
    "reschedule": (["--priority", "9"], "rescheduled"),
}


@pytest.mark.parametrize("command", list(ACTIONS))
def test_action_mixed_ids(gw: Gw, command: str) -> None:
    options, verb = ACTIONS[command]
    free = gw.add("a")
    locked = gw.add("a")
    gw.lock(locked, "w1")
    missing = FIRST_JOB_ID + 99
    locked_before = gw.row(locked)

    result = gw(command, str(free), str(missing), str(locked), *options)

    assert result.returncode == 1
    assert result.stdout.startswith(f"{verb} 1 job(s): {free}")
    assert f"2 of 3 job id(s) matched no job that could be {verb}" in result.stderr
    assert f"{missing} (not found)" in result.stderr
    assert f"{locked} (locked by worker w1 since " in result.stderr
    assert "gw unlock w1" in result.stderr
    assert "Traceback" not in result.stderr
    assert gw.row(locked) == locked_before
    free_row = gw.row(free)
    if command == "complete":
        assert free_row is None
    elif command == "fail":
        assert free_row is not None
        assert free_row["last_error"] == "stop"
    else:
        assert free_row is not None
        assert free_row["priority"] == 9


def test_action_nothing_matched(gw: Gw) -> None:
    locked = gw.add("a")
    gw.lock(locked, "w1")
    locked_before = gw.row(locked)

    only_missing = gw("complete", str(FIRST_JOB_ID + 98), str(FIRST_JOB_ID + 99))
    only_locked = gw("fail", str(locked))

    assert only_missing.returncode == 1
    assert only_missing.stdout == ""
    assert only_missing.stderr == (
        "gw: error: 2 of 2 job id(s) matched no job that could be completed: "
        f"{FIRST_JOB_ID + 98} (not found), {FIRST_JOB_ID + 99} (not found)\n"
    )
    assert only_locked.returncode == 1
    assert only_locked.stdout == ""
    assert f"{locked} (locked by worker w1 since " in only_locked.stderr
    assert gw.row(locked) == locked_before


def test_invalid_input_rejected(gw: Gw) -> None:
    job_id = gw.add("a")
    before = gw.row(job_id)
    cases: list[tuple[list[str], str]] = [
        (["complete", str(job_id), "abc"], "argument ID: 'abc' is not a job id; a job id is a whole number"),
        (["reschedule", "9223372036854775808", "--priority", "1"], "9223372036854775808 is out of range"),
        (["reschedule", str(job_id)], "gw reschedule has nothing to change; pass at least one of --run-at"),
    ]

    for args, message in cases:
        result = gw(*args)

        assert result.returncode == 2, args
        assert message in result.stderr, args
        assert "Traceback" not in result.stderr, args
        assert result.stdout == "", args
    assert gw.row(job_id) == before


# argparse rejects these before gw connects, so they run in this process, which is faster.
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["complete", "0"], "argument ID: 0 is out of range; a job id is a whole number from 1"),
        (["fail", "-5"], "argument ID: '-5' is not a job id"),
        (["fail", "1_000"], "argument ID: '1_000' is not a job id"),
        (["jobs", "show", "1.5"], "argument ID: '1.5' is not a job id"),
        (["jobs", "--limit", "0"], "argument --limit: '0' is invalid; pass a whole number from 1"),
        (["reschedule", "1", "--priority", "40000"], "argument --priority: 40000 is out of range"),
        (["reschedule", "1", "--attempts", "-1"], "argument --attempts: -1 is out of range"),
        (["reschedule", "1", "--run-at", "2030-01-01T09:00:00"], "'2030-01-01T09:00:00' has no UTC offset"),
        (["cleanup", "--task", "VACUUM"], "argument --task: invalid choice: 'VACUUM'"),
        (["remove", "k" * 513], "argument JOB_KEY: the key has 513 characters; a job key has 1 to 512"),
        (["unlock", ""], "argument WORKER_ID: '' is invalid; pass a non-empty name"),
    ],
)
def test_invalid_argument_rejected(capsys: pytest.CaptureFixture[str], args: list[str], message: str) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main([*args, "-c", UNUSED_URL])

    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


# ---------------------------------------------------------------------------
# gw remove, gw unlock, gw cleanup
# ---------------------------------------------------------------------------


def test_remove_by_job_key(gw: Gw) -> None:
    removed = gw.add("a", key="welcome")
    locked = gw.add("a", key="running")
    gw.lock(locked, "w1")

    found = gw("remove", "welcome")
    missing = gw("remove", "nobody")
    running = gw("remove", "running")

    assert found.returncode == 0, found.stderr
    assert found.stdout == f"removed 1 job: {removed} with the key 'welcome'\n"
    assert gw.row(removed) is None
    assert missing.returncode == 1
    assert missing.stderr == "gw: error: no job has the key 'nobody'\n"
    assert running.returncode == 1
    assert f"cleared the key and the retries of job {locked}" in running.stdout
    assert f"job {locked} with the key 'running' was not deleted because worker w1 locks it" in running.stderr
    row = gw.row(locked)
    assert row is not None
    assert row["key"] is None
    assert row["attempts"] == row["max_attempts"]
    assert row["locked_by"] == "w1"


def test_unlock_given_workers(gw: Gw) -> None:
    queued = gw.add("a", queue="q")
    plain = gw.add("a")
    other = gw.add("a")
    gw.lock(queued, "w1")
    gw.lock(plain, "w1")
    gw.lock(other, "w2")

    first = gw("unlock", "w1")

    assert first.returncode == 0, first.stderr
    assert first.stdout == "unlocked 2 job(s) and 1 queue(s) of worker(s): w1\n"
    for job_id in (queued, plain):
        row = gw.row(job_id)
        assert row is not None
        assert row["locked_by"] is None
        assert row["locked_at"] is None
    assert gw.execute("select locked_by from {schema}._private_job_queues") == [{"locked_by": None}]
    other_row = gw.row(other)
    assert other_row is not None
    assert other_row["locked_by"] == "w2"

    second = gw("unlock", "w2", "w9")

    assert second.returncode == 1
    assert second.stdout == "unlocked 1 job(s) and 0 queue(s) of worker(s): w2\n"
    assert "1 of 2 worker(s) locked no job and no queue: w9" in second.stderr
    other_row = gw.row(other)
    assert other_row is not None
    assert other_row["locked_by"] is None


def test_cleanup_each_task(gw: Gw) -> None:
    dead = gw.add("dead", queue="dead_queue", max_attempts=1)
    busy = gw.add("busy", queue="busy_queue", max_attempts=1)
    gw.fail_attempt(dead)
    gw.lock(busy, "w1", age="1 minute")  # the fetch used the only attempt, so busy has none left
    gw.execute("insert into {schema}._private_tasks (identifier) values ('unused'), ('kept')")
    gw.execute("insert into {schema}._private_job_queues (queue_name) values ('empty_queue')")

    delete_jobs = gw("cleanup", "--task", "DELETE_PERMAFAILED_JOBS")

    assert delete_jobs.returncode == 0, delete_jobs.stderr
    assert delete_jobs.stdout == "DELETE_PERMAFAILED_JOBS: deleted 1 permanently failed job(s)\n"
    assert gw.job_ids() == [busy]
    assert gw.names("_private_tasks", "identifier") == ["busy", "dead", "kept", "unused"]

    gc_tasks = gw("cleanup", "--task", "GC_TASK_IDENTIFIERS", "--keep-task", "kept")

    assert gc_tasks.returncode == 0, gc_tasks.stderr
    assert gc_tasks.stdout == "GC_TASK_IDENTIFIERS: deleted 2 unused task identifier(s)\n"
    assert gw.names("_private_tasks", "identifier") == ["busy", "kept"]
    assert gw.names("_private_job_queues", "queue_name") == ["busy_queue", "dead_queue", "empty_queue"]

    gc_queues = gw("cleanup", "--task", "GC_JOB_QUEUES")

    assert gc_queues.returncode == 0, gc_queues.stderr
    assert gc_queues.stdout == "GC_JOB_QUEUES: deleted 2 unused queue(s)\n"
    assert gw.names("_private_job_queues", "queue_name") == ["busy_queue"]

    every_task = gw("cleanup")

    assert every_task.returncode == 0, every_task.stderr
    assert every_task.stdout == (
        "DELETE_PERMAFAILED_JOBS: deleted 0 permanently failed job(s)\n"
        "GC_TASK_IDENTIFIERS: deleted 1 unused task identifier(s)\n"
        "GC_JOB_QUEUES: deleted 0 unused queue(s)\n"
    )
    assert gw.names("_private_tasks", "identifier") == ["busy"]


# ---------------------------------------------------------------------------
# Help text
# ---------------------------------------------------------------------------


def help_text(command: Sequence[str], cwd: Path) -> str:
    result = run_gw(*command, "--help", cwd=cwd)
    assert result.returncode == 0, result.stderr
    return " ".join(result.stdout.split())


def test_help_names_defaults(tmp_path: Path) -> None:
    jobs = help_text(["jobs"], tmp_path)
    reschedule = help_text(["reschedule"], tmp_path)

    assert "list at most N jobs, the lowest ids first (default: 100)" in jobs
    assert "--state {ready,scheduled,locked,failed,permanently_failed}" in jobs
    assert "ISO 8601 with a UTC offset" in reschedule
    assert "new priority, lower runs first, -32768 to 32767 (default: unchanged)" in reschedule
