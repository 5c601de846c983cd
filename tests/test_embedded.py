"""The embedded PostgreSQL that ``gw`` starts when no database is configured, and password masking."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import pytest

from gwcore.contexts import MASK, DatabaseInfo, mask_password

DATA = Path(__file__).parent / "data"
# Starting the embedded server the first time in a folder runs initdb, which takes a few seconds.
EMBEDDED_TIMEOUT = 90.0


def run_gw(*args: str, cwd: Path, env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``gw ARGS`` in ``cwd`` with DATABASE_URL removed from the environment, plus ``env``."""
    environment = {key: value for key, value in os.environ.items() if key != "DATABASE_URL"}
    environment.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "gwcore.cli", *args],
        cwd=cwd,
        env=environment,
        capture_output=True,
        text=True,
        timeout=EMBEDDED_TIMEOUT,
        check=False,
    )


def postgres_processes(data_dir: Path) -> str:
    """Return the command lines of the processes whose arguments contain ``data_dir``."""
    result = subprocess.run(
        ["pgrep", "-af", str(data_dir)], capture_output=True, text=True, timeout=10, check=False
    )
    return result.stdout.strip()


# ---------------------------------------------------------------------------
# Password masking
# ---------------------------------------------------------------------------

# Each case: a connection string with the password "s3cret", and the masked string.
MASKED: dict[str, tuple[str, str]] = {
    "url": ("postgresql://app:s3cret@db.local:5432/jobs", f"postgresql://app:{MASK}@db.local:5432/jobs"),
    "url_postgres_scheme": ("postgres://app:s3cret@db.local/jobs", f"postgres://app:{MASK}@db.local/jobs"),
    "url_at_in_password": (
        "postgresql://app:s3cret@x@db.local/jobs",
        f"postgresql://app:{MASK}@db.local/jobs",
    ),
    "url_query_password": (
        "postgresql://app@db.local/jobs?sslmode=require&password=s3cret",
        f"postgresql://app@db.local/jobs?sslmode=require&password={MASK}",
    ),
    "url_both": (
        "postgresql://app:s3cret@db.local/jobs?password=s3cret",
        f"postgresql://app:{MASK}@db.local/jobs?password={MASK}",
    ),
    "key_value": ("host=db.local user=app password=s3cret dbname=jobs", f"password={MASK}"),
    "key_value_quoted": ("host=db.local password='s3 cret' dbname=jobs", f"password={MASK}"),
}


@pytest.mark.parametrize("case", list(MASKED))
def test_mask_password_hides_it(case: str) -> None:
    conninfo, expected = MASKED[case]

    masked = mask_password(conninfo)

    assert "s3cret" not in masked
    assert "s3 cret" not in masked
    assert expected in masked


def test_mask_password_without_password() -> None:
    assert mask_password("postgresql://app@db.local:5432/jobs") == "postgresql://app@db.local:5432/jobs"
    assert (
        mask_password("postgresql://app:@/postgres?host=/tmp/pg")
        == f"postgresql://app:{MASK}@/postgres?host=/tmp/pg"
    )


def test_mask_password_key_value_keeps_rest() -> None:
    masked = mask_password("host=db.local port=5433 user=app password=s3cret dbname=jobs")

    assert "host=db.local" in masked
    assert "port=5433" in masked
    assert "user=app" in masked
    assert "dbname=jobs" in masked


def test_database_info_from_url() -> None:
    info = DatabaseInfo.from_conninfo("postgresql://app:s3cret@db.local:5433/jobs")

    assert info.url == f"postgresql://app:{MASK}@db.local:5433/jobs"
    assert info.host == "db.local"
    assert info.port == "5433"
    assert info.dbname == "jobs"
    assert info.user == "app"
    assert "s3cret" not in repr(info)


def test_database_info_from_key_value() -> None:
    info = DatabaseInfo.from_conninfo("host=db.local port=5433 user=app password=s3cret dbname=jobs")

    assert "s3cret" not in info.url
    assert f"password={MASK}" in info.url
    assert info.host == "db.local"
    assert info.port == "5433"
    assert info.dbname == "jobs"
    assert info.user == "app"
    assert "s3cret" not in repr(info)


def test_database_info_query_password() -> None:
    info = DatabaseInfo.from_conninfo("postgresql://app@db.local/jobs?password=s3cret")

    assert "s3cret" not in info.url
    assert "s3cret" not in repr(info)
    assert info.user == "app"


def test_database_info_invalid_string() -> None:
    info = DatabaseInfo.from_conninfo("host=db.local password='s3cret")

    assert info.url == "<invalid connection string>"
    assert "s3cret" not in repr(info)


# ---------------------------------------------------------------------------
# gw without a configured database
# ---------------------------------------------------------------------------


def test_gw_uses_embedded_server(tmp_path: Path) -> None:
    shutil.copytree(DATA / "tasks", tmp_path / "tasks")
    data_dir = tmp_path / ".gw" / "pgdata"
    try:
        added = run_gw("add", "hello", '{"n": 7}', cwd=tmp_path)

        assert added.returncode == 0, added.stderr
        assert "using the embedded PostgreSQL with its data in .gw/" in added.stderr
        assert json.loads(added.stdout)["payload"] == {"n": 7}
        assert data_dir.is_dir()
        assert postgres_processes(data_dir) == ""

        worker = run_gw("worker", "--once", cwd=tmp_path)

        assert worker.returncode == 0, worker.stderr
        assert "using the embedded PostgreSQL with its data in .gw/" in worker.stderr
        runs = (tmp_path / "runs.jsonl").read_text(encoding="utf-8").splitlines()
        assert [json.loads(line) for line in runs] == [{"identifier": "hello", "payload": {"n": 7}}]
        assert postgres_processes(data_dir) == ""

        # The job was deleted: a second worker finds nothing to run.
        again = run_gw("worker", "--once", cwd=tmp_path)

        assert again.returncode == 0, again.stderr
        assert len((tmp_path / "runs.jsonl").read_text(encoding="utf-8").splitlines()) == 1
        assert postgres_processes(data_dir) == ""
    finally:
        stop_leftover_server(data_dir)


def stop_leftover_server(data_dir: Path) -> None:
    """Send SIGTERM to a postmaster that the CLI left running on ``data_dir``, so it stops with the test.

    Only the postmaster has the data folder on its command line, and it stops its own child processes.
    """
    for line in postgres_processes(data_dir).splitlines():
        pid = int(line.split(maxsplit=1)[0])
        os.kill(pid, signal.SIGTERM)


def test_gw_without_embedded_extra(tmp_path: Path) -> None:
    stand_in = DATA / "no_embedded"
    python_path = os.pathsep.join([str(stand_in), *filter(None, [os.environ.get("PYTHONPATH")])])

    result = run_gw("add", "hello", cwd=tmp_path, env={"PYTHONPATH": python_path})

    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "embedded PostgreSQL is not installed" in result.stderr
    assert "DATABASE_URL" in result.stderr
    assert "-c/--connection" in result.stderr
    assert "pip install 'gwcore[embedded]'" in result.stderr
    assert not (tmp_path / ".gw" / "pgdata").exists()
