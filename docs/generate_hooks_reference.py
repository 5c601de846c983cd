"""Generate docs/hooks-reference.md from gwcore.hookspecs and gwcore.contexts.

Run ``python docs/generate_hooks_reference.py`` to write the file, or add
``--check`` to exit with status 1 when the file differs from what the hook
specifications generate now (tests/test_hooks_reference.py runs the check).

The hooks come in source order, grouped under the section comments of
``gwcore/hookspecs.py`` (a ``# ---`` line, ``# Title``, optional comment lines
that introduce the section, then a closing ``# ---`` line). Each hook's
signature and docstring come from the source, the fields of its argument from
the dataclass that annotates it, and the examples and field meanings from the
tables in this file.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import importlib
import inspect
import re
import sys
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

REPO = Path(__file__).resolve().parent.parent
OUTPUT = REPO / "docs" / "hooks-reference.md"

# Modules whose names the annotations of hooks and context fields may use.
NAMESPACE_MODULES = (
    "gwcore.contexts",
    "gwcore.job",
    "gwcore.results",
    "gwcore.worker",
    "gwcore.config",
    "gwcore.local_queue",
)

# The names that annotations may use, filled by `render`.
_NAMESPACE: dict[str, Any] = {}

# Types described once at the end of the page, when a context field uses them.
SHARED_TYPES = ("DatabaseInfo", "Job", "JobSpec", "TaskResult")

# What each context field contains, by field name, with entries for one
# context class (its name, then the field) where the meaning differs there.
FIELD_NOTES: dict[str, str] = {
    "database": "The connection: `url` with any password masked as `********`, and its parts.",
    "schema": "The schema of the job tables.",
    "concurrency": "How many jobs the worker runs at once.",
    "worker_id": "The id that the worker writes to `locked_by` of the jobs it takes.",
    "extensions": "The worker's `extensions`, the shared application state that tasks receive.",
    "worker": "The running `Worker`; `worker.pool` and `worker.schema` let a plugin run queries of its own.",
    "job": "The job's row. `job.attempts` already counts the current attempt.",
    "payload": "The payload that the task will get.",
    "result": "The task's return value (`result.value`) or exception (`result.error`); "
    "`result.ok` is true when the task did not raise.",
    "duration": "Seconds the task ran.",
    "will_retry": "False when this was the last allowed attempt; then `gw_job_permanently_fail` fires next.",
    "identifier": "The task identifier.",
    "spec": "The job with all its options: `queue_name`, `run_at`, `max_attempts`, `job_key`, "
    "`job_key_mode`, `priority`, `flags`.",
    "WorkerShutdownContext.reason": '`"signal"` (SIGINT or SIGTERM), `"graceful"` (`Worker.stop` or '
    '`run_once` running out of jobs) or `"error"` (a fatal error).',
    "WorkerShutdownContext.error": 'The fatal error when `reason` is `"error"`, else `None`.',
    "JobCompleteContext.duration": "Seconds from the start of the task (or of the `gw_before_job_run` "
    "chain, for a skipped job) to the outcome.",
    "JobFailContext.job": "The row after the failed attempt was written: `job.run_at` is when the next "
    "attempt may run, `job.last_error` the error text.",
    "JobFailContext.error": "The task's exception, the exception a hook raised or passed to "
    "`HookResult.fail`, or a `gwcore.worker.JobFailure` with a hook's message.",
    "JobPermanentlyFailContext.job": "The row after the last attempt: `attempts` equals `max_attempts`.",
    "JobPermanentlyFailContext.error": "The exception of the last attempt, as in `gw_job_fail`.",
    "JobInterruptedContext.reason": 'The cause: `"shutdown"`.',
    "JobInterruptedContext.job": "The row as it was fetched; the interrupted attempt is not counted.",
    "old_mode": "The `LocalQueueMode` the local queue leaves.",
    "new_mode": "The `LocalQueueMode` the local queue enters.",
    "LocalQueueGetJobsCompleteContext.jobs_count": "How many jobs the fetch locked for the worker "
    "(0 included).",
    "LocalQueueReturnJobsContext.jobs_count": "How many jobs were handed back unlocked, with their attempt "
    "given back.",
    "LocalQueueRefetchDelayStartContext.duration": "Seconds of the pause: the configured duration, "
    "jittered to between half and all of it.",
    "threshold": "The refetch delay's `threshold`: a fetch that returned at most this many jobs "
    "starts a pause.",
    "abort_threshold": "How many `jobs:insert` notifications end the pause early: a random number "
    "between 1 and `max_abort_threshold`.",
    "LocalQueueRefetchDelayAbortContext.count": "How many `jobs:insert` notifications arrived since the "
    "fetch before the pause.",
    "BeforeJobScheduleContext.payload": "The payload as the previous implementation left it.",
}

RUN_RESULTS = """\
| Return | Effect |
|---|---|
| `None` or `HookResult.CONTINUE` | Pass to the next implementation; at the end of the chain, \
go on as normal. |
| `HookResult.SKIP` | End the chain and mark the job done: its row is deleted and `gw_job_complete` fires. |
| `HookResult.fail(reason)` | End the chain and fail the attempt with `reason`, a message or an exception; \
the normal failure path runs, with retries. |
| anything else | `PluginError`, which fails the attempt. |
| an exception | Fails the attempt with that exception. |"""

# The valid results of each interceptor. Every other hook's return value is ignored.
RESULTS: dict[str, str] = {
    "gw_before_job_run": RUN_RESULTS,
    "gw_after_job_run": RUN_RESULTS.replace(
        "mark the job done:", "mark the job done even if the task raised:"
    ).replace("fail the attempt with `reason`", "fail the attempt even if the task succeeded, with `reason`"),
    "gw_before_job_schedule": """\
