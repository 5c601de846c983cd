"""Plugin discovery by the ``gw`` command: each source, blocking, autoload control, errors and ``gw plugins``.

Each test runs ``python -m gwcore.cli`` in its own temporary working directory.
Plugin modules are written into that directory (which ``gw`` puts on
``sys.path``), and an entry-point plugin is "installed" by writing its
``*.dist-info`` folder into a folder on ``PYTHONPATH``.
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

from gwcore.plugins import ENTRY_POINT_GROUP

COMMAND_TIMEOUT = 60.0
GW_VARIABLES = ("GW_PLUGINS", "GW_DISABLE_PLUGIN_AUTOLOAD", "DATABASE_URL", "GW_CONNECTION")

# A plugin module that implements one observer hook.
OBSERVER = "def gw_job_complete(ctx):\n    return None\n"


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


def run_gw(
    *args: str, cwd: Path, env: Mapping[str, str] | None = None, site: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``gw ARGS`` in ``cwd`` without inherited GW_* variables, with ``env`` and ``site`` added."""
    environment = {key: value for key, value in os.environ.items() if key not in GW_VARIABLES}
    environment.update(env or {})
    if site is not None:
        environment["PYTHONPATH"] = os.pathsep.join(
            [str(site), *filter(None, [os.environ.get("PYTHONPATH")])]
        )
    return subprocess.run(
        [sys.executable, "-m", "gwcore.cli", *args],
        cwd=cwd,
        env=environment,
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT,
        check=False,
    )


def plugins_json(*args: str, cwd: Path, **kwargs: Any) -> dict[str, Any]:
    result = run_gw("plugins", "--json", *args, cwd=cwd, **kwargs)
    assert result.returncode == 0, result.stderr
    document: dict[str, Any] = json.loads(result.stdout)
    return document


def plugin_names(document: Mapping[str, Any]) -> list[str]:
    return [plugin["name"] for plugin in document["plugins"]]


def plugin_source(document: Mapping[str, Any], name: str) -> str:
    sources = [plugin["source"] for plugin in document["plugins"] if plugin["name"] == name]
    assert len(sources) == 1, document
    return str(sources[0])


@pytest.fixture
def site(tmp_path: Path) -> Path:
    """A folder with the entry-point plugin ``testplugin`` of gw-test-plugin 0.1, for PYTHONPATH."""
    folder = tmp_path / "site"
    folder.mkdir()
    install_plugin(folder, "gw_ep_plugin", OBSERVER)
    return folder


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """The working directory, with plugin modules ``plug_a``, ``plug_b`` and ``plug_c``."""
    folder = tmp_path / "project"
    folder.mkdir()
    for name in ("plug_a", "plug_b", "plug_c"):
        (folder / f"{name}.py").write_text(OBSERVER, encoding="utf-8")
    return folder


# ---------------------------------------------------------------------------
# Sources
# ---------------------------------------------------------------------------


def test_env_plugins_registered(project: Path) -> None:
    document = plugins_json(cwd=project, env={"GW_PLUGINS": "plug_a, plug_b"})

    assert plugin_names(document) == ["console", "lock_sweep", "plug_a", "plug_b"]
    assert plugin_source(document, "plug_a") == "env GW_PLUGINS"


def test_flag_plugin_registered(project: Path) -> None:
    document = plugins_json("-p", "plug_a", cwd=project)

    assert plugin_names(document) == ["console", "lock_sweep", "plug_a"]
    assert plugin_source(document, "plug_a") == "command line -p"


def test_flag_before_command(project: Path) -> None:
    result = run_gw("-p", "plug_b", "plugins", "--json", cwd=project)

    assert result.returncode == 0, result.stderr
    assert plugin_names(json.loads(result.stdout)) == ["console", "lock_sweep", "plug_b"]


def test_pyproject_plugins_registered(project: Path) -> None:
    (project / "pyproject.toml").write_text('[tool.gw]\nplugins = ["plug_c"]\n', encoding="utf-8")

    document = plugins_json(cwd=project)

    assert plugin_names(document) == ["console", "lock_sweep", "plug_c"]
    assert plugin_source(document, "plug_c").startswith("pyproject.toml plugins (")


def test_gw_toml_plugins_registered(project: Path) -> None:
    (project / "gw.toml").write_text('plugins = ["plug_c"]\n', encoding="utf-8")

    document = plugins_json(cwd=project)

    assert plugin_names(document) == ["console", "lock_sweep", "plug_c"]
    assert plugin_source(document, "plug_c").startswith("gw.toml plugins (")


def test_gwconf_registered(project: Path) -> None:
    (project / "gwconf.py").write_text(OBSERVER, encoding="utf-8")

    document = plugins_json(cwd=project)

    assert plugin_names(document) == ["console", "lock_sweep", "gwconf"]
    assert plugin_source(document, "gwconf") == f"gwconf.py at {(project / 'gwconf.py').resolve()}"
    assert document["call_order"]["gw_job_complete"] == ["gwconf", "console"]


