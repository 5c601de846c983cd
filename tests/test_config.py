"""The configuration: precedence of its sources, files, errors, masking and the configuration hooks.

``gw config`` runs as a subprocess in a temporary working directory; the
`Config` API is tested in this process with an explicit environment.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from gwcore.config import Config, load_config
from gwcore.errors import ConfigurationError

COMMAND_TIMEOUT = 60.0

# Each core option: its key, a pyproject.toml value, a GW_* value, a flag and its value, and
# the three resolved values expected from the file, the environment and the flag.
CORE_CASES: dict[str, tuple[str, str, list[str], tuple[Any, Any, Any]]] = {
    "connection": (
        '"postgresql://file@127.0.0.1/a"',
        "postgresql://env@127.0.0.1/b",
        ["-c", "postgresql://flag@127.0.0.1/c"],
        ("postgresql://file@127.0.0.1/a", "postgresql://env@127.0.0.1/b", "postgresql://flag@127.0.0.1/c"),
    ),
    "schema": ('"from_file"', "from_env", ["-s", "from_flag"], ("from_file", "from_env", "from_flag")),
    "jobs": ("3", "5", ["-j", "7"], (3, 5, 7)),
    "poll_interval": ("0.5", "1.5", ["--poll-interval", "2.5"], (0.5, 1.5, 2.5)),
    "tasks": (
        '["file_tasks"]',
        "env_a,env_b",
        ["--tasks", "flag_tasks"],
        (["file_tasks"], ["env_a", "env_b"], ["flag_tasks"]),
    ),
    "grace_period": ("1", "2", ["--grace-period", "3"], (1.0, 2.0, 3.0)),
    "log_level": ('"DEBUG"', "WARNING", ["--log-level", "ERROR"], ("DEBUG", "WARNING", "ERROR")),
}


def run_gw(*args: str, cwd: Path, env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``gw ARGS`` in ``cwd`` without inherited GW_* and DATABASE_URL variables, plus ``env``."""
    environment = {
        key: value for key, value in os.environ.items() if not key.startswith("GW_") and key != "DATABASE_URL"
    }
    environment.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "gwcore.cli", *args],
        cwd=cwd,
        env=environment,
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT,
        check=False,
    )


def config_json(*args: str, cwd: Path, env: Mapping[str, str] | None = None) -> dict[str, dict[str, Any]]:
    result = run_gw("config", "--json", *args, cwd=cwd, env=env)
    assert result.returncode == 0, result.stderr
    return {entry["key"]: entry for entry in json.loads(result.stdout)}


def write_pyproject(folder: Path, body: str) -> None:
    (folder / "pyproject.toml").write_text(f"[tool.gw]\n{body}\n", encoding="utf-8")


# ---------------------------------------------------------------------------
# Precedence
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("key", list(CORE_CASES))
def test_precedence_via_gw_config(key: str, tmp_path: Path) -> None:
    file_value, env_value, flag, (from_file, from_env, from_flag) = CORE_CASES[key]
    variable = f"GW_{key.upper()}"

    defaults = config_json(cwd=tmp_path)
    assert defaults[key]["source"] == "default"

    write_pyproject(tmp_path, f"{key} = {file_value}")
    entry = config_json(cwd=tmp_path)[key]
    assert (entry["value"], entry["source"]) == (from_file, "pyproject.toml")

    entry = config_json(cwd=tmp_path, env={variable: env_value})[key]
    assert (entry["value"], entry["source"]) == (from_env, f"env {variable}")

    entry = config_json(*flag, cwd=tmp_path, env={variable: env_value})[key]
    assert (entry["value"], entry["source"]) == (from_flag, "command line")


@pytest.mark.parametrize("key", list(CORE_CASES))
def test_precedence_via_api(key: str, tmp_path: Path) -> None:
    file_value, env_value, _flag, (from_file, from_env, from_flag) = CORE_CASES[key]
    variable = f"GW_{key.upper()}"
    write_pyproject(tmp_path, f"{key} = {file_value}")

    from_files = load_config(directory=tmp_path, environ={})
    from_environment = load_config(directory=tmp_path, environ={variable: env_value})
    from_python = load_config({key: from_flag}, directory=tmp_path, environ={variable: env_value})

    assert (from_files.get(key), from_files.source(key)) == (from_file, "pyproject.toml")
    assert (from_environment.get(key), from_environment.source(key)) == (from_env, f"env {variable}")
    assert (from_python.get(key), from_python.source(key)) == (from_flag, "command line")


def test_defaults_via_api(tmp_path: Path) -> None:
    config = load_config(directory=tmp_path, environ={})

    assert config.jobs == 1
    assert config.poll_interval == 2.0
    assert config.grace_period == 5.0
    assert config.schema == "graphile_worker"
    assert config.connection is None
    assert config.tasks is None
    assert config.plugins == []
    assert {config.source(key) for key in config.options} == {"default"}


