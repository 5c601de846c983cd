"""Task registry: which function runs the jobs of each task identifier.

A task is called as ``task(payload, ctx)``, where ``ctx`` is a `JobContext`.
It may be ``async def`` or a plain ``def``. The worker runs plain functions in
a thread pool, so that they do not block the event loop.

Tasks are registered with the `task` decorator, by importing a module whose
functions use that decorator, or from a directory in which ``send_email.py``
defines a function named ``task`` for the identifier ``send_email`` and
``billing/charge.py`` one for ``billing/charge``.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import sys
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

from gwcore.errors import TaskLoadError, ValidationError
from gwcore.job import MAX_IDENTIFIER_LENGTH

TaskFunction = Callable[..., Any]
F = TypeVar("F", bound=TaskFunction)


class TaskRegistry(Mapping[str, TaskFunction]):
    """A mapping from task identifier to task function."""

    def __init__(self, tasks: Mapping[str, TaskFunction] | None = None) -> None:
        self._tasks: dict[str, TaskFunction] = {}
        for identifier, function in (tasks or {}).items():
            self.add(identifier, function)

    def __getitem__(self, identifier: str) -> TaskFunction:
        return self._tasks[identifier]

    def __iter__(self) -> Iterator[str]:
        return iter(self._tasks)

    def __len__(self) -> int:
        return len(self._tasks)

    def add(self, identifier: str, function: TaskFunction, *, replace: bool = False) -> None:
        """Register ``function`` for ``identifier``.

        Raises `ValidationError` for an invalid identifier, a function that is
        not callable, or an identifier that is taken (unless ``replace``).
        """
        if not isinstance(identifier, str) or not 1 <= len(identifier) <= MAX_IDENTIFIER_LENGTH:
            raise ValidationError(
                f"task identifier is invalid: {identifier!r}; "
                f"it must be a string of 1 to {MAX_IDENTIFIER_LENGTH} characters."
            )
        if not callable(function):
            raise ValidationError(
                f"task {identifier!r} is invalid: {function!r} is not callable; "
                "register a function taking (payload, ctx)."
            )
        existing = self._tasks.get(identifier)
        if existing is not None and existing is not function and not replace:
            raise ValidationError(
                f"task {identifier!r} is already registered to {_describe(existing)}; "
                f"{_describe(function)} cannot take it too. Rename one of them."
            )
        self._tasks[identifier] = function

    def task(self, identifier: str | None = None) -> Callable[[F], F]:
        """Decorate a function to register it, under ``identifier`` or its own name."""

        if callable(identifier):
            raise ValidationError(
                "registry.task must be called: write @registry.task() or @registry.task('name'), "
                "not @registry.task."
            )

        def register(function: F) -> F:
            self.add(function.__name__ if identifier is None else identifier, function)
            return function

        return register

    def update(self, other: Mapping[str, TaskFunction]) -> None:
        for identifier, function in other.items():
            self.add(identifier, function)

    def load(self, source: str) -> list[str]:
        """Load tasks from a directory path or a dotted module name and return their identifiers.

        A value that contains a path separator, starts with ``.`` or ``~``, or
        names an existing directory that is not a Python package is read as a
        directory. Anything else, a package's name included, is imported as a module.
        """
        path = Path(source)
        is_package = (path / "__init__.py").is_file()
        if "/" in source or source.startswith((".", "~")) or (path.is_dir() and not is_package):
            return self.load_directory(path.expanduser())
        return self.load_module(source)

    def load_module(self, module_name: str) -> list[str]:
        """Import ``module_name`` and register the tasks it decorated with `gwcore.task`.

        Tasks that the module registers in the default registry are copied
        into this one, so that a worker using this registry runs them.
        """
        before = set(default_registry)
        try:
            module = importlib.import_module(module_name)
        except ImportError as error:
            raise TaskLoadError(
                f"task module {module_name!r} could not be imported: {error}. Check the name, and "
                "that its folder is on sys.path (run gw from the project folder)."
            ) from error
        except Exception as error:
            raise TaskLoadError(f"task module {module_name!r} raised on import: {error!r}") from error

        added = [name for name in default_registry if name not in before]
        for name, function in default_registry.items():
            if getattr(function, "__module__", None) == module.__name__ or name in added:
                self.add(name, function)
                if name not in added:
                    added.append(name)
        if not added and self is not default_registry:
            raise TaskLoadError(
                f"task module {module_name!r} registered no task; decorate its task functions "
                "with @gwcore.task('name')."
            )
        return added

    def load_directory(self, directory: Path) -> list[str]:
        """Register a task for each ``*.py`` file below ``directory`` that defines ``task``."""
        root = directory.resolve()
        if not root.is_dir():
            raise TaskLoadError(f"task directory {str(directory)!r} does not exist or is not a folder.")

        # Import every file and check every identifier before registering any, so that a
        # failure leaves this registry as it was.
        loaded: dict[str, TaskFunction] = {}
        for file in sorted(root.rglob("*.py")):
            relative = file.relative_to(root)
            if file.name.startswith("_") or any(part.startswith((".", "_")) for part in relative.parts):
                continue
            identifier = relative.with_suffix("").as_posix()
            loaded[identifier] = _load_task_file(file, identifier)
        if not loaded:
            raise TaskLoadError(
                f"task directory {str(directory)!r} contains no task: add a file such as "
                "send_email.py that defines a function named 'task'."
            )
        TaskRegistry(self).update(loaded)
        self._tasks.update(loaded)
        return list(loaded)


def _load_task_file(file: Path, identifier: str) -> TaskFunction:
    # The folder's hash keeps two task folders with the same file names apart in sys.modules.
    folder = hashlib.sha1(str(file.parent).encode()).hexdigest()[:8]
    module_name = f"gwcore_tasks_{folder}." + identifier.replace("/", ".").replace("-", "_")
    spec = importlib.util.spec_from_file_location(module_name, file)
    if spec is None or spec.loader is None:
        raise TaskLoadError(f"task file {str(file)!r} could not be loaded as a Python module.")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as error:
        del sys.modules[module_name]
        raise TaskLoadError(
            f"task file {str(file)!r} raised on import: {type(error).__name__}: {error}"
        ) from error

    function: TaskFunction | None = getattr(module, "task", None)
    if function is None or not callable(function):
        raise TaskLoadError(
            f"task file {str(file)!r} defines no function named 'task'; "
            f"define `def task(payload, ctx):` to run the jobs of {identifier!r}. If the folder is a "
            "package of @gwcore.task functions, pass its module instead, such as --tasks myapp.tasks."
        )
    return function


def _describe(function: TaskFunction) -> str:
    module = getattr(function, "__module__", "?")
    name = getattr(function, "__qualname__", repr(function))
    return f"{module}.{name}"


def is_async_task(function: TaskFunction) -> bool:
    """Return whether calling ``function`` returns a coroutine to await."""
    return inspect.iscoroutinefunction(function) or inspect.iscoroutinefunction(
        getattr(function, "__call__", None)  # noqa: B004  # callable objects with async __call__
    )


default_registry = TaskRegistry()


def task(identifier: str | None = None) -> Callable[[F], F]:
    """Register the decorated function in the default registry, which workers use unless given tasks.

    ``@gwcore.task("send_email")`` registers ``send_email``; ``@gwcore.task()``
    uses the function's own name.
    """
    if callable(identifier):
        raise ValidationError(
            "gwcore.task must be called: write @gwcore.task() or @gwcore.task('name'), not @gwcore.task."
        )
    return default_registry.task(identifier)
