"""Admin and inspection commands of ``gw``: list, show and change jobs and queues.

Each command registers a subparser whose ``handler`` default is a coroutine
function ``handler(args, url) -> exit code``, which `gwcore.cli` calls.

The commands build on `gwcore.admin`, so they share graphile-worker's rule: a
job that a live worker locks (a lock taken less than 4 hours ago) is left alone.
An action that names ids prints what it changed on stdout. When a named id
matched nothing, it names that id and the likely reason on stderr and exits 1.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import sys
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any, TypeVar

import psycopg

from gwcore import admin
from gwcore.admin import BIGINT_MAX, CLEANUP_TASKS, DEFAULT_CLEANUP_TASKS, JOB_STATES
from gwcore.errors import ConfigurationError
from gwcore.job import MAX_JOB_KEY_LENGTH, SMALLINT_MAX, SMALLINT_MIN, Job

AddCommonOptions = Callable[[argparse.ArgumentParser], None]
Handler = Callable[[argparse.Namespace, str], Any]

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2

DEFAULT_LIMIT = 100
MAX_CELL_WIDTH = 40
_DIGITS = re.compile(r"[0-9]+")
T = TypeVar("T")


def add_admin_commands(commands: Any, add_common_options: AddCommonOptions) -> None:
    """Add the admin subcommands to ``commands``, the ``gw`` parser's subparsers."""
    _add_jobs_command(commands, add_common_options)
    _add_queues_command(commands, add_common_options)
    _add_stats_command(commands, add_common_options)
    _add_job_action_commands(commands, add_common_options)
    _add_remove_command(commands, add_common_options)
    _add_unlock_command(commands, add_common_options)
    _add_cleanup_command(commands, add_common_options)


# ---------------------------------------------------------------------------
# Arguments
# ---------------------------------------------------------------------------


def _add_command(
    commands: Any,
    add_common_options: AddCommonOptions,
    name: str,
    handler: Handler,
    *,
    help: str,
    description: str,
) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = commands.add_parser(name, help=help, description=description)
    add_common_options(parser)
    parser.set_defaults(handler=handler)
    return parser


def _add_json_option(parser: argparse.ArgumentParser, content: str) -> None:
    parser.add_argument("--json", action="store_true", help=f"print {content} (default: a table)")


def _add_jobs_command(commands: Any, add_common_options: AddCommonOptions) -> None:
    jobs = _add_command(
        commands,
        add_common_options,
        "jobs",
        run_jobs,
        help="list jobs, or show one with `gw jobs show ID`",
        description="List jobs ordered by id, or show one job with `gw jobs show ID`.",
    )
    jobs.add_argument(
        "--task", type=_name, metavar="IDENTIFIER", help="only jobs of this task (default: all)"
    )
    jobs.add_argument(
        "--queue", type=_name, metavar="NAME", help="only jobs of this named queue (default: all)"
    )
    jobs.add_argument(
        "--state",
        choices=list(JOB_STATES),
        help="only jobs in this state (default: all). The states overlap: a failed job whose retry "
        "is due is also ready, and a locked job can also be failed or permanently_failed",
    )
    jobs.add_argument(
        "--limit",
        type=_limit,
        default=DEFAULT_LIMIT,
        metavar="N",
        help=f"list at most N jobs, the lowest ids first (default: {DEFAULT_LIMIT})",
    )
    _add_json_option(
        jobs, "each job with every field as a JSON object on its own line (JSON Lines), times in ISO 8601"
    )

    actions = jobs.add_subparsers(dest="jobs_command", metavar="show")
    show = actions.add_parser(
        "show",
        help="show one job with its payload and last error",
        description="Show one job with every field, its payload and its last error.",
    )
    add_common_options(show)
    show.add_argument("job_id", type=_job_id, metavar="ID", help="the job's id")
    _add_json_option(show, "the job as a JSON object, times in ISO 8601")
    show.set_defaults(handler=run_jobs_show)
    # argparse copies every value of a sub-subcommand over the parent's, defaults included, so
    # `gw jobs -c URL show 1` would lose URL. Without defaults here, the parent's values stay.
    parent_dests = {action.dest for action in jobs._actions}
    for action in show._actions:
        if action.dest in parent_dests:
            action.default = argparse.SUPPRESS


