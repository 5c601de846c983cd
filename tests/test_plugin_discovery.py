"""Plugin discovery: built-ins, and plugins installed as distributions with a ``gwcore.plugins`` entry point.

Each test "installs" a plugin by writing a module and its ``*.dist-info`` folder
into a temporary folder and putting that folder on ``sys.path`` (in this
process) or on ``PYTHONPATH`` (for a ``gw`` subprocess), which is all that
``importlib.metadata`` needs to find the entry point.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.rows import dict_row

import gwplugins.console
import gwplugins.lock_sweep
from gwcore import PluginError
from gwcore.plugins import ENTRY_POINT_GROUP, create_plugin_manager

DATA = Path(__file__).parent / "data"
COMMAND_TIMEOUT = 60.0


def install_plugin(folder: Path, module: str, source: str, *, distribution: str = "gw-test-plugin") -> None:
    """Write ``module``.py with ``source``, and a dist-info whose entry point ``testplugin`` loads it."""
    (folder / f"{module}.py").write_text(source, encoding="utf-8")
    dist_info = folder / f"{distribution.replace('-', '_')}-0.1.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {distribution}\nVersion: 0.1\n", encoding="utf-8"
    )
    (dist_info / "entry_points.txt").write_text(
        f"[{ENTRY_POINT_GROUP}]\ntestplugin = {module}\n", encoding="utf-8"
    )


@pytest.fixture
def forget_modules() -> Iterator[None]:
    """Drop the plugin modules that a test imported, so the next test imports its own copy."""
    yield
    for name in ("gw_test_plugin", "gw_broken_plugin"):
        sys.modules.pop(name, None)


@pytest.fixture
def installed_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, forget_modules: None) -> Path:
    """A folder on sys.path in which tests/data/gw_test_plugin.py is installed as gw-test-plugin 0.1."""
    install_plugin(tmp_path, "gw_test_plugin", (DATA / "gw_test_plugin.py").read_text(encoding="utf-8"))
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


# ---------------------------------------------------------------------------
# Built-ins
# ---------------------------------------------------------------------------


def test_builtins_registered_by_default() -> None:
    manager = create_plugin_manager(entry_points=False)

    assert manager.get_plugin("console") is gwplugins.console
    assert manager.get_plugin("lock_sweep") is gwplugins.lock_sweep


def test_builtins_blocked_by_name() -> None:
    manager = create_plugin_manager(entry_points=False, blocked=["console"])

    assert not manager.has_plugin("console")
    assert manager.is_blocked("console")
    assert manager.get_plugin("lock_sweep") is gwplugins.lock_sweep


def test_builtins_both_blocked() -> None:
    manager = create_plugin_manager(entry_points=False, blocked=["console", "lock_sweep"])

    assert not manager.has_plugin("console")
    assert not manager.has_plugin("lock_sweep")


def test_builtins_disabled() -> None:
    manager = create_plugin_manager(builtins=False, entry_points=False)

    assert manager.list_name_plugin() == []


# ---------------------------------------------------------------------------
# Entry points
# ---------------------------------------------------------------------------


def test_entry_point_plugin_registered(installed_plugin: Path) -> None:
    manager = create_plugin_manager()

    plugin = manager.get_plugin("testplugin")
    assert plugin is not None
    assert plugin.__name__ == "gw_test_plugin"
    assert plugin.__file__ == str(installed_plugin / "gw_test_plugin.py")
    assert [call.plugin_name for call in manager.calls("gw_before_job_schedule")] == ["testplugin"]
    assert manager.has_plugin("console")


def test_entry_point_plugin_blocked(installed_plugin: Path) -> None:
    manager = create_plugin_manager(blocked=["testplugin"])

    assert not manager.has_plugin("testplugin")
    assert manager.calls("gw_before_job_schedule") == ()
    assert "gw_test_plugin" not in sys.modules
    assert manager.has_plugin("console")


def test_entry_points_disabled(installed_plugin: Path) -> None:
    manager = create_plugin_manager(entry_points=False)

    assert not manager.has_plugin("testplugin")
    assert "gw_test_plugin" not in sys.modules


def test_entry_point_import_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, forget_modules: None
) -> None:
    install_plugin(
        tmp_path,
        "gw_broken_plugin",
        "raise RuntimeError('gw_broken_plugin needs GW_PLUGIN_TOKEN')\n",
        distribution="gw-broken-plugin",
    )
    monkeypatch.syspath_prepend(str(tmp_path))

    with pytest.raises(PluginError) as raised:
        create_plugin_manager()

    message = str(raised.value)
    assert "entry point 'testplugin'" in message
    assert "(gw_broken_plugin)" in message
    assert "gw-broken-plugin 0.1" in message
    assert "failed to import" in message
    assert "gw_broken_plugin needs GW_PLUGIN_TOKEN" in message


def test_entry_point_broken_but_blocked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, forget_modules: None
) -> None:
    install_plugin(
        tmp_path, "gw_broken_plugin", "raise RuntimeError('boom')\n", distribution="gw-broken-plugin"
    )
    monkeypatch.syspath_prepend(str(tmp_path))

    manager = create_plugin_manager(blocked=["testplugin"])

    assert not manager.has_plugin("testplugin")


def test_entry_point_unknown_hook(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, forget_modules: None
) -> None:
    install_plugin(
        tmp_path,
        "gw_broken_plugin",
        "def gw_job_finished(ctx):\n    return None\n",
        distribution="gw-broken-plugin",
    )
    monkeypatch.syspath_prepend(str(tmp_path))

    with pytest.raises(PluginError) as raised:
        create_plugin_manager()

    message = str(raised.value)
    assert "gw_job_finished" in message
    assert "gw_job_complete" in message


# ---------------------------------------------------------------------------
# gw add with an installed plugin
# ---------------------------------------------------------------------------


def run_gw_add(url: str, schema: str, plugin_folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``gw add`` with ``plugin_folder`` on PYTHONPATH, so the plugin's entry point is found."""
    environment = {key: value for key, value in os.environ.items() if key != "DATABASE_URL"}
    environment["PYTHONPATH"] = os.pathsep.join(
        [str(plugin_folder), *filter(None, [os.environ.get("PYTHONPATH")])]
    )
    return subprocess.run(
        [sys.executable, "-m", "gwcore.cli", "add", "-c", url, "-s", schema, *args],
        cwd=plugin_folder,
        env=environment,
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT,
        check=False,
    )


