"""The configuration of ``gw``: options, where each value comes from, and the resolved values.

Every option has a key (``poll_interval``), a command-line flag
(``--poll-interval``) and an environment variable (``GW_POLL_INTERVAL``).
A value resolves from these sources, each overriding the ones before it:

1. the option's default;
2. ``[tool.gw]`` in ``pyproject.toml`` in the working directory;
3. ``gw.toml`` in the working directory, whose keys are at the top level.
   When both files set a key, ``gw.toml`` wins because it is the file
   dedicated to gw;
4. the environment variable ``GW_<KEY>``. For ``connection``,
   ``DATABASE_URL`` is read too, and ``GW_CONNECTION`` wins over it;
5. the command-line flag.

``plugins`` is the exception: its lists add up across sources, as pytest's
``-p`` and ``PYTEST_PLUGINS`` do, so that a ``no:NAME`` in any of them blocks
NAME. An unknown key in a file is rejected (it is most likely a typo), but an
unknown ``GW_*`` environment variable is ignored, because other programs may
set variables with that prefix. Plugins add options with the ``gw_addoption`` hook.
"""

from __future__ import annotations

import difflib
import math
import os
import re
import sys
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gwcore.errors import ConfigurationError, PluginError
from gwcore.plugins import (
    GWCONF_FILE,
    PluginManager,
    PluginRequest,
    create_plugin_manager,
    plugin_requests_from_env,
)

DEFAULT_SCHEMA = "graphile_worker"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
OPTION_TYPES: tuple[type, ...] = (str, int, float, bool, list)
TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
FALSE_WORDS = frozenset({"0", "false", "no", "off"})
FLAG_PATTERN = re.compile(r"--[a-z][a-z0-9]*(-[a-z0-9]+)*")

PYPROJECT = "pyproject.toml"
GW_TOML = "gw.toml"
COMMAND_LINE = "command line"
DEFAULT = "default"


@dataclass(frozen=True)
class Option:
    """One setting: its key, flags, type, default and allowed range.

    ``type`` is one of str, int, float, bool or list (a list of strings).
    ``commands`` names the ``gw`` commands that take its flag (None: every command).
    """

    name: str
    flags: tuple[str, ...]
    type: type
    default: Any = None
    help: str = ""
    choices: tuple[str, ...] | None = None
    minimum: float | None = None
    exclusive_minimum: bool = False
    unit: str = ""
    metavar: str | None = None
    plugin: str = "gwcore"
    commands: frozenset[str] | None = None

    @property
    def env_var(self) -> str:
        """The environment variable that sets this option."""
        return f"GW_{self.name.upper()}"

    @property
    def flag(self) -> str:
        """The option's long flag, such as ``--poll-interval``."""
        return self.flags[-1]

    def allowed(self) -> str:
        """Describe the values this option accepts, for error messages."""
        if self.choices:
            return f"one of {', '.join(self.choices)}"
        if self.type is bool:
            return "true or false"
        if self.type is list:
            return "a list of strings (comma separated in an environment variable)"
        if self.type is str:
            return "a string"
        noun = "a whole number" if self.type is int else f"a number{' of ' + self.unit if self.unit else ''}"
        if self.minimum is None:
            return noun
        comparison = ">" if self.exclusive_minimum else ">="
        return f"{noun} {comparison} {_format_number(self.minimum)}"

    def parse_text(self, text: str) -> Any:
        """Convert ``text`` from a flag or environment variable; raise ValueError saying what is allowed."""
        if self.type is int:
            try:
                value: Any = int(text)
            except ValueError:
                raise ValueError(f"{text!r} is not an integer; pass {self.allowed()}") from None
        elif self.type is float:
            try:
                value = float(text)
            except ValueError:
                raise ValueError(f"{text!r} is not {self._number_noun()}") from None
            if not math.isfinite(value):
                raise ValueError(f"{text!r} is not a finite {self._number_noun().removeprefix('a ')}")
        elif self.type is bool:
            word = text.strip().lower()
            if word not in TRUE_WORDS | FALSE_WORDS:
                raise ValueError(f"{text!r} is not a boolean; pass 1, true, yes, on, 0, false, no or off")
            value = word in TRUE_WORDS
        elif self.type is list:
            value = [item.strip() for item in text.split(",") if item.strip()]
        else:
            value = text
        return self._check_range(value, text)

    def check_value(self, value: Any) -> Any:
        """Check a value from a TOML file or from Python; raise ValueError saying what is allowed."""
        if self.type is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        valid = isinstance(value, self.type) and not (self.type in (int, float) and isinstance(value, bool))
        if self.type is list:
            valid = isinstance(value, list) and all(isinstance(item, str) for item in value)
        if not valid:
            raise ValueError(f"{value!r} is of type {type(value).__name__}; set {self.allowed()}")
        if self.type is float and not math.isfinite(value):
            raise ValueError(f"{value!r} is not finite; set {self.allowed()}")
        return self._check_range(value, value)

    def _number_noun(self) -> str:
        return f"a number of {self.unit}" if self.unit else "a number"

    def _check_range(self, value: Any, shown: Any) -> Any:
        if self.choices and value not in self.choices:
            raise ValueError(f"{shown!r} is not allowed; pass {self.allowed()}")
        if self.minimum is not None and (
            value < self.minimum or (self.exclusive_minimum and value == self.minimum)
        ):
            raise ValueError(f"{shown} is out of range; pass {self.allowed()}")
        return value


