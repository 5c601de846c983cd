"""The plugin manager: registering plugins, and calling hooks with sync and async implementations.

pluggy calls hook implementations but cannot await them, so gwcore walks each
hook's implementations itself, in pluggy's order, and awaits every result that
is awaitable. The list of implementations is cached per hook and dropped
whenever a plugin is registered or removed, so a hook with no implementation
costs one dictionary lookup.
"""

from __future__ import annotations

import asyncio
import difflib
import importlib
import importlib.util
import inspect
import logging
import os
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from typing import Any

import pluggy

from gwcore import hookspecs
from gwcore.contexts import BeforeJobScheduleContext
from gwcore.errors import GwError, JobScheduleError, PluginError
from gwcore.job import JobSpec
from gwcore.results import HookResult, JobScheduleResult, Outcome, describe_reason

logger = logging.getLogger("gwcore.plugins")

ENTRY_POINT_GROUP = "gwcore.plugins"

# A plugin request of this form blocks the plugin NAME in place of loading it.
BLOCK_PREFIX = "no:"

# The name under which the working directory's gwconf.py registers.
GWCONF_NAME = "gwconf"
GWCONF_FILE = "gwconf.py"

# Built-in plugins, registered under these names unless blocked.
BUILTIN_PLUGINS: dict[str, str] = {
    "console": "gwplugins.console",
    "lock_sweep": "gwplugins.lock_sweep",
}


@dataclass(frozen=True)
class HookCall:
    """One implementation of a hook, ready to call.

    ``takes_ctx`` is true when the implementation takes the hook's argument
    (``ctx``, or ``parser``/``config`` for the configuration hooks).
    """

    plugin_name: str
    function: Any
    takes_ctx: bool


@dataclass(frozen=True)
class PluginRequest:
    """A plugin named by configuration: a module to import, or ``no:NAME`` to block NAME.

    ``source`` names where it was written, such as ``env GW_PLUGINS``.
    """

    name: str
    source: str

    @property
    def blocks(self) -> str | None:
        """The name this request blocks, or None when it requests a plugin to load."""
        if self.name.startswith(BLOCK_PREFIX):
            return self.name[len(BLOCK_PREFIX) :]
        return None


@dataclass(frozen=True)
class PluginOrigin:
    """Origin of a registered plugin; ``distribution`` and ``version`` only for entry points."""

    source: str
    distribution: str | None = None
    version: str | None = None


@dataclass(frozen=True)
class PluginInfo:
    """A registered plugin: its name, source, distribution and the hooks it implements."""

    name: str
    source: str
    distribution: str | None
    version: str | None
    hooks: tuple[str, ...]