def fetch_payloads(url: str, schema: str) -> list[tuple[str, Any]]:
    query = sql.SQL(
        "select v.task_identifier, p.payload from {schema}.jobs v "
        "join {schema}._private_jobs p using (id) order by v.id"
    ).format(schema=sql.Identifier(schema))
    with psycopg.connect(url, autocommit=True, row_factory=dict_row) as conn:
        return [(row["task_identifier"], row["payload"]) for row in conn.execute(query).fetchall()]


@pytest.fixture
def plugin_folder(tmp_path: Path) -> Path:
    """A folder, not on sys.path, in which tests/data/gw_test_plugin.py is installed."""
    folder = tmp_path / "site"
    folder.mkdir()
    install_plugin(folder, "gw_test_plugin", (DATA / "gw_test_plugin.py").read_text(encoding="utf-8"))
    return folder


def test_gw_add_plugin_changes_payload(gw_database_url: str, gw_schema: str, plugin_folder: Path) -> None:
    result = run_gw_add(gw_database_url, gw_schema, plugin_folder, "send_email", '{"to": "a@example.com"}')

    assert result.returncode == 0, result.stderr
    stamped = {"to": "a@example.com", "stamped_by": "gw_test_plugin"}
    assert json.loads(result.stdout)["payload"] == stamped
    assert fetch_payloads(gw_database_url, gw_schema) == [("send_email", stamped)]


def test_gw_add_plugin_rejects_job(gw_database_url: str, gw_schema: str, plugin_folder: Path) -> None:
    result = run_gw_add(
        gw_database_url, gw_schema, plugin_folder, "send_email", '{"reject": "no mail on Sundays"}'
    )

    assert result.returncode == 1
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    assert "plugin 'testplugin' rejected job 'send_email': no mail on Sundays" in result.stderr
    assert fetch_payloads(gw_database_url, gw_schema) == []


def test_gw_add_plugin_skips_job(gw_database_url: str, gw_schema: str, plugin_folder: Path) -> None:
    result = run_gw_add(gw_database_url, gw_schema, plugin_folder, "send_email", '{"skip": true}')

    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    assert "a plugin skipped this job; nothing was added" in result.stderr
    assert fetch_payloads(gw_database_url, gw_schema) == []


def test_gw_add_broken_plugin(gw_database_url: str, gw_schema: str, tmp_path: Path) -> None:
    folder = tmp_path / "site"
    folder.mkdir()
    install_plugin(folder, "gw_broken_plugin", "raise RuntimeError('boom at import')\n")

    result = run_gw_add(gw_database_url, gw_schema, folder, "send_email")

    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "entry point 'testplugin' (gw_broken_plugin) of gw-test-plugin 0.1" in result.stderr
    assert "boom at import" in result.stderr
    assert fetch_payloads(gw_database_url, gw_schema) == []


def test_gw_add_without_plugin(gw_database_url: str, gw_schema: str, tmp_path: Path) -> None:
    shutil.copy(DATA / "gw_test_plugin.py", tmp_path / "gw_test_plugin.py")

    result = run_gw_add(gw_database_url, gw_schema, tmp_path, "send_email", '{"to": "b@example.com"}')

    assert result.returncode == 0, result.stderr
    assert fetch_payloads(gw_database_url, gw_schema) == [("send_email", {"to": "b@example.com"})]