def _format_number(number: float) -> str:
    return str(int(number)) if float(number).is_integer() else str(number)


def _worker_only() -> frozenset[str]:
    return frozenset({"worker", "config"})


CORE_OPTIONS: tuple[Option, ...] = (
    Option(
        "connection",
        ("-c", "--connection"),
        str,
        None,
        "PostgreSQL connection string (default: $DATABASE_URL; without it, the embedded PostgreSQL in ./.gw)",
        metavar="URL",
    ),
    Option(
        "schema",
        ("-s", "--schema"),
        str,
        DEFAULT_SCHEMA,
        f"schema of the job tables (default: {DEFAULT_SCHEMA})",
        metavar="NAME",
    ),
    Option("log_level", ("--log-level",), str, "INFO", "log level on stderr (default: INFO)", LOG_LEVELS),
    Option(
        "jobs",
        ("-j", "--jobs"),
        int,
        1,
        "how many jobs to run at once (default: 1)",
        minimum=1,
        metavar="N",
        commands=_worker_only(),
    ),
    Option(
        "poll_interval",
        ("--poll-interval",),
        float,
        2.0,
        "seconds between checks for due jobs when no notification arrives (default: 2)",
        minimum=0,
        exclusive_minimum=True,
        unit="seconds",
        metavar="SECONDS",
        commands=_worker_only(),
    ),
    Option(
        "tasks",
        ("--tasks",),
        list,
        None,
        "a Python module whose functions use @gwcore.task, or a directory in which NAME.py "
        "defines `task` for the identifier NAME; repeatable (default: ./tasks)",
        metavar="MODULE_OR_DIR",
        commands=_worker_only(),
    ),
    Option(
        "grace_period",
        ("--grace-period",),
        float,
        5.0,
        "on SIGINT or SIGTERM, seconds to let running jobs finish before they are "
        "interrupted and handed back (default: 5); a second signal stops at once",
        minimum=0,
        unit="seconds",
        metavar="SECONDS",
        commands=_worker_only(),
    ),
    Option(
        "complete_job_batch_delay",
        ("--complete-batch-delay",),
        float,
        None,
        "write completions in batches, each collecting for this many seconds; 0 batches the "
        "completions that are ready at the same moment (default: off, each written at once)",
        minimum=0,
        unit="seconds",
        metavar="SECONDS",
        commands=_worker_only(),
    ),
    Option(
        "fail_job_batch_delay",
        ("--fail-batch-delay",),
        float,
        None,
        "write failed attempts in batches, each collecting for this many seconds; 0 batches the "
        "failures that are ready at the same moment (default: off, each written at once)",
        minimum=0,
        unit="seconds",
        metavar="SECONDS",
        commands=_worker_only(),
    ),
    Option(
        "local_queue_size",
        ("--local-queue-size",),
        int,
        None,
        "turn on the local queue: fetch up to N jobs in one statement and keep them locked in "
        "memory for this worker's slots (default: off, each slot fetches its own job)",
        minimum=1,
        metavar="N",
        commands=_worker_only(),
    ),
    Option(
        "local_queue_ttl",
        ("--local-queue-ttl",),
        float,
        300.0,
        "seconds that jobs fetched into the local queue may wait for a slot before they are "
        "handed back unlocked (default: 300)",
        minimum=0,
        exclusive_minimum=True,
        unit="seconds",
        metavar="SECONDS",
        commands=_worker_only(),
    ),
    Option(
        "local_queue_refetch_delay",
        ("--local-queue-refetch-delay",),
        float,
        None,
        "after a local-queue fetch that found no job, wait up to this many seconds (jittered, cut "
        "short by new-job notifications) before fetching again; at most the poll interval "
        "(default: off)",
        minimum=0,
        exclusive_minimum=True,
        unit="seconds",
        metavar="SECONDS",
        commands=_worker_only(),
    ),
    Option(
        "processes",
        ("--processes",),
        int,
        1,
        "how many worker processes to run on this host under one supervisor process (default: 1)",
        minimum=1,
        metavar="N",
        commands=_worker_only(),
    ),
    Option(
        "plugins",
        ("-p",),
        list,
        [],
        "load the plugin module MODULE, or block the plugin NAME with no:NAME; repeatable",
        metavar="MODULE",
    ),
)