| Return | Effect |
|---|---|
| `None` | Keep the payload and pass to the next implementation. |
| `JobScheduleResult.continue_with(payload)` | Replace the payload for the next implementation and \
for the insert; the new payload is validated. |
| `JobScheduleResult.SKIP` | Insert nothing: `add_job` returns `None`, `add_jobs` leaves out only this job. |
| `JobScheduleResult.fail(reason)` | Raise `gwcore.JobScheduleError` and insert nothing of the call, \
a whole `add_jobs` batch included. |
| anything else | `PluginError`, raised to the caller of `add_job`. |
| an exception | Propagates to the caller of `add_job`; nothing is inserted. |""",
}

EXAMPLES: dict[str, str] = {
    "gw_worker_init": """\
@gwcore.hookimpl
def gw_worker_init(ctx):
    print(f"worker starting on {ctx.database.url}, schema {ctx.schema}, {ctx.concurrency} slot(s)")""",
    "gw_worker_start": """\
@gwcore.hookimpl
async def gw_worker_start(ctx):
    async with ctx.worker.pool.connection() as conn:
        await conn.execute("select 1")  # a query of the plugin's own
    print(f"worker {ctx.worker_id} is fetching jobs")""",
    "gw_worker_shutdown": """\
@gwcore.hookimpl
def gw_worker_shutdown(ctx):
    if ctx.reason == "error":
        print(f"worker {ctx.worker_id} stopped on {ctx.error!r}")""",
    "gw_job_fetch": """\
@gwcore.hookimpl
def gw_job_fetch(ctx):
    print(f"fetched job {ctx.job.id} ({ctx.job.task_identifier}), attempt {ctx.job.attempts}")""",
    "gw_before_job_run": """\
@gwcore.hookimpl
def gw_before_job_run(ctx):
    if ctx.payload.get("dry_run"):
        return gwcore.HookResult.SKIP
    if ctx.job.task_identifier in DISABLED_TASKS:
        return gwcore.HookResult.fail(f"task {ctx.job.task_identifier} is disabled")
    return None""",
    "gw_job_start": """\
started = {}


@gwcore.hookimpl
def gw_job_start(ctx):
    started[ctx.job.id] = time.monotonic()""",
    "gw_after_job_run": """\
@gwcore.hookimpl
def gw_after_job_run(ctx):
    if ctx.result.ok and ctx.result.value == "partial":
        return gwcore.HookResult.fail("the task finished only part of its work")
    return None""",
    "gw_job_complete": """\
