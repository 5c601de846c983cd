"""The plugin manager: registering plugins, and calling hooks with sync and async implementations.

pluggy calls hook implementations but cannot await them, so gwcore walks each
hook's implementations itself, in pluggy's order, and awaits every result that
is awaitable. The list of implementations is cached per hook and dropped
whenever a plugin is registered or removed, so a hook with no implementation
costs one dictionary lookup.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

import pluggy

from gwcore import hookspecs
from gwcore.contexts import BeforeJobScheduleContext
from gwcore.errors import JobScheduleError, PluginError
from gwcore.job import JobSpec
from gwcore.results import HookResult, JobScheduleResult, Outcome, describe_reason

logger = logging.getLogger("gwcore.plugins")

ENTRY_POINT_GROUP = "gwcore.plugins"

# Built-in plugins, registered under these names unless blocked.
BUILTIN_PLUGINS: dict[str, str] = {
    "console": "gwplugins.console",
    "lock_sweep": "gwplugins.lock_sweep",
}


@dataclass(frozen=True)
class HookCall:
    """One implementation of a hook, ready to call."""

    plugin_name: str
    function: Any
    takes_ctx: bool


class PluginManager(pluggy.PluginManager):
    """pluggy's plugin manager with gwcore's hooks, unmarked ``gw_*`` functions and async calls."""

    def __init__(self) -> None:
        super().__init__(hookspecs.PROJECT_NAME)
        self.add_hookspecs(hookspecs)
        self._calls: dict[str, tuple[HookCall, ...]] = {}

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

    def register(self, plugin: object, name: str | None = None) -> str | None:
        self._calls.clear()
        try:
            registered = super().register(plugin, name)
        except pluggy.PluginValidationError as error:
            raise PluginError(_describe_validation_error(self, error)) from error
        return registered

    def unregister(self, plugin: object | None = None, name: str | None = None) -> Any:
        self._calls.clear()
        return super().unregister(plugin, name)

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
            HookCall(impl.plugin_name, impl.function, "ctx" in impl.argnames)
            for impl in reversed(hook.get_hookimpls())
        )
        self._calls[hook_name] = calls
        return calls

    def has_calls(self, hook_name: str) -> bool:
        return bool(self.calls(hook_name))

    async def notify(self, hook_name: str, ctx: object) -> None:
        """Call every implementation of an observer hook; log and swallow their exceptions."""
        for call in self.calls(hook_name):
            try:
                await _invoke(call, ctx)
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
    if inspect.isawaitable(result):
        result = await result
    return result


def _hook_names() -> list[str]:
    return [name for name in dir(hookspecs) if name.startswith("gw_")]


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
) -> PluginManager:
    """Create a plugin manager with the built-ins, installed plugins and ``plugins``.

    Plugins register in this order: the built-ins from ``gwplugins``, the
    entry points of the ``gwcore.plugins`` group, then ``plugins`` as given.
    A name in ``blocked`` keeps that plugin out, built-ins included. Raises
    `PluginError` naming the plugin and its source when one fails to load or
    implements a hook wrongly.
    """
    manager = PluginManager()
    for name in blocked:
        manager.set_blocked(name)

    if builtins:
        for name, module_name in BUILTIN_PLUGINS.items():
            if not manager.is_blocked(name):
                _register(manager, _import(module_name, f"built-in plugin {name!r}"), name)

    if entry_points:
        _register_entry_points(manager)

    for plugin in plugins:
        _register(manager, plugin, None)

    manager.check_hooks()
    return manager


def _register_entry_points(manager: PluginManager) -> None:
    for entry_point in entry_points(group=ENTRY_POINT_GROUP):
        if manager.is_blocked(entry_point.name):
            continue
        if manager.has_plugin(entry_point.name):
            logger.warning(
                "plugin entry point %r (%s) was not loaded: a plugin with that name is already "
                "registered; rename the entry point",
                entry_point.name,
                entry_point.value,
            )
            continue
        source = f"entry point {entry_point.name!r} ({entry_point.value})"
        if entry_point.dist is not None:
            source += f" of {entry_point.dist.name} {entry_point.dist.version}"
        try:
            plugin = entry_point.load()
        except Exception as error:
            raise PluginError(f"plugin from {source} failed to import: {error!r}") from error
        _register(manager, plugin, entry_point.name, source)


def _import(module_name: str, source: str) -> object:
    try:
        return importlib.import_module(module_name)
    except Exception as error:
        raise PluginError(f"{source} failed to import {module_name!r}: {error!r}") from error


def _register(manager: PluginManager, plugin: object, name: str | None, source: str = "") -> None:
    try:
        manager.register(plugin, name)
    except PluginError as error:
        where = f" from {source}" if source else ""
        label = name or getattr(plugin, "__name__", type(plugin).__name__)
        raise PluginError(f"plugin {label!r}{where} failed to register: {error}") from error
    except ValueError as error:
        # pluggy raises ValueError for a plugin or name that is already registered.
        raise PluginError(f"plugin {name or plugin!r} failed to register: {error}") from error


_default_manager: PluginManager | None = None


def default_plugin_manager() -> PluginManager:
    """Return the process-wide plugin manager with the built-ins and installed plugins.

    ``gwcore.add_job`` uses it when no plugin manager is passed.
    """
    global _default_manager
    if _default_manager is None:
        _default_manager = create_plugin_manager()
    return _default_manager