def _add_queues_command(commands: Any, add_common_options: AddCommonOptions) -> None:
    queues = _add_command(
        commands,
        add_common_options,
        "queues",
        run_queues,
        help="list named queues with their job counts and locks",
        description="List named queues with their job counts and the worker that locks each one, "
        "ordered by name.",
    )
    _add_json_option(queues, "each queue as a JSON object on its own line (JSON Lines), times in ISO 8601")


def _add_stats_command(commands: Any, add_common_options: AddCommonOptions) -> None:
    stats = _add_command(
        commands,
        add_common_options,
        "stats",
        run_stats,
        help="count jobs by task and state",
        description="Count jobs by task and state, with a total row over all tasks. The states "
        "overlap: a failed job whose retry is due also counts as ready, and a locked job can also "
        "count as failed or permanently_failed.",
    )
    _add_json_option(stats, "the counts as a JSON object")


def _add_job_action_commands(commands: Any, add_common_options: AddCommonOptions) -> None:
    live_lock_note = "A job that a live worker locks (a lock under 4 hours old) is left alone."
    ids_help = "ids of the jobs, whole numbers from 1 to " + str(BIGINT_MAX)

    complete = _add_command(
        commands,
        add_common_options,
        "complete",
        run_complete,
        help="delete jobs as done",
        description=f"Delete the given jobs as done, as if they had succeeded. {live_lock_note}",
    )
    complete.add_argument("job_ids", type=_job_id, nargs="+", metavar="ID", help=ids_help)

    fail = _add_command(
        commands,
        add_common_options,
        "fail",
        run_fail,
        help="mark jobs as permanently failed",
        description="Mark the given jobs as permanently failed: set attempts to max_attempts and "
        f"last_error to the reason, so they do not run again. {live_lock_note}",
    )
    fail.add_argument("job_ids", type=_job_id, nargs="+", metavar="ID", help=ids_help)
    fail.add_argument(
        "--reason",
        metavar="TEXT",
        help='the last_error to store (default: "Manually marked as failed")',
    )

    reschedule = _add_command(
        commands,
        add_common_options,
        "reschedule",
        run_reschedule,
        help="change when and how often jobs run",
        description="Change the run_at, priority, attempts or max_attempts of the given jobs; "
        f"fields without an option keep their value. {live_lock_note}",
    )
    reschedule.add_argument("job_ids", type=_job_id, nargs="+", metavar="ID", help=ids_help)
    reschedule.add_argument(
        "--run-at",
        type=parse_aware_datetime,
        metavar="TIMESTAMP",
        help="new earliest start, ISO 8601 with a UTC offset, e.g. 2030-01-01T09:00:00+00:00 "
        "(default: unchanged)",
    )
    reschedule.add_argument(
        "--priority",
        type=_smallint_type("--priority", SMALLINT_MIN),
        metavar="N",
        help=f"new priority, lower runs first, {SMALLINT_MIN} to {SMALLINT_MAX} (default: unchanged)",
    )
    reschedule.add_argument(
        "--attempts",
        type=_smallint_type("--attempts", 0),
        metavar="N",
        help=f"new count of attempts made, 0 to {SMALLINT_MAX} (default: unchanged)",
    )
    reschedule.add_argument(
        "--max-attempts",
        type=_smallint_type("--max-attempts", 1),
        metavar="N",
        help=f"new maximum number of attempts, 1 to {SMALLINT_MAX} (default: unchanged)",
    )


def _add_remove_command(commands: Any, add_common_options: AddCommonOptions) -> None:
    remove = _add_command(
        commands,
        add_common_options,
        "remove",
        run_remove,
        help="delete the job with a job key",
        description="Delete the job with the given job key. A job that a live worker locks is not "
        "deleted, but loses its key and its retries, so it does not run again after its current "
        "attempt; gw then exits 1.",
    )
    remove.add_argument(
        "job_key",
        type=_job_key,
        metavar="JOB_KEY",
        help=f"the job's key, 1 to {MAX_JOB_KEY_LENGTH} characters",
    )