@gwcore.hookimpl
def gw_job_complete(ctx):
    if ctx.duration > 1.0:
        logger.warning("slow job %s %d took %.3f s", ctx.job.task_identifier, ctx.job.id, ctx.duration)""",
    "gw_job_fail": """\
@gwcore.hookimpl
def gw_job_fail(ctx):
    when = f"retrying at {ctx.job.run_at:%H:%M:%S}" if ctx.will_retry else "no retry left"
    print(f"job {ctx.job.id} failed ({ctx.error!r}), {when}")""",
    "gw_job_permanently_fail": """\
@gwcore.hookimpl
async def gw_job_permanently_fail(ctx):
    await alerts.send(f"job {ctx.job.id} failed {ctx.job.attempts} times: {ctx.error!r}")""",
    "gw_job_interrupted": """\
@gwcore.hookimpl
def gw_job_interrupted(ctx):
    print(f"job {ctx.job.id} was handed back ({ctx.reason}) and will run again")""",
    "gw_before_job_schedule": """\
@gwcore.hookimpl
def gw_before_job_schedule(ctx):
    if ctx.identifier == "legacy_task":
        return gwcore.JobScheduleResult.fail("legacy_task was removed; add new_task instead")
    if isinstance(ctx.payload, dict) and "tenant" not in ctx.payload:
        return gwcore.JobScheduleResult.continue_with({**ctx.payload, "tenant": "acme"})
    return None""",
    "gw_addoption": """\
@gwcore.hookimpl
def gw_addoption(parser):
    parser.addoption("--slowlog-threshold", type=float, default=1.0, help="seconds before a job is slow")""",
    "gw_configure": """\
@gwcore.hookimpl
def gw_configure(config):
    threshold = config.get("slowlog_threshold")
    if threshold < 0:
        raise gwcore.ConfigurationError(
            f"--slowlog-threshold is invalid: {threshold}; set it to a number of seconds >= 0."
        )""",
    "gw_unconfigure": """\
@gwcore.hookimpl
def gw_unconfigure(config):
    metrics_client.flush()""",
}


@dataclass
class Section:
    """A group of hooks under one section comment of hookspecs.py."""

    title: str
    intro: str
    hooks: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------
# Reading the hook specifications
# ---------------------------------------------------------------------------


def read_sections(source: str) -> list[Section]:
    """Return the sections of hookspecs.py with the ``gw_*`` functions of each, in source order."""
    lines = source.splitlines()
    headers: list[tuple[int, Section]] = []
    index = 0
    while index < len(lines):
        if _is_rule(lines[index]):
            block: list[str] = []
            end = index + 1
            while end < len(lines) and lines[end].startswith("#") and not _is_rule(lines[end]):
                block.append(lines[end].removeprefix("#").strip())
                end += 1
            if end < len(lines) and _is_rule(lines[end]) and block:
                title, intro = block[0], " ".join(block[1:]).strip()
                headers.append((index + 1, Section(title, intro)))
                index = end
        index += 1

    sections: list[Section] = []
    current: Section | None = None
    for node in ast.parse(source).body:
        if not (isinstance(node, ast.FunctionDef) and node.name.startswith("gw_")):
            continue
        owner = None
        for line, section in headers:
            if line < node.lineno:
                owner = section
        if owner is None:
            owner = Section("Hooks", "")
        if owner is not current:
            if owner not in sections:
                sections.append(owner)
            current = owner
        owner.hooks.append(node.name)
    return sections


def _is_rule(line: str) -> bool:
    return re.fullmatch(r"#\s*-{10,}\s*", line) is not None


def read_signatures(source: str) -> dict[str, str]:
    """Return each hook's signature as written in the source, annotations included."""
    signatures = {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.FunctionDef) and node.name.startswith("gw_"):
            returns = f" -> {ast.unparse(node.returns)}" if node.returns is not None else ""
            signatures[node.name] = f"def {node.name}({ast.unparse(node.args)}){returns}: ..."
    return signatures


def build_namespace() -> dict[str, Any]:
    """Return the names that annotations may use, from every module of `NAMESPACE_MODULES` that imports."""
    namespace: dict[str, Any] = {}
    for name in NAMESPACE_MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue  # a module that another change has not added yet
        namespace.update(vars(module))
    return namespace