class OptionParser:
    """The object that ``gw_addoption`` receives: it collects the options that plugins declare."""

    def __init__(self, options: Iterable[Option] = CORE_OPTIONS) -> None:
        self.options: list[Option] = list(options)
        self._plugin = "gwcore"

    def addoption(
        self,
        name: str,
        *,
        type: type = str,
        default: Any = None,
        help: str = "",
        choices: Sequence[str] | None = None,
        metavar: str | None = None,
    ) -> None:
        """Add the option ``name`` (``--slowlog-threshold``), settable as a flag, a file key and ``GW_*``.

        ``type`` is str, int, float, bool (a flag that takes no value) or list
        (a repeatable flag). Raises `PluginError` for an invalid or taken name.
        """
        owner = self._plugin
        if not isinstance(name, str) or not FLAG_PATTERN.fullmatch(name):
            raise PluginError(
                f"plugin {owner!r} added the option {name!r}, which is invalid; name it like "
                "'--slowlog-threshold': two dashes, then lowercase words joined by single dashes."
            )
        if type not in OPTION_TYPES:
            raise PluginError(
                f"plugin {owner!r} added the option {name} with type {type!r}; "
                "use str, int, float, bool or list."
            )
        key = name[2:].replace("-", "_")
        for option in self.options:
            if option.name == key or name in option.flags:
                raise PluginError(
                    f"plugin {owner!r} added the option {name}, which plugin {option.plugin!r} "
                    "already defines; give it a name with the plugin's prefix."
                )
        option = Option(
            key,
            (name,),
            type,
            default,
            help,
            tuple(choices) if choices else None,
            metavar=metavar,
            plugin=owner,
        )
        if default is not None:
            try:
                option.check_value(default)
            except ValueError as error:
                raise PluginError(
                    f"plugin {owner!r} gave the option {name} an invalid default: {error}"
                ) from None
        self.options.append(option)


def collect_options(manager: PluginManager) -> list[Option]:
    """Return the core options followed by those that plugins add in ``gw_addoption``."""
    parser = OptionParser()

    def set_owner(plugin_name: str) -> None:
        parser._plugin = plugin_name

    manager.call_sync("gw_addoption", parser, before_each=set_owner)
    return parser.options


# ---------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ConfigFile:
    """The gw settings of one file; ``label`` is its source name, ``pyproject.toml`` or ``gw.toml``."""

    path: Path
    label: str
    settings: Mapping[str, Any]