def test_gw_connection_beats_database_url(tmp_path: Path) -> None:
    environ = {"DATABASE_URL": "postgresql://db@127.0.0.1/a", "GW_CONNECTION": "postgresql://gw@127.0.0.1/b"}

    both = load_config(directory=tmp_path, environ=environ)
    only_database_url = load_config(directory=tmp_path, environ={"DATABASE_URL": environ["DATABASE_URL"]})

    assert (both.connection, both.source("connection")) == (environ["GW_CONNECTION"], "env GW_CONNECTION")
    assert only_database_url.source("connection") == "env DATABASE_URL"


def test_gw_toml_beats_pyproject(tmp_path: Path) -> None:
    write_pyproject(tmp_path, 'jobs = 3\nschema = "from_pyproject"')
    (tmp_path / "gw.toml").write_text("jobs = 4\n", encoding="utf-8")

    config = config_json(cwd=tmp_path)

    assert (config["jobs"]["value"], config["jobs"]["source"]) == (4, "gw.toml")
    assert (config["schema"]["value"], config["schema"]["source"]) == ("from_pyproject", "pyproject.toml")


def test_plugins_add_up(tmp_path: Path) -> None:
    for name in ("plug_a", "plug_b", "plug_c"):
        (tmp_path / f"{name}.py").write_text("", encoding="utf-8")
    write_pyproject(tmp_path, 'plugins = ["plug_c"]')

    entry = config_json("-p", "plug_b", cwd=tmp_path, env={"GW_PLUGINS": "plug_a"})["plugins"]

    assert entry["value"] == ["plug_a", "plug_b", "plug_c"]
    assert entry["source"] == "env GW_PLUGINS, command line, pyproject.toml"


# ---------------------------------------------------------------------------
# Table output and masking
# ---------------------------------------------------------------------------


