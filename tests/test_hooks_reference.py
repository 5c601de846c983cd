"""docs/hooks-reference.md: generated from gwcore.hookspecs, complete, and checked for drift."""

from __future__ import annotations

import dataclasses
import importlib.util
import inspect
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from gwcore import contexts, hookspecs

REPO = Path(__file__).resolve().parent.parent
GENERATOR = REPO / "docs" / "generate_hooks_reference.py"
REFERENCE = REPO / "docs" / "hooks-reference.md"


def load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("generate_hooks_reference", GENERATOR)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look up the defining module there
    spec.loader.exec_module(module)
    return module


def hook_names() -> list[str]:
    return [
        name
        for name, function in vars(hookspecs).items()
        if name.startswith("gw_") and hasattr(function, f"{hookspecs.PROJECT_NAME}_spec")
    ]


def hook_section(text: str, name: str) -> str:
    match = re.search(rf"^### `{name}`.*?(?=^##|\Z)", text, flags=re.MULTILINE | re.DOTALL)
    assert match is not None, f"no section for {name} in {REFERENCE.name}"
    return match.group(0)


def test_reference_is_up_to_date() -> None:
    completed = subprocess.run(
        [sys.executable, str(GENERATOR), "--check"], capture_output=True, text=True, timeout=120
    )

    assert completed.returncode == 0, completed.stderr
    assert completed.stderr == ""


def test_check_reports_stale_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    generator = load_generator()
    stale = tmp_path / "hooks-reference.md"
    stale.write_text("# Hooks reference\n", encoding="utf-8")
    monkeypatch.setattr(generator, "OUTPUT", stale)
    monkeypatch.setattr(generator, "REPO", tmp_path)

    assert generator.main(["--check"]) == 1
    assert generator.main([]) == 0
    assert generator.main(["--check"]) == 0
    assert stale.read_text(encoding="utf-8") == REFERENCE.read_text(encoding="utf-8")


def test_reference_lists_every_hook() -> None:
    text = REFERENCE.read_text(encoding="utf-8")
    names = hook_names()

    assert len(names) >= 12
    for name in names:
        section = hook_section(text, name)
        assert f"def {name}(" in section, name
        assert "**Results**" in section, name


def test_reference_lists_context_fields() -> None:
    text = REFERENCE.read_text(encoding="utf-8")

    for name in hook_names():
        annotation = inspect.signature(getattr(hookspecs, name)).parameters.get("ctx")
        if annotation is None:
            continue  # a configuration hook, which takes parser or config
        context = getattr(contexts, str(annotation.annotation))
        section = hook_section(text, name)
        for field in dataclasses.fields(context):
            assert f"| `{field.name}` |" in section, f"{name}: {field.name}"


def test_hooks_follow_source_order() -> None:
    text = REFERENCE.read_text(encoding="utf-8")

    headings = re.findall(r"^### `(gw_\w+)`", text, flags=re.MULTILINE)

    assert headings == hook_names()