def read_config_files(directory: Path) -> list[ConfigFile]:
    """Read ``[tool.gw]`` of ``pyproject.toml`` and ``gw.toml`` in ``directory``, lowest precedence first."""
    files = []
    pyproject = directory / PYPROJECT
    if pyproject.is_file():
        tool = _read_toml(pyproject).get("tool", {})
        settings = tool.get("gw") if isinstance(tool, dict) else None
        if settings is not None:
            if not isinstance(settings, dict):
                raise ConfigurationError(
                    f"[tool.gw] in {pyproject} is invalid: it must be a table; write it as [tool.gw]."
                )
            files.append(ConfigFile(pyproject, PYPROJECT, settings))
    gw_toml = directory / GW_TOML
    if gw_toml.is_file():
        files.append(ConfigFile(gw_toml, GW_TOML, _read_toml(gw_toml)))
    return files


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as file:
            return tomllib.load(file)
    except tomllib.TOMLDecodeError as error:
        raise ConfigurationError(f"{path} is invalid TOML: {error}; fix the file.") from None
    except OSError as error:
        raise ConfigurationError(f"{path} could not be read: {error}") from None


def plugin_requests(
    files: Sequence[ConfigFile], environ: Mapping[str, str], command_line: Sequence[str] = ()
) -> list[PluginRequest]:
    """Return the plugins named in ``GW_PLUGINS``, then with ``-p``, then in the files, in that order."""
    plugins_option = next(option for option in CORE_OPTIONS if option.name == "plugins")
    requests = plugin_requests_from_env(environ)
    requests += [PluginRequest(name, f"{COMMAND_LINE} -p") for name in command_line]
    for file in files:
        if "plugins" in file.settings:
            names = _checked(plugins_option, file.settings["plugins"], file.label, from_text=False)
            requests += [PluginRequest(name, f"{file.label} plugins ({file.path})") for name in names]
    return requests


def find_gwconf(directory: Path) -> Path | None:
    """Return the path of ``gwconf.py`` in ``directory``, or None when there is none."""
    path = directory / GWCONF_FILE
    return path if path.is_file() else None


# ---------------------------------------------------------------------------
# The resolved configuration
# ---------------------------------------------------------------------------


