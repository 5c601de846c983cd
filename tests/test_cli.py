"""The ``gw`` command, run as a subprocess against the test database.

Each test runs ``python -m gwcore.cli`` in its own temporary working directory,
with ``DATABASE_URL`` removed from the environment unless the test sets it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.rows import dict_row

from gwcore.errors import SchemaTooNewError
from gwcore.testing import drop_schema

DATA = Path(__file__).parent / "data"
UNREACHABLE_URL = "postgresql://postgres@127.0.0.1:1/test"
COMMAND_TIMEOUT = 60.0


def run_gw(
    *args: str,
    cwd: Path,
    env: Mapping[str, str] | None = None,
    timeout: float = COMMAND_TIMEOUT,
) -> subprocess.CompletedProcess[str]:
    """Run ``gw ARGS`` in ``cwd`` with DATABASE_URL removed from the environment, plus ``env``."""
    environment = {key: value for key, value in os.environ.items() if key != "DATABASE_URL"}
    environment.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "gwcore.cli", *args],
        cwd=cwd,
        env=environment,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def fetch_jobs(url: str, schema: str) -> list[dict[str, Any]]:
    """Return every job of ``schema`` from its ``jobs`` view, with the payload, oldest first."""
    query = sql.SQL(
        "select v.*, p.payload from {schema}.jobs v join {schema}._private_jobs p using (id) order by v.id"
    ).format(schema=sql.Identifier(schema))
    with psycopg.connect(url, autocommit=True, row_factory=dict_row) as conn:
        return conn.execute(query).fetchall()


def option_help(help_text: str, option: str) -> str:
    """Return the help entry of ``option`` (or a positional argument) from argparse output, on one line.

    argparse indents an entry's first line by two spaces and its continuation lines by more.
    """
    lines = help_text.splitlines()
    for index, line in enumerate(lines):
        if not line.startswith("  ") or line.startswith("   "):
            continue
        invocation = line.strip().split("  ")[0]
        if option not in [part.split(" ")[0] for part in invocation.split(", ")]:
            continue
        entry = [line.strip()]
        for following in lines[index + 1 :]:
            if not following.startswith("   "):
                break
            entry.append(following.strip())
        return " ".join(entry)
    raise AssertionError(f"option {option} is missing from the help text:\n{help_text}")


@pytest.fixture
def fresh_schema(gw_database_url: str, gw_schema_name: str) -> Iterator[str]:
    """A schema name with nothing installed yet, dropped after the test."""
    try:
        yield gw_schema_name
    finally:
        drop_schema(gw_database_url, gw_schema_name)


# ---------------------------------------------------------------------------
# gw migrate
# ---------------------------------------------------------------------------


def read_migrations(url: str, schema: str) -> list[tuple[int, datetime, bool]]:
    """Return the rows of ``schema.migrations``: id, timestamp and whether it is breaking."""
    query = sql.SQL("select id, ts, breaking from {}.migrations order by id").format(sql.Identifier(schema))
    with psycopg.connect(url, autocommit=True) as conn:
        return [(row[0], row[1], row[2]) for row in conn.execute(query).fetchall()]


def relation_exists(url: str, name: str) -> bool:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("select to_regclass(%s) is not null", [name]).fetchone()
    assert row is not None
    return bool(row[0])


def test_migrate_installs_schema(gw_database_url: str, fresh_schema: str, tmp_path: Path) -> None:
    assert not relation_exists(gw_database_url, f'"{fresh_schema}".jobs')

    result = run_gw("migrate", "-c", gw_database_url, "-s", fresh_schema, cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    assert f"schema {fresh_schema} is up to date" in result.stderr
    assert relation_exists(gw_database_url, f'"{fresh_schema}".jobs')
    assert [row[0] for row in read_migrations(gw_database_url, fresh_schema)] == list(range(1, 21))
    assert fetch_jobs(gw_database_url, fresh_schema) == []


def test_migrate_rerun_is_noop(gw_database_url: str, fresh_schema: str, tmp_path: Path) -> None:
    first = run_gw("migrate", "-c", gw_database_url, "-s", fresh_schema, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    before = read_migrations(gw_database_url, fresh_schema)

    second = run_gw("migrate", "-c", gw_database_url, "-s", fresh_schema, cwd=tmp_path)

    assert second.returncode == 0, second.stderr
    assert f"schema {fresh_schema} is up to date" in second.stderr
    assert read_migrations(gw_database_url, fresh_schema) == before


# ---------------------------------------------------------------------------
# gw add
# ---------------------------------------------------------------------------


def test_add_with_every_option(gw_database_url: str, gw_schema: str, tmp_path: Path) -> None:
    result = run_gw(
        "add",
        "-c",
        gw_database_url,
        "-s",
        gw_schema,
        "send_email",
        '{"to": "someone@example.com", "n": [1, 2]}',
        "--queue",
        "mail",
        "--run-at",
        "2030-01-01T09:00:00+02:00",
        "--max-attempts",
        "3",
        "--job-key",
        "welcome-42",
        "--job-key-mode",
        "preserve_run_at",
        "--priority",
        "-5",
        "--flag",
        "slow",
        "--flag",
        "smtp",
        cwd=tmp_path,
    )

    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout)
    rows = fetch_jobs(gw_database_url, gw_schema)
    assert len(rows) == 1
    row = rows[0]
    assert printed["id"] == row["id"]
    assert printed["task_identifier"] == "send_email"
    assert printed["payload"] == {"to": "someone@example.com", "n": [1, 2]}
    assert printed["queue_name"] == "mail"
    assert printed["max_attempts"] == 3
    assert printed["key"] == "welcome-42"
    assert printed["priority"] == -5
    assert printed["flags"] == {"slow": True, "smtp": True}
    assert datetime.fromisoformat(printed["run_at"]) == datetime(2030, 1, 1, 7, 0, tzinfo=UTC)

    assert row["task_identifier"] == "send_email"
    assert row["payload"] == {"to": "someone@example.com", "n": [1, 2]}
    assert row["queue_name"] == "mail"
    assert row["run_at"] == datetime(2030, 1, 1, 7, 0, tzinfo=UTC)
    assert row["max_attempts"] == 3
    assert row["key"] == "welcome-42"
    assert row["priority"] == -5
    assert row["flags"] == {"slow": True, "smtp": True}
    assert row["revision"] == 0


def test_add_job_key_mode_preserve_run_at(gw_database_url: str, gw_schema: str, tmp_path: Path) -> None:
    common = ["-c", gw_database_url, "-s", gw_schema, "--job-key", "k1", "--job-key-mode", "preserve_run_at"]
    first = run_gw("add", "report", '{"v": 1}', "--run-at", "2030-01-01T00:00:00Z", *common, cwd=tmp_path)
    assert first.returncode == 0, first.stderr

    second = run_gw("add", "report", '{"v": 2}', "--run-at", "2031-06-01T00:00:00Z", *common, cwd=tmp_path)

    assert second.returncode == 0, second.stderr
    rows = fetch_jobs(gw_database_url, gw_schema)
    assert len(rows) == 1
    assert rows[0]["payload"] == {"v": 2}
    assert rows[0]["revision"] == 1
    assert rows[0]["run_at"] == datetime(2030, 1, 1, tzinfo=UTC)


def test_add_defaults(gw_database_url: str, gw_schema: str, tmp_path: Path) -> None:
    before = datetime.now(UTC)
    result = run_gw("add", "-c", gw_database_url, "-s", gw_schema, "ping", cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    rows = fetch_jobs(gw_database_url, gw_schema)
    assert len(rows) == 1
    row = rows[0]
    assert row["payload"] == {}
    assert row["queue_name"] is None
    assert row["max_attempts"] == 25
    assert row["priority"] == 0
    assert row["key"] is None
    assert row["flags"] is None
    # Generous bounds: the row's clock is the database's, not this process's.
    assert before - timedelta(minutes=5) < row["run_at"] < before + timedelta(minutes=5)


def test_add_uses_database_url_env(gw_database_url: str, gw_schema: str, tmp_path: Path) -> None:
    result = run_gw(
        "add", "-s", gw_schema, "from_env", '{"a": 1}', cwd=tmp_path, env={"DATABASE_URL": gw_database_url}
    )

    assert result.returncode == 0, result.stderr
    assert "embedded" not in result.stderr
    assert not (tmp_path / ".gw").exists()
    rows = fetch_jobs(gw_database_url, gw_schema)
    assert [(row["task_identifier"], row["payload"]) for row in rows] == [("from_env", {"a": 1})]


def test_add_connection_beats_env(gw_database_url: str, gw_schema: str, tmp_path: Path) -> None:
    result = run_gw(
        "add",
        "-c",
        gw_database_url,
        "-s",
        gw_schema,
        "from_option",
        cwd=tmp_path,
        env={"DATABASE_URL": UNREACHABLE_URL},
    )

    assert result.returncode == 0, result.stderr
    rows = fetch_jobs(gw_database_url, gw_schema)
    assert [row["task_identifier"] for row in rows] == ["from_option"]


# ---------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------

# Each case: the arguments after `gw add -c URL -s SCHEMA`, and text stderr must contain.
ADD_REJECTED: dict[str, tuple[list[str], list[str]]] = {
    "invalid_json": (["job", '{"a": 1'], ["PAYLOAD_JSON is invalid JSON", "'{\"a\": 1'"]),
    "nan": (["job", '{"a": NaN}'], ["PAYLOAD_JSON is invalid", "NaN"]),
    "infinity": (["job", '{"a": Infinity}'], ["PAYLOAD_JSON is invalid", "Infinity"]),
    "run_at_naive": (
        ["job", "--run-at", "2030-01-01T09:00:00"],
        ["--run-at", "'2030-01-01T09:00:00' has no UTC offset", "2030-01-01T09:00:00+00:00"],
    ),
    "run_at_garbage": (["job", "--run-at", "tomorrow"], ["--run-at", "'tomorrow'", "ISO 8601"]),
    "max_attempts_0": (["job", "--max-attempts", "0"], ["--max-attempts is invalid", "0", "1 to 32767"]),
    "max_attempts_text": (["job", "--max-attempts", "three"], ["--max-attempts", "'three'"]),
    "priority_40000": (["job", "--priority", "40000"], ["--priority is invalid", "40000", "-32768 to 32767"]),
    "identifier_129": (["i" * 129], ["IDENTIFIER is invalid", "129 characters", "1 to 128"]),
    "job_key_mode_unknown": (
        ["job", "--job-key-mode", "bogus"],
        ["--job-key-mode", "'bogus'", "replace", "preserve_run_at", "unsafe_dedupe"],
    ),
    "empty_schema_name": (["job", "-s", ""], ["schema name is empty"]),
    "empty_flag": (["job", "--flag", ""], ["--flag is invalid", "''"]),
}


@pytest.mark.parametrize("case", list(ADD_REJECTED))
def test_add_rejects_bad_input(case: str, gw_database_url: str, gw_schema: str, tmp_path: Path) -> None:
    arguments, expected = ADD_REJECTED[case]

    result = run_gw("add", "-c", gw_database_url, "-s", gw_schema, *arguments, cwd=tmp_path)

    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
    for text in expected:
        assert text in result.stderr
    assert fetch_jobs(gw_database_url, gw_schema) == []


# Each case: the arguments after `gw worker -c URL -s SCHEMA`, and text stderr must contain.
WORKER_REJECTED: dict[str, tuple[list[str], list[str]]] = {
    "jobs_0": (["-j", "0", "--once"], ["-j/--jobs", "0 is out of range", ">= 1"]),
    "poll_interval_negative": (["--poll-interval", "-1", "--once"], ["--poll-interval", "-1", "> 0"]),
    "poll_interval_nan": (["--poll-interval", "nan", "--once"], ["--poll-interval", "'nan'", "finite"]),
    "grace_period_negative": (["--grace-period", "-0.5", "--once"], ["--grace-period", "-0.5", ">= 0"]),
    "tasks_dir_missing": (["--once", "--tasks", "./missing_tasks"], ["missing_tasks", "does not exist"]),
    "tasks_module_missing": (["--once", "--tasks", "no_such_tasks_module"], ["'no_such_tasks_module'"]),
    "no_tasks_given": (["--once"], ["no tasks to run", "--tasks", "./tasks"]),
}


@pytest.mark.parametrize("case", list(WORKER_REJECTED))
def test_worker_rejects_bad_input(case: str, gw_database_url: str, gw_schema: str, tmp_path: Path) -> None:
    arguments, expected = WORKER_REJECTED[case]

    result = run_gw("worker", "-c", gw_database_url, "-s", gw_schema, *arguments, cwd=tmp_path)

    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    for text in expected:
        assert text in result.stderr


def test_add_schema_missing(gw_database_url: str, fresh_schema: str, tmp_path: Path) -> None:
    result = run_gw("add", "-c", gw_database_url, "-s", fresh_schema, "job", cwd=tmp_path)

    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert f"the schema {fresh_schema!r} is not installed" in result.stderr
    assert f"gw migrate -s {fresh_schema}" in result.stderr


@pytest.mark.parametrize("command", [["add", "job"], ["migrate"], ["worker", "--schema-only"]])
def test_unreachable_database(command: list[str], tmp_path: Path) -> None:
    result = run_gw(command[0], "-c", UNREACHABLE_URL, *command[1:], cwd=tmp_path)

    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "database connection failed" in result.stderr
    assert "port 1" in result.stderr


def test_unreachable_env_url(tmp_path: Path) -> None:
    result = run_gw("add", "job", cwd=tmp_path, env={"DATABASE_URL": UNREACHABLE_URL})

    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "database connection failed" in result.stderr
    assert not (tmp_path / ".gw").exists()


# ---------------------------------------------------------------------------
# --help
# ---------------------------------------------------------------------------

# Each command's options, and text that the help entry of each must contain.
HELP_ENTRIES: dict[str, dict[str, list[str]]] = {
    "worker": {
        "--connection": ["URL", "default", "DATABASE_URL", ".gw"],
        "--schema": ["NAME", "default: graphile_worker"],
        "--log-level": ["default: INFO"],
        "--jobs": ["N", "at once", "default: 1"],
        "--poll-interval": ["SECONDS", "seconds", "default: 2"],
        "--tasks": ["MODULE_OR_DIR", "repeatable", "default: ./tasks"],
        "--once": ["exit"],
        "--schema-only": ["schema", "exit"],
        "--grace-period": ["SECONDS", "seconds", "default: 5"],
    },
    "add": {
        "--connection": ["URL", "default", "DATABASE_URL"],
        "--schema": ["NAME", "default: graphile_worker"],
        "--log-level": ["default: INFO"],
        "--queue": ["NAME", "queue"],
        "--run-at": ["TIMESTAMP", "ISO 8601", "offset", "default: now"],
        "--max-attempts": ["N", "1 to 32767", "default: 25"],
        "--job-key": ["KEY"],
        "--job-key-mode": ["replace", "preserve_run_at", "unsafe_dedupe", "default: replace"],
        "--priority": ["N", "-32768 to 32767", "default: 0"],
        "--flag": ["FLAG", "repeatable"],
    },
    "migrate": {
        "--connection": ["URL", "default", "DATABASE_URL"],
        "--schema": ["NAME", "default: graphile_worker"],
        "--log-level": ["default: INFO"],
    },
}


@pytest.mark.parametrize("command", list(HELP_ENTRIES))
def test_help_explains_options(command: str, tmp_path: Path) -> None:
    result = run_gw(command, "--help", cwd=tmp_path, env={"COLUMNS": "100"})

    assert result.returncode == 0, result.stderr
    for option, expected in HELP_ENTRIES[command].items():
        entry = option_help(result.stdout, option)
        for text in expected:
            assert text in entry, f"{option}: {text!r} is missing from {entry!r}"


def test_help_add_positionals(tmp_path: Path) -> None:
    result = run_gw("add", "--help", cwd=tmp_path, env={"COLUMNS": "100"})

    assert result.returncode == 0, result.stderr
    assert "1 to 128 characters" in option_help(result.stdout, "IDENTIFIER")
    assert "default: {}" in option_help(result.stdout, "PAYLOAD_JSON")


# ---------------------------------------------------------------------------
# gw worker
# ---------------------------------------------------------------------------


def read_runs(folder: Path) -> list[dict[str, Any]]:
    """Return the runs that the test tasks recorded in ``folder/runs.jsonl``, in order."""
    path = folder / "runs.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_worker_runs_tasks_directory(gw_database_url: str, gw_schema: str, tmp_path: Path) -> None:
    shutil.copytree(DATA / "tasks", tmp_path / "tasks")
    connection = ["-c", gw_database_url, "-s", gw_schema]
    for identifier, payload in [("hello", '{"n": 1}'), ("billing/charge", '{"cents": 250}')]:
        added = run_gw("add", *connection, identifier, payload, cwd=tmp_path)
        assert added.returncode == 0, added.stderr

    result = run_gw("worker", *connection, "--once", "--tasks", "tasks", cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    assert fetch_jobs(gw_database_url, gw_schema) == []
    runs = sorted(read_runs(tmp_path), key=lambda run: run["identifier"])
    assert runs == [
        {"identifier": "billing/charge", "payload": {"cents": 250}},
        {"identifier": "hello", "payload": {"n": 1}},
    ]


def test_worker_default_tasks_directory(gw_database_url: str, gw_schema: str, tmp_path: Path) -> None:
    shutil.copytree(DATA / "tasks", tmp_path / "tasks")
    connection = ["-c", gw_database_url, "-s", gw_schema]
    added = run_gw("add", *connection, "hello", '{"n": 2}', cwd=tmp_path)
    assert added.returncode == 0, added.stderr

    result = run_gw("worker", *connection, "--once", cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    assert fetch_jobs(gw_database_url, gw_schema) == []
    assert read_runs(tmp_path) == [{"identifier": "hello", "payload": {"n": 2}}]


MODULE_TASKS = """
import json
from pathlib import Path