def _add_unlock_command(commands: Any, add_common_options: AddCommonOptions) -> None:
    unlock = _add_command(
        commands,
        add_common_options,
        "unlock",
        run_unlock,
        help="release the locks of workers that are gone",
        description="Unlock every job and named queue that the given workers lock, so other workers "
        "can fetch them. Use it only for workers that are gone: a live worker keeps running its "
        "jobs, which another worker may then run a second time.",
    )
    unlock.add_argument(
        "worker_ids",
        type=_name,
        nargs="+",
        metavar="WORKER_ID",
        help="ids of the workers, as in the locked_by column of `gw jobs` and `gw queues`",
    )


def _add_cleanup_command(commands: Any, add_common_options: AddCommonOptions) -> None:
    cleanup = _add_command(
        commands,
        add_common_options,
        "cleanup",
        run_cleanup,
        help="delete permanently failed jobs and unused tasks and queues",
        description="Run graphile-worker's cleanup tasks in one transaction: DELETE_PERMAFAILED_JOBS "
        "deletes unlocked jobs with no attempts left, GC_TASK_IDENTIFIERS deletes task identifiers "
        "that no job uses, GC_JOB_QUEUES deletes unlocked queues that no job uses. A running worker "
        "looks up its task identifiers once, at start, and does not fetch jobs of an identifier "
        "deleted after that until it restarts, so pass each of them with --keep-task.",
    )
    cleanup.add_argument(
        "--task",
        dest="cleanup_tasks",
        action="append",
        choices=CLEANUP_TASKS,
        metavar="TASK",
        help="a cleanup task to run: "
        + ", ".join(DEFAULT_CLEANUP_TASKS)
        + "; repeatable (default: all three)",
    )
    cleanup.add_argument(
        "--keep-task",
        dest="keep_tasks",
        action="append",
        type=_name,
        metavar="IDENTIFIER",
        help="a task identifier that GC_TASK_IDENTIFIERS keeps even without jobs; repeatable (default: none)",
    )


# --- argument types ---------------------------------------------------------------------------


def _job_id(text: str) -> int:
    if not _DIGITS.fullmatch(text):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a job id; a job id is a whole number from 1 to {BIGINT_MAX}"
        )
    value = int(text)
    if not 1 <= value <= BIGINT_MAX:
        raise argparse.ArgumentTypeError(
            f"{text} is out of range; a job id is a whole number from 1 to {BIGINT_MAX}"
        )
    return value


def _limit(text: str) -> int:
    if not _DIGITS.fullmatch(text) or not 1 <= int(text) <= BIGINT_MAX:
        raise argparse.ArgumentTypeError(f"{text!r} is invalid; pass a whole number from 1 to {BIGINT_MAX}")
    return int(text)


def _smallint_type(option: str, minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not an integer; pass a whole number from {minimum} to {SMALLINT_MAX}"
            ) from None
        if not minimum <= value <= SMALLINT_MAX:
            raise argparse.ArgumentTypeError(
                f"{value} is out of range; pass a whole number from {minimum} to {SMALLINT_MAX}"
            )
        return value

    parse.__name__ = option
    return parse


def _name(text: str) -> str:
    if not text or "\x00" in text:
        raise argparse.ArgumentTypeError(f"{text!r} is invalid; pass a non-empty name")
    return text


def _job_key(text: str) -> str:
    if not 1 <= len(text) <= MAX_JOB_KEY_LENGTH:
        raise argparse.ArgumentTypeError(
            f"the key has {len(text)} characters; a job key has 1 to {MAX_JOB_KEY_LENGTH}"
        )
    return text


def parse_aware_datetime(text: str) -> datetime:
    """Parse an ISO 8601 timestamp with a UTC offset, for --run-at options."""
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an ISO 8601 timestamp; write it like 2030-01-01T09:00:00+00:00"
        ) from None
    if value.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{text!r} has no UTC offset; add one, like {text}+00:00 or {text}Z")
    return value


# ---------------------------------------------------------------------------
# Connection
# ---------------------------------------------------------------------------


@asynccontextmanager
async def _connect(url: str, schema: str) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    """Open an autocommit connection, and raise `ConfigurationError` when the schema is not installed."""
    try:
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            yield conn
    except (
        psycopg.errors.UndefinedFunction,
        psycopg.errors.UndefinedTable,
        psycopg.errors.InvalidSchemaName,
    ) as error:
        raise ConfigurationError(
            f"the schema {schema!r} is not installed in this database; run "
            f"`gw migrate -s {shlex.quote(schema)}` (with the same -c) first."
        ) from error