@dataclass
class Config:
    """The resolved configuration: every option's value and the source it came from.

    Read a value with ``config.get("jobs")`` or ``config.jobs``, and its source
    with ``config.source("jobs")``: ``default``, ``pyproject.toml``, ``gw.toml``,
    ``env GW_JOBS`` or ``command line``.
    """

    options: dict[str, Option]
    values: dict[str, Any]
    sources: dict[str, str]
    plugin_manager: PluginManager | None = None
    files: list[ConfigFile] = field(default_factory=list)

    @classmethod
    def resolve(
        cls,
        options: Iterable[Option],
        *,
        files: Sequence[ConfigFile] = (),
        environ: Mapping[str, str] | None = None,
        command_line: Mapping[str, Any] | None = None,
        plugin_manager: PluginManager | None = None,
    ) -> Config:
        """Resolve every option from defaults, ``files``, ``environ`` and ``command_line``, in that order.

        ``command_line`` maps option keys to values already converted to the
        option's type. Raises `ConfigurationError` for an unknown file key or
        an invalid value, naming the key, the value, its source and what is allowed.
        """
        environ = os.environ if environ is None else environ
        known = {option.name: option for option in options}
        config = cls(known, {}, {}, plugin_manager, list(files))
        for option in known.values():
            config._set(option.name, option.default, DEFAULT)

        for file in files:
            for key, raw in file.settings.items():
                file_option = known.get(key)
                if file_option is None:
                    raise ConfigurationError(_unknown_key_message(key, file, known))
                config._set(key, _checked(file_option, raw, file.label, from_text=False), file.label)

        for option in known.values():
            variables = [option.env_var]
            if option.name == "connection":
                variables.insert(0, "DATABASE_URL")
            for variable in variables:
                text = environ.get(variable)
                if text:
                    source = f"env {variable}"
                    config._set(option.name, _checked(option, text, source, from_text=True), source)

        for key, value in (command_line or {}).items():
            flag_option = known.get(key)
            if flag_option is None:
                raise ConfigurationError(f"unknown option {key!r}; the known options are: {', '.join(known)}")
            config._set(key, _checked(flag_option, value, COMMAND_LINE, from_text=False), COMMAND_LINE)

        config._merge_plugins(files, environ, command_line or {})
        return config

    def _set(self, key: str, value: Any, source: str) -> None:
        self.values[key] = value
        self.sources[key] = source

    def _merge_plugins(
        self, files: Sequence[ConfigFile], environ: Mapping[str, str], command_line: Mapping[str, Any]
    ) -> None:
        if "plugins" not in self.options:
            return
        requests = plugin_requests(files, environ, command_line.get("plugins") or ())
        names = [request.name for request in requests]
        sources = []
        for request in requests:
            label = request.source.split(" (")[0].removesuffix(" plugins").removesuffix(" -p")
            if label not in sources:
                sources.append(label)
        if names:
            self._set("plugins", names, ", ".join(sources))

    def get(self, name: str) -> Any:
        """Return the value of the option ``name``; raise `ConfigurationError` for an unknown name."""
        self._check_known(name)
        return self.values[name]

    def source(self, name: str) -> str:
        """Return where the value of ``name`` came from, such as ``env GW_JOBS``."""
        self._check_known(name)
        return self.sources[name]

    def __getattr__(self, name: str) -> Any:
        values = self.__dict__.get("values")
        if values is not None and name in values:
            return values[name]
        raise AttributeError(f"the configuration has no option {name!r}")

    def _check_known(self, name: str) -> None:
        if name not in self.values:
            close = difflib.get_close_matches(name, list(self.values), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigurationError(f"the configuration has no option {name!r}{hint}")


def _checked(option: Option, raw: Any, source: str, *, from_text: bool) -> Any:
    try:
        return option.parse_text(raw) if from_text else option.check_value(raw)
    except ValueError as error:
        where = option.env_var if source.startswith("env ") else option.name
        if source == COMMAND_LINE:
            where = option.flag
        raise ConfigurationError(f"{where} = {raw!r} from {source} is invalid: {error}") from None


def _unknown_key_message(key: str, file: ConfigFile, known: Mapping[str, Option]) -> str:
    close = difflib.get_close_matches(key, list(known), n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    where = f"[tool.gw] of {file.path}" if file.label == PYPROJECT else str(file.path)
    return (
        f"unknown key {key!r} in {where}.{hint} The known keys are: {', '.join(sorted(known))}. "
        "A key of a plugin that is blocked or not installed is unknown too: remove it, or comment "
        "it out while the plugin is off."
    )


def load_config(
    command_line: Mapping[str, Any] | None = None,
    *,
    directory: str | Path | None = None,
    environ: Mapping[str, str] | None = None,
    plugins: Iterable[object] = (),
) -> Config:
    """Discover the plugins and resolve the configuration the way ``gw`` does, from Python.

    ``command_line`` maps option keys to values and takes the place of
    flags. ``directory`` is where ``pyproject.toml``, ``gw.toml`` and
    ``gwconf.py`` are looked for (default: the working directory). The
    plugin manager is ``config.plugin_manager``.
    """
    directory = Path(directory) if directory is not None else Path.cwd()
    if str(directory) not in sys.path:
        sys.path.insert(0, str(directory))  # as gw does, so that plugin modules in it import
    environ = os.environ if environ is None else environ
    command_line = dict(command_line or {})
    files = read_config_files(directory)
    manager = create_plugin_manager(
        plugins,
        requests=plugin_requests(files, environ, command_line.get("plugins") or ()),
        gwconf=find_gwconf(directory),
        environ=environ,
    )
    return Config.resolve(
        collect_options(manager),
        files=files,
        environ=environ,
        command_line=command_line,
        plugin_manager=manager,
    )