def resolve(annotation: Any, namespace: dict[str, Any]) -> Any:
    """Return the object an annotation names, or None when it cannot be resolved."""
    if not isinstance(annotation, str):
        return annotation
    try:
        return eval(annotation, namespace)  # annotations are trusted source of gwcore
    except Exception:
        return None


def argument_types(function: Callable[..., Any], namespace: dict[str, Any]) -> dict[str, Any]:
    """Return the resolved type of each argument of a hook specification, None where unresolvable."""
    try:
        hints = typing.get_type_hints(function, localns=namespace)
    except Exception:
        hints = {}
    result = {}
    for name, parameter in inspect.signature(function).parameters.items():
        result[name] = hints.get(name, resolve(parameter.annotation, namespace))
    return result


def hook_kind(name: str, function: Callable[..., Any], options: dict[str, Any]) -> str:
    """Return "observer", "interceptor" or "hook" from the docstring's first word or the spec's options."""
    first_word = (inspect.getdoc(function) or "").split(".", 1)[0].strip().lower()
    if first_word in ("observer", "interceptor"):
        return first_word
    if options.get("firstresult") or name in RESULTS:
        return "interceptor"
    return "hook"


# ---------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------


def markdown_text(docstring: str) -> str:
    """Turn a docstring's reStructuredText literals (double backticks) into Markdown ones."""
    return re.sub(r"``(.+?)``", r"`\1`", docstring)


def type_name(annotation: Any) -> str:
    if isinstance(annotation, str):
        return expand_aliases(annotation)
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation).replace("typing.", "")


def expand_aliases(text: str) -> str:
    """Replace each name in a type that is a ``Literal`` alias (``ShutdownReason``) with its values."""

    def expand(match: re.Match[str]) -> str:
        value = _NAMESPACE.get(match.group(0))
        if typing.get_origin(value) is not typing.Literal:
            return match.group(0)
        return "Literal[" + ", ".join(f'"{item}"' for item in typing.get_args(value)) + "]"

    return re.sub(r"\b[A-Z]\w*\b", expand, text)


def escape_cell(text: str) -> str:
    return text.replace("|", "\\|")


def render_fields(cls: type, notes: bool = True) -> list[str]:
    rows = ["| Field | Type | Meaning |", "|---|---|---|"] if notes else ["| Field | Type |", "|---|---|"]
    for item in dataclasses.fields(cls):
        cells = [f"`{item.name}`", f"`{escape_cell(type_name(item.type))}`"]
        if notes:
            note = FIELD_NOTES.get(f"{cls.__name__}.{item.name}", FIELD_NOTES.get(item.name, ""))
            cells.append(escape_cell(note))
        rows.append("| " + " | ".join(cells) + " |")
    return rows


def is_context(annotation: Any) -> bool:
    """Tell whether an argument's type is a context dataclass, whose fields are its whole interface."""
    return (
        isinstance(annotation, type)
        and dataclasses.is_dataclass(annotation)
        and annotation.__module__ == "gwcore.contexts"
    )


def render_argument(name: str, annotation: Any) -> list[str]:
    """Describe one argument of a hook: a dataclass gets its fields, another class its public methods."""
    if annotation is None:
        return [f"**`{name}`**: the type could not be imported when this page was generated.", ""]
    if is_context(annotation):
        return [
            f"**`{name}`**: `{annotation.__name__}`, with these fields:",
            "",
            *render_fields(annotation),
            "",
        ]
    lines = [f"**`{name}`**: `{annotation.__module__}.{type_name(annotation)}`."]
    summary = (inspect.getdoc(annotation) or "").split("\n\n", 1)[0].replace("\n", " ")
    if summary:
        lines[0] += " " + markdown_text(summary)
    methods = [
        (method_name, member)
        for method_name, member in vars(annotation).items()
        if not method_name.startswith("_") and inspect.isfunction(member)
    ]
    if methods:
        lines += ["", "| Method | Description |", "|---|---|"]
        for method_name, member in methods:
            doc = (inspect.getdoc(member) or "").split("\n\n", 1)[0].replace("\n", " ")
            lines.append(f"| `{method_name}{_short_signature(member)}` | {escape_cell(markdown_text(doc))} |")
    return [*lines, ""]