# ---------------------------------------------------------------------------
# Inspection commands
# ---------------------------------------------------------------------------


async def run_jobs(args: argparse.Namespace, url: str) -> int:
    async with _connect(url, args.schema) as conn:
        jobs = await admin.list_jobs(
            conn, task=args.task, queue=args.queue, state=args.state, limit=args.limit, schema=args.schema
        )
    if args.json:
        for job in jobs:
            print(_job_json(job))
    elif jobs:
        now = datetime.now(UTC)
        headers = ["ID", "TASK", "QUEUE", "PRIORITY", "RUN_AT", "ATTEMPTS", "STATE", "KEY"]
        rows = [
            [
                str(job.id),
                job.task_identifier,
                job.queue_name or "-",
                str(job.priority),
                _format_time(job.run_at),
                f"{job.attempts}/{job.max_attempts}",
                _job_state(job, now),
                job.key or "-",
            ]
            for job in jobs
        ]
        print(_table(headers, rows))
    else:
        print("gw: no job matches", file=sys.stderr)
    if len(jobs) == args.limit:
        print(
            f"gw: listed {args.limit} job(s), the --limit; more may match, so raise --limit to see them",
            file=sys.stderr,
        )
    return EXIT_OK


async def run_jobs_show(args: argparse.Namespace, url: str) -> int:
    async with _connect(url, args.schema) as conn:
        job = await admin.get_job(conn, args.job_id, schema=args.schema)
    if job is None:
        print(f"gw: error: job {args.job_id} not found", file=sys.stderr)
        return EXIT_ERROR
    if args.json:
        print(_job_json(job))
        return EXIT_OK

    fields = [
        ("id", str(job.id)),
        ("task", job.task_identifier),
        ("queue", job.queue_name or "-"),
        ("state", _job_state(job, datetime.now(UTC))),
        ("priority", str(job.priority)),
        ("run_at", _format_time(job.run_at)),
        ("attempts", f"{job.attempts} of {job.max_attempts}"),
        ("key", job.key or "-"),
        ("revision", str(job.revision)),
        ("flags", ", ".join(sorted(job.flags)) if job.flags else "-"),
        ("locked_by", job.locked_by or "-"),
        ("locked_at", _format_time(job.locked_at)),
        ("created_at", _format_time(job.created_at)),
        ("updated_at", _format_time(job.updated_at)),
    ]
    width = max(len(name) for name, _ in fields) + 1
    for name, value in fields:
        print(f"{name + ':':<{width}} {value}")
    print("payload:")
    print(_indent(json.dumps(job.payload, indent=2, ensure_ascii=False)))
    print("last_error:")
    print(_indent(job.last_error) if job.last_error is not None else "  -")
    return EXIT_OK


async def run_queues(args: argparse.Namespace, url: str) -> int:
    async with _connect(url, args.schema) as conn:
        queues = await admin.queue_stats(conn, schema=args.schema)
    if args.json:
        for queue in queues:
            print(json.dumps(asdict(queue), default=_json_default))
    elif queues:
        headers = ["QUEUE", "JOBS", "LOCKED_BY", "LOCKED_AT"]
        rows = [
            [queue.queue_name, str(queue.job_count), queue.locked_by or "-", _format_time(queue.locked_at)]
            for queue in queues
        ]
        print(_table(headers, rows))
    else:
        print("gw: no named queues", file=sys.stderr)
    return EXIT_OK


async def run_stats(args: argparse.Namespace, url: str) -> int:
    async with _connect(url, args.schema) as conn:
        stats = await admin.job_stats(conn, schema=args.schema)
    states = list(JOB_STATES)
    # Each job has exactly one task, so the per-task counts add up to the totals.
    total = sum(item.total for item in stats)
    state_totals = {state: sum(getattr(item, state) for item in stats) for state in states}
    if args.json:
        document = {"total": total, "states": state_totals, "tasks": [asdict(item) for item in stats]}
        print(json.dumps(document))
        return EXIT_OK

    headers = ["TASK", "TOTAL", *(state.upper() for state in states)]
    rows = [
        [item.task_identifier, str(item.total), *(str(getattr(item, state)) for state in states)]
        for item in stats
    ]
    rows.append(["(all tasks)", str(total), *(str(state_totals[state]) for state in states)])
    print(_table(headers, rows))
    return EXIT_OK