def test_entry_point_recorded(project: Path, site: Path) -> None:
    document = plugins_json(cwd=project, site=site)

    entry = [plugin for plugin in document["plugins"] if plugin["name"] == "testplugin"]
    assert entry == [
        {
            "name": "testplugin",
            "source": "entry point 'testplugin' (gw_ep_plugin) of gw-test-plugin 0.1",
            "distribution": "gw-test-plugin",
            "version": "0.1",
            "hooks": ["gw_job_complete"],
        }
    ]


def test_registration_order_all_sources(project: Path, site: Path) -> None:
    (project / "pyproject.toml").write_text('[tool.gw]\nplugins = ["plug_c"]\n', encoding="utf-8")
    (project / "gwconf.py").write_text(OBSERVER, encoding="utf-8")

    document = plugins_json("-p", "plug_b", cwd=project, site=site, env={"GW_PLUGINS": "plug_a"})

    expected = ["console", "lock_sweep", "testplugin", "plug_a", "plug_b", "plug_c", "gwconf"]
    assert plugin_names(document) == expected
    # pluggy calls the plugin registered last first.
    assert document["call_order"]["gw_job_complete"] == [*reversed(expected[2:]), "console"]


def test_same_module_twice_once(project: Path) -> None:
    document = plugins_json("-p", "plug_a", cwd=project, env={"GW_PLUGINS": "plug_a"})

    assert plugin_names(document) == ["console", "lock_sweep", "plug_a"]
    assert plugin_source(document, "plug_a") == "env GW_PLUGINS"


# ---------------------------------------------------------------------------
# Blocking and autoload
# ---------------------------------------------------------------------------


def test_flag_blocks_builtin(project: Path) -> None:
    document = plugins_json("-p", "no:console", cwd=project)

    assert plugin_names(document) == ["lock_sweep"]
    assert "gw_job_complete" not in document["call_order"]


def test_env_blocks_builtin_and_entry_point(project: Path, site: Path) -> None:
    document = plugins_json(cwd=project, site=site, env={"GW_PLUGINS": "no:lock_sweep,no:testplugin"})

    assert plugin_names(document) == ["console"]


def test_config_blocks_builtin(project: Path) -> None:
    (project / "pyproject.toml").write_text('[tool.gw]\nplugins = ["no:console"]\n', encoding="utf-8")

    document = plugins_json(cwd=project)

    assert plugin_names(document) == ["lock_sweep"]


def test_block_beats_request(project: Path) -> None:
    document = plugins_json("-p", "plug_a", cwd=project, env={"GW_PLUGINS": "no:plug_a"})

    assert plugin_names(document) == ["console", "lock_sweep"]


def test_autoload_disabled_skips_entry_point(project: Path, site: Path) -> None:
    document = plugins_json(cwd=project, site=site, env={"GW_DISABLE_PLUGIN_AUTOLOAD": "1"})

    assert plugin_names(document) == ["console", "lock_sweep"]


@pytest.mark.parametrize("where", ["flag", "env", "pyproject"])
def test_autoload_disabled_named_loads(where: str, project: Path, site: Path) -> None:
    env = {"GW_DISABLE_PLUGIN_AUTOLOAD": "1"}
    args: list[str] = []
    if where == "flag":
        args = ["-p", "testplugin"]
    elif where == "env":
        env["GW_PLUGINS"] = "testplugin"
    else:
        (project / "pyproject.toml").write_text('[tool.gw]\nplugins = ["testplugin"]\n', encoding="utf-8")

    document = plugins_json(*args, cwd=project, site=site, env=env)

    assert plugin_names(document) == ["console", "lock_sweep", "testplugin"]
    assert plugin_source(document, "testplugin").startswith("entry point 'testplugin'")


# ---------------------------------------------------------------------------
# Broken plugins
# ---------------------------------------------------------------------------

BROKEN = "raise RuntimeError('broken plugin needs GW_TOKEN')\n"


