"""The fixtures for plugin authors in gwcore.testing, and the contrib slowlog plugin installed with pip."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

import gwcore
from gwcore import JobContext, JobScheduleResult, hookimpl
from gwcore.testing import TEST_POLL_INTERVAL, AddJob, RunUntilIdle, WorkerFactory, run_until_idle

REPO = Path(__file__).resolve().parent.parent
SLOWLOG_PACKAGE = REPO / "contrib" / "gw-plugin-slowlog"
SUBPROCESS_TIMEOUT = 300
# A task file for `gw worker --tasks`: it sleeps well past the threshold of 0.01 s that the test sets.
NAP_TASK = """\
import asyncio


async def task(payload, ctx):
    await asyncio.sleep(0.05)
"""


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------


async def job_rows(conn: psycopg.AsyncConnection[Any], schema: str) -> list[tuple[int, str, Any]]:
    cursor = await conn.execute(
        sql.SQL(
            "select jobs.id, tasks.identifier, jobs.payload from {}._private_jobs as jobs "
            "join {}._private_tasks as tasks on tasks.id = jobs.task_id order by jobs.id"
        ).format(sql.Identifier(schema), sql.Identifier(schema))
    )
    return [(row[0], row[1], row[2]) for row in await cursor.fetchall()]


class TagPayload:
    """Adds ``"tagged": true`` to every dict payload that is scheduled."""

    @hookimpl
    def gw_before_job_schedule(self, ctx: Any) -> Any:
        return JobScheduleResult.continue_with({**ctx.payload, "tagged": True})


async def noop(payload: Any, ctx: JobContext) -> None:
    return None


# ---------------------------------------------------------------------------
# gw_worker_factory
# ---------------------------------------------------------------------------


async def test_factory_binds_test_schema(gw_worker_factory: WorkerFactory, gw_schema: str) -> None:
    worker = gw_worker_factory(tasks={"noop": noop})

    assert worker.schema == gw_schema
    assert worker.poll_interval == TEST_POLL_INTERVAL
    assert list(worker.tasks) == ["noop"]


async def test_factory_registers_chosen_plugins(gw_worker_factory: WorkerFactory) -> None:
    tag = TagPayload()
    worker = gw_worker_factory(tasks={"noop": noop}, plugins=[tag])
    without_builtins = gw_worker_factory(tasks={"noop": noop}, plugins=[tag], builtins=False)

    assert worker.plugins.is_registered(tag)
    assert worker.plugins.has_plugin("console")
    assert worker.plugins.has_plugin("lock_sweep")
    assert without_builtins.plugins.get_plugins() == {tag}


async def test_factory_passes_worker_options(gw_worker_factory: WorkerFactory) -> None:
    worker = gw_worker_factory(tasks={"noop": noop}, concurrency=3, poll_interval=0.5, worker_id="w-1")

    assert worker.concurrency == 3
    assert worker.poll_interval == 0.5
    assert worker.worker_id == "w-1"


async def test_factory_uses_given_manager(gw_worker_factory: WorkerFactory) -> None:
    manager = gwcore.create_plugin_manager(builtins=False, entry_points=False)

    worker = gw_worker_factory(tasks={"noop": noop}, plugin_manager=manager)

    assert worker.plugins is manager


async def test_factory_rejects_plugins_and_manager(gw_worker_factory: WorkerFactory) -> None:
    manager = gwcore.create_plugin_manager(builtins=False, entry_points=False)

    with pytest.raises(ValueError, match="both plugins and plugin_manager"):
        gw_worker_factory(tasks={"noop": noop}, plugins=[TagPayload()], plugin_manager=manager)


# ---------------------------------------------------------------------------
# gw_add_job
# ---------------------------------------------------------------------------


async def test_add_job_through_worker_plugins(
    gw_worker_factory: WorkerFactory,
    gw_add_job: AddJob,
    gw_conn: psycopg.AsyncConnection[Any],
    gw_schema: str,
) -> None:
    worker = gw_worker_factory(tasks={"noop": noop}, plugins=[TagPayload()])

    job = await gw_add_job("noop", {"n": 1}, worker=worker, priority=3)

    assert job is not None
    assert job.payload == {"n": 1, "tagged": True}
    assert job.priority == 3
    assert await job_rows(gw_conn, gw_schema) == [(job.id, "noop", {"n": 1, "tagged": True})]


async def test_add_job_through_given_manager(
    gw_add_job: AddJob, gw_conn: psycopg.AsyncConnection[Any], gw_schema: str
) -> None:
    manager = gwcore.create_plugin_manager([TagPayload()], builtins=False, entry_points=False)

    job = await gw_add_job("noop", {"n": 2}, plugins=manager)

    assert job is not None
    assert await job_rows(gw_conn, gw_schema) == [(job.id, "noop", {"n": 2, "tagged": True})]


async def test_add_job_without_plugins(
    gw_add_job: AddJob, gw_conn: psycopg.AsyncConnection[Any], gw_schema: str
) -> None:
    job = await gw_add_job("noop", {"n": 3})

    assert job is not None
    assert await job_rows(gw_conn, gw_schema) == [(job.id, "noop", {"n": 3})]


async def test_add_job_rejects_worker_and_plugins(
    gw_worker_factory: WorkerFactory, gw_add_job: AddJob
) -> None:
    worker = gw_worker_factory(tasks={"noop": noop})
    manager = gwcore.create_plugin_manager(builtins=False, entry_points=False)

    with pytest.raises(ValueError, match="both worker and plugins"):
        await gw_add_job("noop", {}, worker=worker, plugins=manager)


# ---------------------------------------------------------------------------
# run_until_idle
# ---------------------------------------------------------------------------


async def test_run_until_idle_runs_children(
    gw_worker_factory: WorkerFactory,
    gw_add_job: AddJob,
    gw_run_until_idle: RunUntilIdle,
    gw_conn: psycopg.AsyncConnection[Any],
    gw_schema: str,
) -> None:
    ran: list[int] = []

    async def countdown(payload: Any, ctx: JobContext) -> None:
        ran.append(payload["n"])
        if payload["n"] > 0:
            await ctx.add_job("countdown", {"n": payload["n"] - 1})

    worker = gw_worker_factory(tasks={"countdown": countdown}, concurrency=2)
    await gw_add_job("countdown", {"n": 3}, worker=worker)

    await gw_run_until_idle(worker)

    assert ran == [3, 2, 1, 0]
    assert await job_rows(gw_conn, gw_schema) == []


async def test_run_until_idle_leaves_unrunnable_jobs(
    gw_worker_factory: WorkerFactory,
    gw_add_job: AddJob,
    gw_conn: psycopg.AsyncConnection[Any],
    gw_schema: str,
) -> None:
    worker = gw_worker_factory(tasks={"noop": noop}, forbidden_flags=["paused"])
    later = await gw_add_job("noop", {"case": "later"}, run_at=datetime.now(UTC) + timedelta(hours=1))
    other = await gw_add_job("other_task", {"case": "other task"})
    flagged = await gw_add_job("noop", {"case": "flagged"}, flags=["paused"])
    ready = await gw_add_job("noop", {"case": "ready"})
    assert later is not None
    assert other is not None
    assert flagged is not None
    assert ready is not None

    await run_until_idle(worker, timeout=60)

    left = [row[0] for row in await job_rows(gw_conn, gw_schema)]
    assert left == [later.id, other.id, flagged.id]


async def test_run_until_idle_timeout_names_jobs(
    gw_worker_factory: WorkerFactory,
    gw_add_job: AddJob,
    gw_conn: psycopg.AsyncConnection[Any],
    gw_schema: str,
) -> None:
    started = asyncio.Event()

    async def hang(payload: Any, ctx: JobContext) -> None:
        started.set()
        await asyncio.sleep(3600)

    worker = gw_worker_factory(tasks={"hang": hang})
    job = await gw_add_job("hang", {})
    assert job is not None

    with pytest.raises(TimeoutError) as raised:
        await run_until_idle(worker, timeout=0.5)

    message = str(raised.value)
    assert started.is_set()
    assert message.startswith("run_until_idle timed out after 0.5 s with 1 job(s) left")
    assert f"job {job.id} (hang, 0 of 25 attempts made)" in message
    assert worker.worker_id in message
    assert [row[0] for row in await job_rows(gw_conn, gw_schema)] == [job.id]


# ---------------------------------------------------------------------------
# The contrib slowlog plugin, installed with pip
# ---------------------------------------------------------------------------


def _can_build_wheels_offline() -> bool:
    """Tell whether the venv's setuptools can build a wheel without pip's isolated build environment."""
    if importlib.util.find_spec("wheel") is not None:
        return True
    import setuptools

    major, minor = (int(part) for part in setuptools.__version__.split(".")[:2])
    return (major, minor) >= (70, 1)  # setuptools 70.1 ships bdist_wheel itself


@pytest.fixture(scope="module")
def slowlog_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder in which ``pip install --target`` installed contrib/gw-plugin-slowlog."""
    work = tmp_path_factory.mktemp("slowlog")
    source = work / "source"
    # Build from a copy, because setuptools writes build/ and *.egg-info next to the sources.
    shutil.copytree(
        SLOWLOG_PACKAGE, source, ignore=shutil.ignore_patterns("__pycache__", "build", "*.egg-info")
    )
    target = work / "site"
    command = [sys.executable, "-m", "pip", "install", "--no-deps", "--quiet", "--target", str(target)]
    # NOTE: setuptools older than 70.1 (65.5 comes with Python 3.11's venv) needs the wheel
    # package to build without isolation; without either, pip fetches setuptools from its index.
    if _can_build_wheels_offline():
        command.append("--no-build-isolation")
    completed = subprocess.run(
        [*command, str(source)], capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT
    )
    assert completed.returncode == 0, f"pip install failed:\n{completed.stdout}\n{completed.stderr}"
    return target


