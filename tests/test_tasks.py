"""Task registration and loading: TaskRegistry, the gwcore.task decorator, modules and directories."""

from __future__ import annotations

import shutil
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import gwcore
import gwcore.tasks
from gwcore import TaskLoadError, TaskRegistry, ValidationError
from gwcore.tasks import is_async_task

DATA = Path(__file__).parent / "data"


def first_task(payload: Any, ctx: Any) -> None:
    return None


def second_task(payload: Any, ctx: Any) -> None:
    return None


@pytest.fixture
def default_registry(monkeypatch: pytest.MonkeyPatch) -> TaskRegistry:
    """An empty default registry in place of the process-wide one, for this test only."""
    registry = TaskRegistry()
    monkeypatch.setattr(gwcore.tasks, "default_registry", registry)
    return registry


@pytest.fixture
def module_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A folder on sys.path for task modules, whose imports are removed from sys.modules afterwards."""
    folder = tmp_path / "modules"
    folder.mkdir()
    monkeypatch.syspath_prepend(str(folder))
    before = set(sys.modules)
    yield folder
    for name in set(sys.modules) - before:
        module_file = getattr(sys.modules[name], "__file__", None) or ""
        if module_file.startswith(str(folder)):
            del sys.modules[name]


def unique_module_name(prefix: str) -> str:
    """Return a module name that no earlier import used, so Python cannot serve it from sys.modules."""
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


# ---------------------------------------------------------------------------
# TaskRegistry.add
# ---------------------------------------------------------------------------


def test_add_registers_function() -> None:
    registry = TaskRegistry()

    registry.add("send_email", first_task)

    assert registry["send_email"] is first_task
    assert list(registry) == ["send_email"]
    assert len(registry) == 1


def test_add_accepts_128_characters() -> None:
    registry = TaskRegistry()

    registry.add("t" * 128, first_task)

    assert registry["t" * 128] is first_task


@pytest.mark.parametrize("identifier", ["", "t" * 129])
def test_add_rejects_identifier_length(identifier: str) -> None:
    registry = TaskRegistry()

    with pytest.raises(ValidationError) as raised:
        registry.add(identifier, first_task)

    assert "task identifier is invalid" in str(raised.value)
    assert "1 to 128 characters" in str(raised.value)
    assert len(registry) == 0


def test_add_rejects_non_string_identifier() -> None:
    registry = TaskRegistry()

    with pytest.raises(ValidationError) as raised:
        registry.add(42, first_task)  # type: ignore[arg-type]

    assert "42" in str(raised.value)
    assert len(registry) == 0


def test_add_rejects_non_callable() -> None:
    registry = TaskRegistry()

    with pytest.raises(ValidationError) as raised:
        registry.add("send_email", "not a function")  # type: ignore[arg-type]

    assert "'send_email'" in str(raised.value)
    assert "'not a function' is not callable" in str(raised.value)
    assert len(registry) == 0


def test_add_duplicate_names_both() -> None:
    registry = TaskRegistry()
    registry.add("send_email", first_task)

    with pytest.raises(ValidationError) as raised:
        registry.add("send_email", second_task)

    message = str(raised.value)
    assert "'send_email'" in message
    assert f"{__name__}.first_task" in message
    assert f"{__name__}.second_task" in message
    assert registry["send_email"] is first_task


def test_add_same_function_twice() -> None:
    registry = TaskRegistry()
    registry.add("send_email", first_task)

    registry.add("send_email", first_task)

    assert registry["send_email"] is first_task
    assert len(registry) == 1


def test_add_replace_true() -> None:
    registry = TaskRegistry()
    registry.add("send_email", first_task)

    registry.add("send_email", second_task, replace=True)

    assert registry["send_email"] is second_task
    assert len(registry) == 1


def test_registry_from_mapping() -> None:
    registry = TaskRegistry({"a": first_task, "b": second_task})

    assert dict(registry) == {"a": first_task, "b": second_task}


def test_registry_from_mapping_validates() -> None:
    with pytest.raises(ValidationError) as raised:
        TaskRegistry({"": first_task})

    assert "task identifier is invalid" in str(raised.value)


def test_update_rejects_duplicate() -> None:
    registry = TaskRegistry({"a": first_task})

    with pytest.raises(ValidationError) as raised:
        registry.update({"a": second_task})

    assert "'a'" in str(raised.value)
    assert registry["a"] is first_task


# ---------------------------------------------------------------------------
# Decorators
# ---------------------------------------------------------------------------


def test_task_decorator_with_name(default_registry: TaskRegistry) -> None:
    @gwcore.task("mail/send")
    def send(payload: Any, ctx: Any) -> None:
        return None

    assert default_registry["mail/send"] is send
    assert list(default_registry) == ["mail/send"]


def test_task_decorator_without_name(default_registry: TaskRegistry) -> None:
    @gwcore.task()
    async def resize_image(payload: Any, ctx: Any) -> None:
        return None

    assert default_registry["resize_image"] is resize_image
    assert is_async_task(resize_image)


def test_task_decorator_bare_rejected(default_registry: TaskRegistry) -> None:
    with pytest.raises(ValidationError) as raised:

        @gwcore.task  # type: ignore[arg-type]
        def send(payload: Any, ctx: Any) -> None:
            return None

    assert "@gwcore.task()" in str(raised.value)
    assert "@gwcore.task('name')" in str(raised.value)
    assert len(default_registry) == 0


def test_task_decorator_empty_name_rejected(default_registry: TaskRegistry) -> None:
    with pytest.raises(ValidationError) as raised:

        @gwcore.task("")
        def send(payload: Any, ctx: Any) -> None:
            return None

    assert "task identifier is invalid: ''" in str(raised.value)
    assert len(default_registry) == 0


def test_registry_decorator_with_name() -> None:
    registry = TaskRegistry()

    @registry.task("billing/charge")
    def charge(payload: Any, ctx: Any) -> None:
        return None

    assert registry["billing/charge"] is charge


def test_registry_decorator_bare_rejected() -> None:
    registry = TaskRegistry()

    with pytest.raises(ValidationError) as raised:

        @registry.task  # type: ignore[arg-type]
        def charge(payload: Any, ctx: Any) -> None:
            return None

    assert "registry.task()" in str(raised.value)
    assert len(registry) == 0


# ---------------------------------------------------------------------------
# load_module
# ---------------------------------------------------------------------------

DECORATED_MODULE = """
import gwcore