@pytest.mark.parametrize("where", ["env", "flag", "pyproject", "gw_toml", "gwconf", "entry_point"])
def test_broken_plugin_names_source(where: str, tmp_path: Path, project: Path) -> None:
    (project / "plug_broken.py").write_text(BROKEN, encoding="utf-8")
    env: dict[str, str] = {}
    args: list[str] = []
    site: Path | None = None
    if where == "env":
        env["GW_PLUGINS"] = "plug_broken"
        expected = "plugin 'plug_broken' from env GW_PLUGINS failed to import"
    elif where == "flag":
        args = ["-p", "plug_broken"]
        expected = "plugin 'plug_broken' from command line -p failed to import"
    elif where == "pyproject":
        (project / "pyproject.toml").write_text('[tool.gw]\nplugins = ["plug_broken"]\n', encoding="utf-8")
        expected = f"plugin 'plug_broken' from pyproject.toml plugins ({project / 'pyproject.toml'})"
    elif where == "gw_toml":
        (project / "gw.toml").write_text('plugins = ["plug_broken"]\n', encoding="utf-8")
        expected = f"plugin 'plug_broken' from gw.toml plugins ({project / 'gw.toml'})"
    elif where == "gwconf":
        (project / "gwconf.py").write_text(BROKEN, encoding="utf-8")
        expected = f"plugin 'gwconf' from gwconf.py at {(project / 'gwconf.py').resolve()} failed to import"
    else:
        site = tmp_path / "broken_site"
        site.mkdir()
        install_plugin(site, "gw_ep_broken", BROKEN, distribution="gw-broken-plugin")
        expected = "entry point 'testplugin' (gw_ep_broken) of gw-broken-plugin 0.1 failed to import"

    result = run_gw("plugins", *args, cwd=project, env=env, site=site)

    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert expected in result.stderr
    assert "broken plugin needs GW_TOKEN" in result.stderr
    assert result.stdout == ""


def test_missing_module_exits_2(project: Path) -> None:
    result = run_gw("config", "-p", "no_such_plugin_module", cwd=project)

    assert result.returncode == 2
    assert "plugin 'no_such_plugin_module' from command line -p failed to import" in result.stderr
    assert "No module named 'no_such_plugin_module'" in result.stderr


def test_unknown_hook_rejected(project: Path) -> None:
    (project / "plug_typo.py").write_text("def gw_job_completed(ctx):\n    pass\n", encoding="utf-8")

    result = run_gw("plugins", "-p", "plug_typo", cwd=project)

    assert result.returncode == 2
    assert "plugin 'plug_typo' from command line -p failed to register" in result.stderr
    assert "unknown hook gw_job_completed (did you mean gw_job_complete?)" in result.stderr


def test_wrong_arguments_rejected(project: Path) -> None:
    (project / "plug_args.py").write_text("def gw_job_complete(job):\n    pass\n", encoding="utf-8")

    result = run_gw("plugins", "-p", "plug_args", cwd=project)

    assert result.returncode == 2
    assert "plugin 'plug_args' from command line -p failed to register" in result.stderr
    assert "gw_job_complete takes these arguments: (ctx)" in result.stderr


# ---------------------------------------------------------------------------
# gw plugins output
# ---------------------------------------------------------------------------


def test_plugins_table(project: Path, site: Path) -> None:
    result = run_gw("plugins", "-p", "plug_a", cwd=project, site=site)

    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["NAME", "SOURCE", "VERSION", "HOOKS"]
    testplugin = next(line for line in lines if line.startswith("testplugin "))
    assert "entry point 'testplugin' (gw_ep_plugin) of gw-test-plugin 0.1" in testplugin
    assert testplugin.split()[-2:] == ["0.1", "gw_job_complete"]
    plug_a = next(line for line in lines if line.startswith("plug_a "))
    assert "command line -p" in plug_a
    assert "  gw_job_complete: plug_a -> testplugin -> console" in lines
    assert "  gw_worker_start: lock_sweep" in lines


def test_plugins_hooks_table(project: Path) -> None:
    result = run_gw("plugins", "--hooks", cwd=project)

    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["HOOK", "ARGUMENTS", "SUMMARY"]
    complete = next(line for line in lines if line.startswith("gw_job_complete "))
    assert complete.split(None, 2) == [
        "gw_job_complete",
        "(ctx)",
        "Observer. Fires after the job's row was deleted as done.",
    ]
    assert any(line.startswith("gw_addoption ") and "(parser)" in line for line in lines)


def test_plugins_hooks_json(project: Path) -> None:
    result = run_gw("plugins", "--hooks", "--json", cwd=project)

    assert result.returncode == 0, result.stderr
    hooks = {hook["name"]: hook for hook in json.loads(result.stdout)}
    assert hooks["gw_configure"]["arguments"] == ["config"]
    assert (
        hooks["gw_before_job_run"]["summary"]
        == "Interceptor. Fires before the task is called with ``ctx.payload``."
    )
    assert len(hooks) == 22


def test_configure_error_names_plugin(tmp_path: Path) -> None:
    (tmp_path / "breaks_configure.py").write_text(
        "def gw_configure(config):\n    raise RuntimeError('oops in configure')\n"
    )
    environment = {key: value for key, value in os.environ.items() if not key.startswith("GW_")}
    environment["PYTHONPATH"] = str(tmp_path)

    result = subprocess.run(
        [sys.executable, "-m", "gwcore.cli", "-p", "breaks_configure", "config"],
        cwd=tmp_path,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert (
        "plugin 'breaks_configure' raised in gw_configure: RuntimeError: oops in configure" in result.stderr
    )