def cli_environment(site: Path, **variables: str) -> dict[str, str]:
    environment = {
        key: value for key, value in os.environ.items() if not key.startswith(("GW_", "DATABASE_URL"))
    }
    environment["PYTHONPATH"] = os.pathsep.join([str(site), str(REPO)])
    environment["PYTHONDONTWRITEBYTECODE"] = "1"
    environment.update(variables)
    return environment


def run_cli(arguments: list[str], environment: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gwcore.cli", *arguments],
        capture_output=True,
        text=True,
        env=environment,
        cwd=cwd,
        timeout=SUBPROCESS_TIMEOUT,
    )


async def test_installed_slowlog_logs_slow_job(
    slowlog_site: Path,
    gw_database_url: str,
    gw_schema: str,
    gw_conn: psycopg.AsyncConnection[Any],
    tmp_path: Path,
) -> None:
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "nap.py").write_text(
        "import asyncio\n\n\nasync def task(payload, ctx):\n    await asyncio.sleep(0.05)\n"
    )
    environment = cli_environment(slowlog_site, GW_SLOWLOG_THRESHOLD="0.01")
    database = ["-c", gw_database_url, "-s", gw_schema]

    added = await asyncio.to_thread(run_cli, ["add", *database, "nap", "{}"], environment, tmp_path)
    assert added.returncode == 0, added.stderr
    job_id = json.loads(added.stdout)["id"]
    worked = await asyncio.to_thread(
        run_cli, ["worker", *database, "--once", "--tasks", str(tasks)], environment, tmp_path
    )

    assert worked.returncode == 0, worked.stderr
    warnings = [line for line in worked.stderr.splitlines() if "gwcore.slowlog" in line]
    assert len(warnings) == 1, worked.stderr
    assert f"WARNING gwcore.slowlog: slow job nap {job_id} took " in warnings[0]
    assert warnings[0].endswith(" s (threshold 0.01 s)")
    assert await job_rows(gw_conn, gw_schema) == []