import gwcore


def _record(identifier, payload):
    with (Path.cwd() / "runs.jsonl").open("a", encoding="utf-8") as file:
        file.write(json.dumps({"identifier": identifier, "payload": payload}) + "\\n")


@gwcore.task("mail/send")
async def send(payload, ctx):
    _record("mail/send", payload)


@gwcore.task()
def resize_image(payload, ctx):
    _record("resize_image", payload)
"""


def test_worker_runs_tasks_module(gw_database_url: str, gw_schema: str, tmp_path: Path) -> None:
    package = tmp_path / "cli_app"
    package.mkdir()
    (package / "__init__.py").write_text("", encoding="utf-8")
    (package / "jobs.py").write_text(MODULE_TASKS, encoding="utf-8")
    connection = ["-c", gw_database_url, "-s", gw_schema]
    for identifier, payload in [("mail/send", '{"to": "a"}'), ("resize_image", '{"w": 64}')]:
        added = run_gw("add", *connection, identifier, payload, cwd=tmp_path)
        assert added.returncode == 0, added.stderr

    result = run_gw("worker", *connection, "--once", "--tasks", "cli_app.jobs", cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    assert fetch_jobs(gw_database_url, gw_schema) == []
    runs = sorted(read_runs(tmp_path), key=lambda run: run["identifier"])
    assert runs == [
        {"identifier": "mail/send", "payload": {"to": "a"}},
        {"identifier": "resize_image", "payload": {"w": 64}},
    ]


def test_worker_leaves_unknown_task(gw_database_url: str, gw_schema: str, tmp_path: Path) -> None:
    shutil.copytree(DATA / "tasks", tmp_path / "tasks")
    connection = ["-c", gw_database_url, "-s", gw_schema]
    added = run_gw("add", *connection, "not_loaded", cwd=tmp_path)
    assert added.returncode == 0, added.stderr

    result = run_gw("worker", *connection, "--once", "--tasks", "tasks", cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    rows = fetch_jobs(gw_database_url, gw_schema)
    assert [row["task_identifier"] for row in rows] == ["not_loaded"]
    assert rows[0]["locked_by"] is None
    assert read_runs(tmp_path) == []


def test_worker_schema_only(gw_database_url: str, fresh_schema: str, tmp_path: Path) -> None:
    result = run_gw("worker", "-c", gw_database_url, "-s", fresh_schema, "--schema-only", cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    assert f"schema {fresh_schema} is up to date" in result.stderr
    assert "started" not in result.stderr
    assert fetch_jobs(gw_database_url, fresh_schema) == []


def test_worker_schema_too_new(gw_database_url: str, gw_schema: str, tmp_path: Path) -> None:
    shutil.copytree(DATA / "tasks", tmp_path / "tasks")
    with psycopg.connect(gw_database_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("insert into {}.migrations (id, breaking) values (999, true)").format(
                sql.Identifier(gw_schema)
            )
        )

    result = run_gw("worker", "-c", gw_database_url, "-s", gw_schema, "--once", cwd=tmp_path)

    assert result.returncode == SchemaTooNewError.EXIT_CODE
    assert result.returncode == 57
    assert "Traceback" not in result.stderr
    assert "breaking migration 999" in result.stderr
    assert "upgrade gwcore" in result.stderr


@pytest.mark.parametrize("conninfo", ["garbage!!", "host=localhost password=s3cret port"])
def test_invalid_connection_string(conninfo: str, tmp_path: Path) -> None:
    result = run_gw("migrate", "-c", conninfo, cwd=tmp_path)

    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "-c/--connection is not a valid PostgreSQL connection string" in result.stderr
    assert "postgresql://user:password@localhost:5432/mydb" in result.stderr
    assert "s3cret" not in result.stderr


def test_invalid_database_url(tmp_path: Path) -> None:
    result = run_gw("migrate", cwd=tmp_path, env={"DATABASE_URL": "not a url"})

    assert result.returncode == 2
    assert "DATABASE_URL is not a valid PostgreSQL connection string" in result.stderr