class PluginManager(pluggy.PluginManager):
    """pluggy's plugin manager with gwcore's hooks, unmarked ``gw_*`` functions and async calls."""

    def __init__(self) -> None:
        super().__init__(hookspecs.PROJECT_NAME)
        self.add_hookspecs(hookspecs)
        self._calls: dict[str, tuple[HookCall, ...]] = {}
        self._origins: dict[str, PluginOrigin] = {}

    # -- registration ------------------------------------------------------

    def parse_hookimpl_opts(self, plugin: object, name: str) -> pluggy.HookimplOpts | None:
        options = super().parse_hookimpl_opts(plugin, name)
        if options is None and name.startswith("gw_") and callable(getattr(plugin, name, None)):
            return pluggy.HookimplOpts(
                wrapper=False,
                hookwrapper=False,
                optionalhook=False,
                tryfirst=False,
                trylast=False,
                specname=None,
            )
        return options

    def get_canonical_name(self, plugin: object) -> str:
        """Name a plugin by its module or class name, so that messages show a readable name."""
        name = getattr(plugin, "__name__", None)
        if not isinstance(name, str):
            name = type(plugin).__qualname__
        if self.has_plugin(name) and self.get_plugin(name) is not plugin:
            name = f"{name}-{id(plugin):x}"
        return name

    def register(
        self, plugin: object, name: str | None = None, origin: PluginOrigin | None = None
    ) -> str | None:
        """Register ``plugin``; ``origin`` records its source for `plugin_infos` (default: code)."""
        self._calls.clear()
        unknown = _unknown_hooks(plugin)
        if unknown:
            raise PluginError(_describe_unknown_hooks(unknown))
        try:
            registered = super().register(plugin, name)
        except pluggy.PluginValidationError as error:
            raise PluginError(_describe_validation_error(self, error)) from error
        if registered is not None:
            self._origins[registered] = origin or PluginOrigin("code")
        return registered

    def unregister(self, plugin: object | None = None, name: str | None = None) -> Any:
        self._calls.clear()
        removed = super().unregister(plugin, name)
        for registered_name in list(self._origins):
            if not self.has_plugin(registered_name):
                del self._origins[registered_name]
        return removed

    def plugin_infos(self) -> list[PluginInfo]:
        """Return every registered plugin in registration order, with its source and hooks."""
        order = hook_names()
        infos = []
        for name, plugin in self.list_name_plugin():
            if plugin is None:
                continue  # pluggy lists a blocked name with None
            origin = self._origins.get(name, PluginOrigin("code"))
            implemented = {caller.name for caller in self.get_hookcallers(plugin) or ()}
            infos.append(
                PluginInfo(
                    name=name,
                    source=origin.source,
                    distribution=origin.distribution,
                    version=origin.version,
                    hooks=tuple(hook for hook in order if hook in implemented),
                )
            )
        return infos

    def call_order(self) -> dict[str, list[str]]:
        """Return, for each hook with an implementation, the plugin names in the order they are called."""
        order = {}
        for hook in hook_names():
            names = [call.plugin_name for call in self.calls(hook)]
            if names:
                order[hook] = names
        return order

    def check_hooks(self) -> None:
        """Raise `PluginError` if a plugin implements a ``gw_*`` hook that does not exist."""
        try:
            self.check_pending()
        except pluggy.PluginValidationError as error:
            known = ", ".join(sorted(_hook_names()))
            raise PluginError(f"{error}. The hooks that exist are: {known}.") from error

    # -- calling -----------------------------------------------------------

    def calls(self, hook_name: str) -> tuple[HookCall, ...]:
        """Return the implementations of ``hook_name`` in the order they are called."""
        cached = self._calls.get(hook_name)
        if cached is not None:
            return cached
        hook = getattr(self.hook, hook_name)
        calls = tuple(
            HookCall(impl.plugin_name, impl.function, bool(impl.argnames))
            for impl in reversed(hook.get_hookimpls())
        )
        self._calls[hook_name] = calls
        return calls

    def has_calls(self, hook_name: str) -> bool:
        return bool(self.calls(hook_name))

    def call_sync(
        self, hook_name: str, argument: object, *, before_each: Callable[[str], None] | None = None
    ) -> None:
        """Call every implementation of ``hook_name`` outside an event loop; exceptions propagate.

        Used for ``gw_addoption``, which runs before any loop exists. An
        ``async def`` implementation raises `PluginError`. ``before_each``
        receives the plugin's name before each call.
        """
        for call in self.calls(hook_name):
            if before_each is not None:
                before_each(call.plugin_name)
            result = call.function(argument) if call.takes_ctx else call.function()
            if inspect.isawaitable(result):
                if inspect.iscoroutine(result):
                    result.close()
                raise PluginError(
                    f"plugin {call.plugin_name!r} implements {hook_name} with async def; "
                    f"{hook_name} runs before the event loop starts, so write it as a plain def."
                )

    async def call_each(self, hook_name: str, argument: object) -> None:
        """Call and await every implementation of ``hook_name``; the first exception propagates.

        A `GwError` (a `ConfigurationError`, say) propagates as it is. Any other
        exception becomes a `PluginError` that names the plugin and the hook.
        """
        for call in self.calls(hook_name):
            try:
                await _invoke(call, argument)
            except GwError:
                raise
            except Exception as error:
                raise PluginError(
                    f"plugin {call.plugin_name!r} raised in {hook_name}: {type(error).__name__}: {error}"
                ) from error

    async def notify(self, hook_name: str, ctx: object) -> None:
        """Call every implementation of an observer hook; log and swallow their exceptions."""
        for call in self.calls(hook_name):
            try:
                # Called inline rather than through _invoke: this runs several times per job.
                result = call.function(ctx) if call.takes_ctx else call.function()
                if result is not None and inspect.isawaitable(result):
                    await result
            except Exception:
                logger.exception("plugin %r raised in %s; ignoring it", call.plugin_name, hook_name)

    async def intercept(self, hook_name: str, ctx: object) -> HookResult:
        """Run the chain of an interceptor hook until one returns SKIP or a failure.

        Exceptions raised by an implementation propagate to the caller, which
        fails the job with them.
        """
        for call in self.calls(hook_name):
            result = await _invoke(call, ctx)
            if result is None or result is HookResult.CONTINUE:
                continue
            if not isinstance(result, HookResult):
                raise PluginError(
                    f"plugin {call.plugin_name!r} returned {result!r} from {hook_name}; "
                    "return None, HookResult.CONTINUE, HookResult.SKIP or HookResult.fail(reason)."
                )
            if result.outcome is not Outcome.CONTINUE:
                return result
        return HookResult.CONTINUE

    async def schedule(self, spec: JobSpec) -> JobSpec | None:
        """Pass ``spec`` through ``gw_before_job_schedule``; return the spec to insert, or None to skip it.

        Raises `JobScheduleError` when an implementation fails the job.
        """
        for call in self.calls("gw_before_job_schedule"):
            ctx = BeforeJobScheduleContext(identifier=spec.identifier, payload=spec.payload, spec=spec)
            next_spec = _apply_schedule_result(call, await _invoke(call, ctx), spec)
            if next_spec is None:
                return None
            spec = next_spec
        return spec

    def schedule_sync(self, spec: JobSpec) -> JobSpec | None:
        """Do what `schedule` does, for the sync API.

        An ``async def`` implementation runs in a new event loop, which is only
        possible when this thread runs no event loop. Otherwise it raises
        `PluginError`, which points to the async API.
        """
        for call in self.calls("gw_before_job_schedule"):
            ctx = BeforeJobScheduleContext(identifier=spec.identifier, payload=spec.payload, spec=spec)
            result = call.function(ctx) if call.takes_ctx else call.function()
            if inspect.isawaitable(result):
                result = _await_outside_loop(call, result)
            next_spec = _apply_schedule_result(call, result, spec)
            if next_spec is None:
                return None
            spec = next_spec
        return spec