async def test_installed_slowlog_rejects_threshold(
    slowlog_site: Path, gw_database_url: str, gw_schema: str, tmp_path: Path
) -> None:
    environment = cli_environment(slowlog_site, GW_SLOWLOG_THRESHOLD="fast")

    added = await asyncio.to_thread(
        run_cli, ["add", "-c", gw_database_url, "-s", gw_schema, "nap", "{}"], environment, tmp_path
    )

    assert added.returncode == 2, added.stderr
    assert "gw: error: GW_SLOWLOG_THRESHOLD = 'fast' from env GW_SLOWLOG_THRESHOLD is invalid" in added.stderr
    assert "Traceback" not in added.stderr


def test_factory_skips_installed_plugins(
    slowlog_site: Path, gw_worker_factory: WorkerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(slowlog_site))
    monkeypatch.delenv("GW_SLOWLOG_THRESHOLD", raising=False)
    try:
        everything = gwcore.create_plugin_manager(entry_points=True)
        worker = gw_worker_factory(tasks={"noop": noop})

        assert everything.has_plugin("slowlog")
        assert not worker.plugins.has_plugin("slowlog")
    finally:
        sys.modules.pop("gw_plugin_slowlog", None)


def test_slowlog_own_tests_pass(gw_database_url: str) -> None:
    environment = cli_environment(
        SLOWLOG_PACKAGE, GW_TEST_DATABASE_URL=gw_database_url, PYTHONDONTWRITEBYTECODE="1"
    )

    completed = subprocess.run(
        [sys.executable, "-m", "pytest", str(SLOWLOG_PACKAGE / "tests"), "-q", "-p", "no:cacheprovider"],
        capture_output=True,
        text=True,
        env=environment,
        cwd=REPO,
        timeout=SUBPROCESS_TIMEOUT,
    )

    assert completed.returncode == 0, f"{completed.stdout}\n{completed.stderr}"
    assert " passed" in completed.stdout.splitlines()[-1]
    assert "failed" not in completed.stdout.splitlines()[-1]