# ---------------------------------------------------------------------------
# Action commands
# ---------------------------------------------------------------------------


async def run_complete(args: argparse.Namespace, url: str) -> int:
    job_ids = _unique(args.job_ids)
    async with _connect(url, args.schema) as conn:
        jobs = await admin.complete_jobs(conn, job_ids, schema=args.schema)
        return await _report_job_action(conn, args.schema, "completed", job_ids, jobs)


async def run_fail(args: argparse.Namespace, url: str) -> int:
    job_ids = _unique(args.job_ids)
    async with _connect(url, args.schema) as conn:
        jobs = await admin.permanently_fail_jobs(conn, job_ids, args.reason, schema=args.schema)
        return await _report_job_action(conn, args.schema, "permanently failed", job_ids, jobs)


async def run_reschedule(args: argparse.Namespace, url: str) -> int:
    changes = {
        "run_at": args.run_at,
        "priority": args.priority,
        "attempts": args.attempts,
        "max_attempts": args.max_attempts,
    }
    changed_fields = {name: value for name, value in changes.items() if value is not None}
    if not changed_fields:
        print(
            "gw: error: gw reschedule has nothing to change; pass at least one of --run-at, "
            "--priority, --attempts or --max-attempts.",
            file=sys.stderr,
        )
        return EXIT_USAGE

    job_ids = _unique(args.job_ids)
    summary = ", ".join(f"{name} {_format_value(value)}" for name, value in changed_fields.items())
    async with _connect(url, args.schema) as conn:
        jobs = await admin.reschedule_jobs(conn, job_ids, schema=args.schema, **changes)
        return await _report_job_action(conn, args.schema, "rescheduled", job_ids, jobs, f" ({summary})")


async def _report_job_action(
    conn: psycopg.AsyncConnection[Any],
    schema: str,
    verb: str,
    job_ids: Sequence[int],
    jobs: Sequence[Job],
    details: str = "",
) -> int:
    """Print the jobs that ``verb`` changed, and the named ids that matched none, with the reason."""
    changed = [job.id for job in jobs]
    if changed:
        print(f"{verb} {len(changed)} job(s): {_join(changed)}{details}")
    changed_set = set(changed)
    unmatched = [job_id for job_id in job_ids if job_id not in changed_set]
    if not unmatched:
        return EXIT_OK

    reasons = []
    locked_by = []
    for job_id in unmatched:
        job = await admin.get_job(conn, job_id, schema=schema)
        reasons.append(f"{job_id} ({_unmatched_reason(job)})")
        if job is not None and job.locked_by is not None:
            locked_by.append(job.locked_by)
    print(
        f"gw: error: {len(unmatched)} of {len(job_ids)} job id(s) matched no job that could be "
        f"{verb}: {', '.join(reasons)}",
        file=sys.stderr,
    )
    if locked_by:
        workers = " ".join(shlex.quote(worker) for worker in _unique(locked_by))
        print(
            "gw: a job that a live worker locks is left alone; run the command again after the job "
            f"ends, or, if the worker is gone, run `gw unlock {workers}` first.",
            file=sys.stderr,
        )
    return EXIT_ERROR


def _unmatched_reason(job: Job | None) -> str:
    if job is None:
        return "not found"
    if job.locked_by is not None:
        return f"locked by worker {job.locked_by} since {_format_time(job.locked_at)}"
    # The job changed between the action and this lookup, for example because its worker unlocked it.
    return "not changed because it changed at the same time; run the command again"


async def run_remove(args: argparse.Namespace, url: str) -> int:
    async with _connect(url, args.schema) as conn:
        job = await admin.remove_job(conn, args.job_key, schema=args.schema)
    if job is None:
        print(f"gw: error: no job has the key {args.job_key!r}", file=sys.stderr)
        return EXIT_ERROR
    if job.key is None:
        # remove_job does not delete a job that a live worker locks. It clears its key and retries instead.
        print(
            f"cleared the key and the retries of job {job.id}, so it does not run again after its "
            "current attempt"
        )
        print(
            f"gw: error: job {job.id} with the key {args.job_key!r} was not deleted because worker "
            f"{job.locked_by} locks it since {_format_time(job.locked_at)}",
            file=sys.stderr,
        )
        return EXIT_ERROR
    print(f"removed 1 job: {job.id} with the key {args.job_key!r}")
    return EXIT_OK