def test_config_table_masks_password(tmp_path: Path) -> None:
    write_pyproject(tmp_path, 'connection = "postgresql://app:s3cret@127.0.0.1:5432/jobs"')

    result = run_gw("config", "-j", "4", cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    rows = {line.split()[0]: line.split() for line in result.stdout.splitlines()}
    assert rows["KEY"] == ["KEY", "VALUE", "SOURCE"]
    assert rows["connection"] == [
        "connection",
        "postgresql://app:********@127.0.0.1:5432/jobs",
        "pyproject.toml",
    ]
    assert rows["jobs"] == ["jobs", "4", "command", "line"]
    assert "s3cret" not in result.stdout


def test_config_json_masks_password(tmp_path: Path) -> None:
    entry = config_json(cwd=tmp_path, env={"DATABASE_URL": "host=127.0.0.1 password=s3cret dbname=jobs"})

    assert "s3cret" not in entry["connection"]["value"]
    assert entry["connection"]["source"] == "env DATABASE_URL"


# ---------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------

# Each case: pyproject.toml [tool.gw] body, environment, and text stderr must contain.
REJECTED: dict[str, tuple[str, dict[str, str], list[str]]] = {
    "unknown_key": (
        "job = 4",
        {},
        ["unknown key 'job' in [tool.gw]", "Did you mean 'jobs'?", "poll_interval"],
    ),
    "jobs_string": ('jobs = "4"', {}, ["jobs = '4' from pyproject.toml is invalid", "a whole number >= 1"]),
    "jobs_zero": ("jobs = 0", {}, ["jobs = 0 from pyproject.toml is invalid", "out of range"]),
    "poll_interval_bool": ("poll_interval = true", {}, ["poll_interval = True", "a number of seconds > 0"]),
    "tasks_string": ('tasks = "tasks"', {}, ["tasks = 'tasks' from pyproject.toml", "a list of strings"]),
    "log_level_unknown": (
        'log_level = "LOUD"',
        {},
        ["log_level = 'LOUD'", "one of DEBUG, INFO, WARNING, ERROR"],
    ),
    "env_jobs_text": (
        "",
        {"GW_JOBS": "many"},
        ["GW_JOBS = 'many' from env GW_JOBS is invalid", "whole number"],
    ),
    "env_grace_negative": ("", {"GW_GRACE_PERIOD": "-1"}, ["GW_GRACE_PERIOD = '-1'", "seconds >= 0"]),
    "invalid_toml": ("jobs = = 3", {}, ["pyproject.toml is invalid TOML"]),
}


@pytest.mark.parametrize("case", list(REJECTED))
def test_config_rejects_bad_value(case: str, tmp_path: Path) -> None:
    body, env, expected = REJECTED[case]
    write_pyproject(tmp_path, body)

    result = run_gw("config", cwd=tmp_path, env=env)

    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
    for text in expected:
        assert text in result.stderr


def test_unknown_env_variable_ignored(tmp_path: Path) -> None:
    config = load_config(directory=tmp_path, environ={"GW_NOT_AN_OPTION": "x"})

    assert config.jobs == 1


def test_api_rejects_wrong_type(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError) as raised:
        load_config({"jobs": "4"}, directory=tmp_path, environ={})

    assert "--jobs = '4' from command line is invalid" in str(raised.value)


def test_api_unknown_name(tmp_path: Path) -> None:
    config = load_config(directory=tmp_path, environ={})

    with pytest.raises(ConfigurationError) as raised:
        config.get("job")

    assert "did you mean 'jobs'?" in str(raised.value)


# ---------------------------------------------------------------------------
# Plugin options and the configuration hooks
# ---------------------------------------------------------------------------

SLOWLOG_PLUGIN = """
import json
import os
from pathlib import Path


def gw_addoption(parser):
    parser.addoption("--slowlog-threshold", type=float, default=0.5, help="seconds before a job is slow")


def gw_configure(config):
    record = {"event": "configure", "value": config.get("slowlog_threshold"),
              "source": config.source("slowlog_threshold")}
    with Path("events.jsonl").open("a") as file:
        file.write(json.dumps(record) + "\\n")


def gw_unconfigure(config):
    with Path("events.jsonl").open("a") as file:
        file.write(json.dumps({"event": "unconfigure"}) + "\\n")
"""


@pytest.fixture
def slowlog(tmp_path: Path) -> Path:
    """A working directory whose gwconf.py adds --slowlog-threshold and records the configuration hooks."""
    (tmp_path / "gwconf.py").write_text(SLOWLOG_PLUGIN, encoding="utf-8")
    return tmp_path


def read_events(folder: Path) -> list[dict[str, Any]]:
    path = folder / "events.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_plugin_option_default(slowlog: Path) -> None:
    entry = config_json(cwd=slowlog)["slowlog_threshold"]

    assert entry == {"key": "slowlog_threshold", "value": 0.5, "source": "default", "plugin": "gwconf"}


def test_plugin_option_each_source(slowlog: Path) -> None:
    write_pyproject(slowlog, "slowlog_threshold = 1.5")

    from_file = config_json(cwd=slowlog)["slowlog_threshold"]
    from_env = config_json(cwd=slowlog, env={"GW_SLOWLOG_THRESHOLD": "2.5"})["slowlog_threshold"]
    from_flag = config_json("--slowlog-threshold", "3.5", cwd=slowlog, env={"GW_SLOWLOG_THRESHOLD": "2.5"})[
        "slowlog_threshold"
    ]

    assert (from_file["value"], from_file["source"]) == (1.5, "pyproject.toml")
    assert (from_env["value"], from_env["source"]) == (2.5, "env GW_SLOWLOG_THRESHOLD")
    assert (from_flag["value"], from_flag["source"]) == (3.5, "command line")


def test_plugin_option_wrong_type(slowlog: Path) -> None:
    result = run_gw("config", cwd=slowlog, env={"GW_SLOWLOG_THRESHOLD": "slow"})

    assert result.returncode == 2
    assert "GW_SLOWLOG_THRESHOLD = 'slow' from env GW_SLOWLOG_THRESHOLD is invalid" in result.stderr


def test_plugin_option_on_worker_help(slowlog: Path) -> None:
    result = run_gw("worker", "--help", cwd=slowlog)

    assert result.returncode == 0, result.stderr
    assert "--slowlog-threshold" in result.stdout
    assert "GW_SLOWLOG_THRESHOLD" in result.stdout


def test_configure_hooks_fire(slowlog: Path) -> None:
    result = run_gw("config", "--slowlog-threshold", "4", cwd=slowlog)

    assert result.returncode == 0, result.stderr
    assert read_events(slowlog) == [
        {"event": "configure", "value": 4.0, "source": "command line"},
        {"event": "unconfigure"},
    ]


def test_unconfigure_after_error(slowlog: Path) -> None:
    result = run_gw("migrate", "-c", "not a connection string", cwd=slowlog)

    assert result.returncode == 2
    assert "-c/--connection is not a valid PostgreSQL connection string" in result.stderr
    assert [event["event"] for event in read_events(slowlog)] == ["configure", "unconfigure"]


def test_async_addoption_rejected(tmp_path: Path) -> None:
    (tmp_path / "gwconf.py").write_text("async def gw_addoption(parser):\n    pass\n", encoding="utf-8")

    result = run_gw("config", cwd=tmp_path)

    assert result.returncode == 2
    assert "plugin 'gwconf' implements gw_addoption with async def" in result.stderr


def test_config_resolve_without_files() -> None:
    config = Config.resolve(
        load_config(environ={}, directory=Path(__file__).parent / "data").options.values(),
        environ={"GW_JOBS": "9"},
        command_line={"schema": "s"},
    )

    assert (config.jobs, config.source("jobs")) == (9, "env GW_JOBS")
    assert (config.schema, config.source("schema")) == ("s", "command line")