def _apply_schedule_result(call: HookCall, result: Any, spec: JobSpec) -> JobSpec | None:
    if result is None or result is HookResult.CONTINUE:
        return spec
    if not isinstance(result, JobScheduleResult):
        raise PluginError(
            f"plugin {call.plugin_name!r} returned {result!r} from gw_before_job_schedule; "
            "return None, JobScheduleResult.continue_with(payload), "
            "JobScheduleResult.SKIP or JobScheduleResult.fail(reason)."
        )
    if result.outcome is Outcome.SKIP:
        return None
    if result.outcome is Outcome.FAIL:
        raise JobScheduleError(
            f"plugin {call.plugin_name!r} rejected job {spec.identifier!r}: {describe_reason(result.reason)}"
        )
    return spec.with_payload(result.payload) if result.has_payload else spec


def _await_outside_loop(call: HookCall, awaitable: Any) -> Any:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(_await(awaitable))
    awaitable.close()
    raise PluginError(
        f"plugin {call.plugin_name!r} implements gw_before_job_schedule with async def, which the "
        "sync add_job cannot await inside a running event loop; use the async gwcore.add_job."
    )


async def _await(awaitable: Any) -> Any:
    return await awaitable


async def _invoke(call: HookCall, ctx: object) -> Any:
    result = call.function(ctx) if call.takes_ctx else call.function()
    if result is not None and inspect.isawaitable(result):
        result = await result
    return result