async def run_unlock(args: argparse.Namespace, url: str) -> int:
    worker_ids = _unique(args.worker_ids)
    async with _connect(url, args.schema) as conn, conn.transaction():
        locked_jobs = await admin.list_jobs(conn, state="locked", limit=BIGINT_MAX, schema=args.schema)
        queues = await admin.queue_stats(conn, schema=args.schema)
        job_count = await admin.force_unlock_workers(conn, worker_ids, schema=args.schema)

    holders = {job.locked_by for job in locked_jobs} | {queue.locked_by for queue in queues}
    queue_count = sum(1 for queue in queues if queue.locked_by in worker_ids)
    matched = [worker for worker in worker_ids if worker in holders]
    unmatched = [worker for worker in worker_ids if worker not in holders]
    if matched:
        print(f"unlocked {job_count} job(s) and {queue_count} queue(s) of worker(s): {_join(matched)}")
    if not unmatched:
        return EXIT_OK
    print(
        f"gw: error: {len(unmatched)} of {len(worker_ids)} worker(s) locked no job and no queue: "
        f"{_join(unmatched)}; list the workers that hold locks with `gw jobs --state locked` and "
        "`gw queues`.",
        file=sys.stderr,
    )
    return EXIT_ERROR


async def run_cleanup(args: argparse.Namespace, url: str) -> int:
    tasks = args.cleanup_tasks or DEFAULT_CLEANUP_TASKS
    async with _connect(url, args.schema) as conn:
        result = await admin.cleanup(
            conn, tasks=tasks, task_identifiers_to_keep=args.keep_tasks or [], schema=args.schema
        )
    lines = {
        "DELETE_PERMAFAILED_JOBS": f"deleted {result.permafailed_jobs_deleted} permanently failed job(s)",
        "GC_TASK_IDENTIFIERS": f"deleted {result.task_identifiers_deleted} unused task identifier(s)",
        "GC_JOB_QUEUES": f"deleted {result.job_queues_deleted} unused queue(s)",
    }
    for name in CLEANUP_TASKS:
        if name in tasks:
            print(f"{name}: {lines[name]}")
    return EXIT_OK


# ---------------------------------------------------------------------------
# Formatting
# ---------------------------------------------------------------------------


def _job_state(job: Job, now: datetime) -> str:
    """Return the state that describes ``job`` best. The states of `JOB_STATES` overlap, so this picks one."""
    if job.locked_at is not None:
        return f"locked by {job.locked_by}" if job.locked_by is not None else "locked"
    if job.attempts >= job.max_attempts:
        return "permanently_failed"
    if job.attempts > 0 and job.last_error is not None:
        return "failed"
    if job.run_at > now:
        return "scheduled"
    return "ready"


def _job_json(job: Job) -> str:
    return json.dumps(asdict(job), default=_json_default, ensure_ascii=False)


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _format_time(value: datetime | None) -> str:
    if value is None:
        return "-"
    return value.astimezone(UTC).isoformat(timespec="seconds")


def _format_value(value: Any) -> str:
    return _format_time(value) if isinstance(value, datetime) else str(value)


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Return ``rows`` as left-aligned columns, each cell cut to `MAX_CELL_WIDTH` characters."""
    cells = [[_truncate(cell) for cell in row] for row in [headers, *rows]]
    widths = [max(len(row[column]) for row in cells) for column in range(len(headers))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in cells
    )


def _truncate(text: str) -> str:
    text = text.replace("\n", " ")
    return text if len(text) <= MAX_CELL_WIDTH else text[: MAX_CELL_WIDTH - 3] + "..."


def _indent(text: str) -> str:
    return "\n".join("  " + line for line in text.splitlines() or [""])


def _join(values: Iterable[object]) -> str:
    return ", ".join(str(value) for value in values)


def _unique(values: Sequence[T]) -> list[T]:
    return list(dict.fromkeys(values))