@gwcore.task("mail/send")
async def send(payload, ctx):
    return "sent"


@gwcore.task()
def resize_image(payload, ctx):
    return "resized"


def helper(payload, ctx):
    return "not a task"
"""


def test_load_module_registers_tasks(module_dir: Path, default_registry: TaskRegistry) -> None:
    name = unique_module_name("decorated")
    write(module_dir / f"{name}.py", DECORATED_MODULE)
    registry = TaskRegistry()

    identifiers = registry.load_module(name)

    assert sorted(identifiers) == ["mail/send", "resize_image"]
    assert sorted(registry) == ["mail/send", "resize_image"]
    assert registry["mail/send"].__module__ == name
    assert registry["resize_image"]({}, None) == "resized"
    assert "helper" not in registry


def test_load_module_dotted_name(module_dir: Path, default_registry: TaskRegistry) -> None:
    package = unique_module_name("app")
    write(module_dir / package / "__init__.py", "")
    write(module_dir / package / "jobs.py", DECORATED_MODULE)
    registry = TaskRegistry()

    identifiers = registry.load_module(f"{package}.jobs")

    assert sorted(identifiers) == ["mail/send", "resize_image"]


def test_load_module_missing(module_dir: Path, default_registry: TaskRegistry) -> None:
    registry = TaskRegistry()

    with pytest.raises(TaskLoadError) as raised:
        registry.load_module("no_such_task_module_xyz")

    assert "'no_such_task_module_xyz'" in str(raised.value)
    assert "could not be imported" in str(raised.value)
    assert "sys.path" in str(raised.value)
    assert len(registry) == 0


def test_load_module_raises_on_import(module_dir: Path, default_registry: TaskRegistry) -> None:
    name = unique_module_name("broken")
    write(module_dir / f"{name}.py", "raise RuntimeError('settings.API_KEY is missing')\n")
    registry = TaskRegistry()

    with pytest.raises(TaskLoadError) as raised:
        registry.load_module(name)

    assert f"{name!r}" in str(raised.value)
    assert "raised on import" in str(raised.value)
    assert "RuntimeError" in str(raised.value)
    assert "settings.API_KEY is missing" in str(raised.value)
    assert isinstance(raised.value.__cause__, RuntimeError)
    assert len(registry) == 0


def test_load_module_without_tasks(module_dir: Path, default_registry: TaskRegistry) -> None:
    name = unique_module_name("empty")
    write(module_dir / f"{name}.py", "def task(payload, ctx):\n    return None\n")
    registry = TaskRegistry()

    with pytest.raises(TaskLoadError) as raised:
        registry.load_module(name)

    assert f"{name!r}" in str(raised.value)
    assert "registered no task" in str(raised.value)
    assert "@gwcore.task" in str(raised.value)


def test_load_module_already_imported(module_dir: Path, default_registry: TaskRegistry) -> None:
    name = unique_module_name("twice")
    write(module_dir / f"{name}.py", DECORATED_MODULE)
    first = TaskRegistry()
    first.load_module(name)
    second = TaskRegistry()

    identifiers = second.load_module(name)

    assert sorted(identifiers) == ["mail/send", "resize_image"]
    assert second["mail/send"] is first["mail/send"]


# ---------------------------------------------------------------------------
# load_directory
# ---------------------------------------------------------------------------

TASK_FILE = "def task(payload, ctx):\n    return {!r}\n"
MUST_NOT_LOAD = "raise RuntimeError('this file must be skipped')\n"


def test_load_directory_nested(tmp_path: Path) -> None:
    write(tmp_path / "send_email.py", TASK_FILE.format("send_email"))
    write(tmp_path / "billing" / "charge.py", TASK_FILE.format("billing/charge"))
    write(tmp_path / "billing" / "eu" / "vat.py", TASK_FILE.format("billing/eu/vat"))
    registry = TaskRegistry()

    identifiers = registry.load_directory(tmp_path)

    assert sorted(identifiers) == ["billing/charge", "billing/eu/vat", "send_email"]
    assert registry["billing/charge"]({}, None) == "billing/charge"
    assert registry["billing/eu/vat"]({}, None) == "billing/eu/vat"
    assert registry["send_email"]({}, None) == "send_email"


def test_load_directory_skips_private(tmp_path: Path) -> None:
    write(tmp_path / "hello.py", TASK_FILE.format("hello"))
    write(tmp_path / "_shared.py", MUST_NOT_LOAD)
    write(tmp_path / "__init__.py", MUST_NOT_LOAD)
    write(tmp_path / ".hidden.py", MUST_NOT_LOAD)
    write(tmp_path / "_internal" / "helper.py", MUST_NOT_LOAD)
    write(tmp_path / ".venv" / "lib.py", MUST_NOT_LOAD)
    write(tmp_path / "__pycache__" / "cached.py", MUST_NOT_LOAD)
    write(tmp_path / "notes.txt", "not Python")
    registry = TaskRegistry()

    identifiers = registry.load_directory(tmp_path)

    assert identifiers == ["hello"]
    assert list(registry) == ["hello"]


def test_load_directory_repo_data(tmp_path: Path) -> None:
    shutil.copytree(DATA / "tasks", tmp_path / "tasks")
    registry = TaskRegistry()

    identifiers = registry.load_directory(tmp_path / "tasks")

    assert sorted(identifiers) == ["billing/charge", "hello"]
    assert is_async_task(registry["billing/charge"])
    assert not is_async_task(registry["hello"])


def test_load_directory_file_without_task(tmp_path: Path) -> None:
    write(tmp_path / "a_ok.py", TASK_FILE.format("a_ok"))
    broken = write(tmp_path / "z_helper.py", "def run(payload, ctx):\n    return None\n")
    registry = TaskRegistry()

    with pytest.raises(TaskLoadError) as raised:
        registry.load_directory(tmp_path)

    assert str(broken) in str(raised.value)
    assert "no function named 'task'" in str(raised.value)
    assert "'z_helper'" in str(raised.value)


def test_load_directory_task_not_callable(tmp_path: Path) -> None:
    broken = write(tmp_path / "constant.py", "task = 42\n")
    registry = TaskRegistry()

    with pytest.raises(TaskLoadError) as raised:
        registry.load_directory(tmp_path)

    assert str(broken) in str(raised.value)
    assert "no function named 'task'" in str(raised.value)


def test_load_directory_syntax_error(tmp_path: Path) -> None:
    broken = write(tmp_path / "typo.py", "def task(payload, ctx)\n    return None\n")
    registry = TaskRegistry()

    with pytest.raises(TaskLoadError) as raised:
        registry.load_directory(tmp_path)

    assert str(broken) in str(raised.value)
    assert "SyntaxError" in str(raised.value)
    assert isinstance(raised.value.__cause__, SyntaxError)


def test_load_directory_import_error(tmp_path: Path) -> None:
    broken = write(tmp_path / "needs_dep.py", "import no_such_dependency_xyz\n")
    registry = TaskRegistry()

    with pytest.raises(TaskLoadError) as raised:
        registry.load_directory(tmp_path)

    assert str(broken) in str(raised.value)
    assert "no_such_dependency_xyz" in str(raised.value)


def test_load_directory_failure_adds_nothing(tmp_path: Path) -> None:
    write(tmp_path / "a_ok.py", TASK_FILE.format("a_ok"))
    write(tmp_path / "b_broken.py", "raise ValueError('boom')\n")
    registry = TaskRegistry()

    with pytest.raises(TaskLoadError):
        registry.load_directory(tmp_path)

    assert len(registry) == 0


def test_load_directory_retry_after_fix(tmp_path: Path) -> None:
    write(tmp_path / "a_ok.py", TASK_FILE.format("a_ok"))
    broken = write(tmp_path / "b_broken.py", "raise ValueError('boom')\n")
    registry = TaskRegistry()
    with pytest.raises(TaskLoadError):
        registry.load_directory(tmp_path)
    write(broken, TASK_FILE.format("b_broken"))

    identifiers = registry.load_directory(tmp_path)

    assert identifiers == ["a_ok", "b_broken"]
    assert registry["b_broken"]({}, None) == "b_broken"


def test_load_directory_duplicate_of_existing(tmp_path: Path) -> None:
    write(tmp_path / "hello.py", TASK_FILE.format("hello"))
    write(tmp_path / "world.py", TASK_FILE.format("world"))
    registry = TaskRegistry({"world": first_task})

    with pytest.raises(ValidationError) as raised:
        registry.load_directory(tmp_path)

    assert "'world'" in str(raised.value)
    assert sorted(registry) == ["world"]
    assert registry["world"] is first_task


def test_load_directory_missing(tmp_path: Path) -> None:
    registry = TaskRegistry()

    with pytest.raises(TaskLoadError) as raised:
        registry.load_directory(tmp_path / "nope")

    assert "nope" in str(raised.value)
    assert "does not exist" in str(raised.value)


def test_load_directory_is_file(tmp_path: Path) -> None:
    file = write(tmp_path / "tasks.py", TASK_FILE.format("x"))
    registry = TaskRegistry()

    with pytest.raises(TaskLoadError) as raised:
        registry.load_directory(file)

    assert str(file) in str(raised.value)
    assert "not a folder" in str(raised.value)


def test_load_directory_empty(tmp_path: Path) -> None:
    write(tmp_path / "_private.py", MUST_NOT_LOAD)
    registry = TaskRegistry()

    with pytest.raises(TaskLoadError) as raised:
        registry.load_directory(tmp_path)

    assert str(tmp_path) in str(raised.value)
    assert "contains no task" in str(raised.value)
    assert "send_email.py" in str(raised.value)


# ---------------------------------------------------------------------------
# load: directory or module
# ---------------------------------------------------------------------------


def test_load_existing_directory_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, default_registry: TaskRegistry
) -> None:
    write(tmp_path / "jobs" / "hello.py", TASK_FILE.format("hello"))
    monkeypatch.chdir(tmp_path)
    registry = TaskRegistry()

    identifiers = registry.load("jobs")

    assert identifiers == ["hello"]


@pytest.mark.parametrize("source", ["./missing", "missing/tasks", "../missing"])
def test_load_path_like_is_directory(source: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    registry = TaskRegistry()

    with pytest.raises(TaskLoadError) as raised:
        registry.load(source)

    assert "task directory" in str(raised.value)
    assert "does not exist" in str(raised.value)


def test_load_absolute_directory(tmp_path: Path) -> None:
    write(tmp_path / "hello.py", TASK_FILE.format("hello"))
    registry = TaskRegistry()

    assert registry.load(str(tmp_path)) == ["hello"]


def test_load_dotted_name_is_module(module_dir: Path, default_registry: TaskRegistry) -> None:
    package = unique_module_name("pkg")
    write(module_dir / package / "__init__.py", "")
    write(module_dir / package / "tasks.py", DECORATED_MODULE)
    registry = TaskRegistry()

    identifiers = registry.load(f"{package}.tasks")

    assert sorted(identifiers) == ["mail/send", "resize_image"]


def test_load_plain_name_is_module(
    module_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, default_registry: TaskRegistry
) -> None:
    monkeypatch.chdir(tmp_path)
    registry = TaskRegistry()

    with pytest.raises(TaskLoadError) as raised:
        registry.load("no_such_plain_module")

    assert "task module 'no_such_plain_module'" in str(raised.value)