def hook_names() -> list[str]:
    """Return the names of every hook, in the order `gwcore.hookspecs` declares them."""
    return [name for name, value in vars(hookspecs).items() if name.startswith("gw_") and callable(value)]


def _hook_names() -> list[str]:
    return hook_names()


def _unknown_hooks(plugin: object) -> list[str]:
    known = set(hook_names())
    names = []
    for name in dir(plugin):
        if name.startswith("gw_") and name not in known and callable(getattr(plugin, name, None)):
            names.append(name)
    return names


def _describe_unknown_hooks(unknown: list[str]) -> str:
    known = hook_names()
    parts = []
    for name in unknown:
        close = difflib.get_close_matches(name, known, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        parts.append(f"{name}{hint}")
    return (
        f"unknown hook {', '.join(parts)}: no hook of that name exists. "
        f"The hooks that exist are: {', '.join(sorted(known))}."
    )


def _describe_validation_error(manager: PluginManager, error: pluggy.PluginValidationError) -> str:
    message = str(error)
    for name in _hook_names():
        if name in message:
            caller = getattr(manager.hook, name)
            arguments = ", ".join(caller.spec.argnames) if caller.spec else ""
            return f"{message}. {name} takes these arguments: ({arguments})."
    return message


# ---------------------------------------------------------------------------
# Building a plugin manager
# ---------------------------------------------------------------------------


def create_plugin_manager(
    plugins: Iterable[object] = (),
    *,
    builtins: bool = True,
    entry_points: bool = True,
    blocked: Iterable[str] = (),
    requests: Sequence[PluginRequest] | None = None,
    gwconf: str | Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> PluginManager:
    """Create a plugin manager with the built-ins, installed plugins, requested modules and ``plugins``.

    Plugins register in this order: the built-ins from ``gwplugins``, the
    entry points of the ``gwcore.plugins`` group, the modules named in
    ``requests`` (default: those in the ``GW_PLUGINS`` environment variable,
    comma separated), the file ``gwconf`` (registered as ``gwconf``), then
    ``plugins`` as given. A name in ``blocked``, or a request ``no:NAME``,
    keeps that plugin out, built-ins included. With ``GW_DISABLE_PLUGIN_AUTOLOAD``
    set to a true value, entry points load only when a request names them.

    Raises `PluginError` naming the plugin and its source when one fails to
    load or implements a hook wrongly.
    """
    environ = os.environ if environ is None else environ
    if requests is None:
        requests = plugin_requests_from_env(environ)
    manager = PluginManager()
    for name in blocked:
        manager.set_blocked(name)
    for request in requests:
        if request.blocks:
            manager.set_blocked(request.blocks)
    named = [request for request in requests if not request.blocks]

    if builtins:
        for name, module_name in BUILTIN_PLUGINS.items():
            if not manager.is_blocked(name):
                source = f"built-in ({module_name})"
                _register(manager, _import(module_name, name, source), name, PluginOrigin(source))

    installed = {entry_point.name: entry_point for entry_point in _entry_points()} if entry_points else {}
    if installed:
        autoload = not _is_true(environ.get("GW_DISABLE_PLUGIN_AUTOLOAD", ""))
        explicit = {request.name for request in named}
        for entry_point in installed.values():
            if autoload or entry_point.name in explicit:
                _register_entry_point(manager, entry_point)

    for request in named:
        if manager.is_blocked(request.name) or manager.has_plugin(request.name):
            continue
        if request.name in installed:
            # Named explicitly, but the entry point did not load: another plugin has its name.
            continue
        module = _import(request.name, request.name, request.source)
        if manager.is_registered(module):
            continue  # already registered under another name, such as a built-in's
        _register(manager, module, request.name, PluginOrigin(request.source))

    if gwconf is not None and not manager.is_blocked(GWCONF_NAME):
        _register_gwconf(manager, Path(gwconf))

    for plugin in plugins:
        _register(manager, plugin, None, PluginOrigin("code"))

    manager.check_hooks()
    return manager


def plugin_requests_from_env(environ: Mapping[str, str]) -> list[PluginRequest]:
    """Return the plugins named in ``GW_PLUGINS``, a comma-separated list of modules and ``no:NAME``."""
    return [
        PluginRequest(name.strip(), "env GW_PLUGINS")
        for name in environ.get("GW_PLUGINS", "").split(",")
        if name.strip()
    ]


def _is_true(text: str) -> bool:
    return text.strip().lower() in {"1", "true", "yes", "on"}


def _entry_points() -> list[EntryPoint]:
    return list(entry_points(group=ENTRY_POINT_GROUP))


def _register_entry_point(manager: PluginManager, entry_point: EntryPoint) -> None:
    if manager.is_blocked(entry_point.name):
        return
    if manager.has_plugin(entry_point.name):
        logger.warning(
            "plugin entry point %r (%s) was not loaded: a plugin with that name is already "
            "registered; rename the entry point",
            entry_point.name,
            entry_point.value,
        )
        return
    source = f"entry point {entry_point.name!r} ({entry_point.value})"
    distribution = version = None
    if entry_point.dist is not None:
        distribution = entry_point.dist.name
        version = entry_point.dist.version
        source += f" of {distribution} {version}"
    try:
        plugin = entry_point.load()
    except Exception as error:
        raise PluginError(f"plugin from {source} failed to import: {error!r}") from error
    _register(manager, plugin, entry_point.name, PluginOrigin(source, distribution, version))


def _register_gwconf(manager: PluginManager, path: Path) -> None:
    """Import ``path`` as the module ``gwconf`` and register it, as pytest does with conftest.py."""
    path = path.resolve()
    source = f"gwconf.py at {path}"
    spec = importlib.util.spec_from_file_location(GWCONF_NAME, path)
    if spec is None or spec.loader is None:
        raise PluginError(f"plugin {GWCONF_NAME!r} from {source} failed to import: not a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[GWCONF_NAME] = module
    try:
        spec.loader.exec_module(module)
    except Exception as error:
        del sys.modules[GWCONF_NAME]
        raise PluginError(f"plugin {GWCONF_NAME!r} from {source} failed to import: {error!r}") from error
    _register(manager, module, GWCONF_NAME, PluginOrigin(source))


def _import(module_name: str, name: str, source: str) -> object:
    try:
        return importlib.import_module(module_name)
    except Exception as error:
        raise PluginError(
            f"plugin {name!r} from {source} failed to import {module_name!r}: {error!r}"
        ) from error


def _register(manager: PluginManager, plugin: object, name: str | None, origin: PluginOrigin) -> None:
    label = name or getattr(plugin, "__name__", type(plugin).__name__)
    try:
        manager.register(plugin, name, origin)
    except PluginError as error:
        raise PluginError(f"plugin {label!r} from {origin.source} failed to register: {error}") from error
    except ValueError as error:
        # pluggy raises ValueError for a plugin or name that is already registered.
        raise PluginError(f"plugin {label!r} from {origin.source} failed to register: {error}") from error


_default_manager: PluginManager | None = None


def default_plugin_manager() -> PluginManager:
    """Return the process-wide plugin manager with the built-ins and installed plugins.

    ``gwcore.add_job`` uses it when no plugin manager is passed.
    """
    global _default_manager
    if _default_manager is None:
        _default_manager = create_plugin_manager()
    return _default_manager