async def test_installed_slowlog_listed_and_blockable(
    slowlog_site: Path, gw_database_url: str, gw_schema: str, tmp_path: Path
) -> None:
    environment = cli_environment(slowlog_site)

    listed = await asyncio.to_thread(run_cli, ["plugins", "--json"], environment, tmp_path)
    blocked = await asyncio.to_thread(
        run_cli, ["plugins", "--json", "-p", "no:slowlog"], environment, tmp_path
    )

    assert listed.returncode == 0, listed.stderr
    plugins = {plugin["name"]: plugin for plugin in json.loads(listed.stdout)["plugins"]}
    assert "slowlog" in plugins
    assert plugins["slowlog"]["version"] == "0.1.0"
    assert "gw_job_complete" in plugins["slowlog"]["hooks"]
    assert blocked.returncode == 0, blocked.stderr
    assert "slowlog" not in {plugin["name"] for plugin in json.loads(blocked.stdout)["plugins"]}


async def test_installed_slowlog_option_sources(slowlog_site: Path, tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text("[tool.gw]\nslowlog_threshold = 2.5\n")
    environment = cli_environment(slowlog_site)

    from_file = await asyncio.to_thread(run_cli, ["config", "--json"], environment, tmp_path)
    from_env = await asyncio.to_thread(
        run_cli, ["config", "--json"], {**environment, "GW_SLOWLOG_THRESHOLD": "3"}, tmp_path
    )
    from_flag = await asyncio.to_thread(
        run_cli, ["config", "--json", "--slowlog-threshold", "4"], environment, tmp_path
    )

    for completed in (from_file, from_env, from_flag):
        assert completed.returncode == 0, completed.stderr
    assert _option(from_file.stdout) == (2.5, "pyproject.toml")
    assert _option(from_env.stdout) == (3.0, "env GW_SLOWLOG_THRESHOLD")
    assert _option(from_flag.stdout) == (4.0, "command line")


def _option(output: str) -> tuple[Any, str]:
    """Return the value and source of slowlog_threshold from ``gw config --json`` output."""
    entries = {entry["key"]: entry for entry in json.loads(output)}
    entry = entries["slowlog_threshold"]
    assert entry["plugin"] == "slowlog"
    return entry["value"], entry["source"]