def _short_signature(function: Callable[..., Any]) -> str:
    parameters = [name for name in inspect.signature(function).parameters if name not in ("self", "cls")]
    return f"({', '.join(parameters)})"


def render_hook(name: str, module: ModuleType, signature: str, namespace: dict[str, Any]) -> list[str]:
    function = getattr(module, name)
    options = getattr(function, f"{module.PROJECT_NAME}_spec", None) or {}
    kind = hook_kind(name, function, options)
    heading = f"### `{name}`" if kind == "hook" else f"### `{name}` ({kind})"
    lines = [heading, "", "```python", signature, "```", ""]

    docstring = inspect.getdoc(function) or "No description."
    lines += [markdown_text(docstring), ""]

    for argument, annotation in argument_types(function, namespace).items():
        if argument != "return":
            lines += render_argument(argument, annotation)

    if name in RESULTS:
        lines += ["**Results**:", "", RESULTS[name], ""]
    elif kind == "interceptor":
        lines += ["**Results**: as the description above says.", ""]
    else:
        lines += ["**Results**: the return value is ignored.", ""]

    example = EXAMPLES.get(name)
    if example:
        lines += ["**Example**:", "", "```python", example, "```", ""]
    return lines


def render_shared_types(namespace: dict[str, Any]) -> list[str]:
    lines = ["## Types used in the contexts", ""]
    for name in SHARED_TYPES:
        cls = namespace.get(name)
        if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
            continue
        summary = markdown_text(inspect.getdoc(cls) or "")
        lines += [f"### `{cls.__module__}.{name}`", "", summary, "", *render_fields(cls, notes=False), ""]
    return lines


def anchor(name: str) -> str:
    return re.sub(r"[^a-z0-9_ -]", "", name.lower()).replace(" ", "-")


def render() -> str:
    """Return the text of docs/hooks-reference.md for the hook specifications as they are now."""
    module = importlib.import_module("gwcore.hookspecs")
    source = Path(inspect.getfile(module)).read_text(encoding="utf-8")
    sections = read_sections(source)
    signatures = read_signatures(source)
    namespace = build_namespace()
    _NAMESPACE.clear()
    _NAMESPACE.update(namespace)

    lines = [
        "# Hooks reference",
        "",
        "<!-- Generated by docs/generate_hooks_reference.py from gwcore/hookspecs.py; do not edit. -->",
        "",
        "Every hook that a plugin can implement, in the order of `gwcore/hookspecs.py`.",
        "[Hooks](hooks.md) explains observers, interceptors and their order with a worked",
        "example, and [Writing a plugin](writing-a-plugin.md) shows how to package and test one.",
        "Regenerate this page with `python docs/generate_hooks_reference.py` after changing a hook.",
        "",
    ]
    for section in sections:
        links = ", ".join(f"[`{hook}`](#{anchor(hook)})" for hook in section.hooks)
        lines.append(f"- {section.title}: {links}")
    lines.append("")

    for section in sections:
        lines += [f"## {section.title}", ""]
        if section.intro:
            lines += [markdown_text(section.intro), ""]
        for hook in section.hooks:
            lines += render_hook(hook, module, signatures[hook], namespace)
    lines += render_shared_types(namespace)
    return "\n".join(lines).rstrip("\n") + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--check",
        action="store_true",
        help=f"exit with status 1 if {OUTPUT.relative_to(REPO)} is out of date, without writing it",
    )
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = OUTPUT.read_text(encoding="utf-8") if OUTPUT.exists() else ""
        if current != text:
            print(
                f"{OUTPUT.relative_to(REPO)} is out of date with gwcore/hookspecs.py; "
                "run `python docs/generate_hooks_reference.py` and commit the result.",
                file=sys.stderr,
            )
            return 1
        return 0
    OUTPUT.write_text(text, encoding="utf-8")
    print(f"wrote {OUTPUT.relative_to(REPO)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    sys.exit(main())
