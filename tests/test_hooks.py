"""Plugin hooks around running a job: order, ctx fields, interceptor results and plugin errors."""

from __future__ import annotations

import asyncio
import contextvars
import logging
import types
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.rows import dict_row

import gwcore
from gwcore import HookResult, hookimpl

ADD_PLUGINS = gwcore.create_plugin_manager(builtins=False, entry_points=False)
WORKER_ID = "worker-hooks"

JOB_HOOKS_SUCCESS = [
    "gw_worker_init",
    "gw_worker_start",
    "gw_job_fetch",
    "gw_before_job_run",
    "gw_job_start",
    "gw_after_job_run",
    "gw_job_complete",
    "gw_worker_shutdown",
]


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------


class Recorder:
    """Records every worker and job hook with its ctx, in call order.

    pluggy calls unmarked implementations last registered, first called, so a
    test registers the recorder after an interceptor to see the chain start.
    """

    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []

    def names(self) -> list[str]:
        return [name for name, _ in self.events]

    def ctx(self, hook_name: str) -> Any:
        matches = [ctx for name, ctx in self.events if name == hook_name]
        assert len(matches) == 1, f"{hook_name} fired {len(matches)} times: {self.names()}"
        return matches[0]

    @hookimpl
    def gw_worker_init(self, ctx: Any) -> None:
        self.events.append(("gw_worker_init", ctx))

    @hookimpl
    def gw_worker_start(self, ctx: Any) -> None:
        self.events.append(("gw_worker_start", ctx))

    @hookimpl
    def gw_worker_shutdown(self, ctx: Any) -> None:
        self.events.append(("gw_worker_shutdown", ctx))

    @hookimpl
    def gw_job_fetch(self, ctx: Any) -> None:
        self.events.append(("gw_job_fetch", ctx))

    @hookimpl
    def gw_before_job_run(self, ctx: Any) -> None:
        self.events.append(("gw_before_job_run", ctx))

    @hookimpl
    def gw_job_start(self, ctx: Any) -> None:
        self.events.append(("gw_job_start", ctx))

    @hookimpl
    def gw_after_job_run(self, ctx: Any) -> None:
        self.events.append(("gw_after_job_run", ctx))

    @hookimpl
    def gw_job_complete(self, ctx: Any) -> None:
        self.events.append(("gw_job_complete", ctx))

    @hookimpl
    def gw_job_fail(self, ctx: Any) -> None:
        self.events.append(("gw_job_fail", ctx))

    @hookimpl
    def gw_job_permanently_fail(self, ctx: Any) -> None:
        self.events.append(("gw_job_permanently_fail", ctx))

    @hookimpl
    def gw_job_interrupted(self, ctx: Any) -> None:
        self.events.append(("gw_job_interrupted", ctx))


async def add(
    conn: psycopg.AsyncConnection[Any], schema: str, identifier: str, payload: Any = None, **options: Any
) -> gwcore.Job:
    job = await gwcore.add_job(conn, identifier, payload, schema=schema, plugins=ADD_PLUGINS, **options)
    assert job is not None
    return job


async def job_row(conn: psycopg.AsyncConnection[Any], schema: str, job_id: int) -> dict[str, Any] | None:
    query = sql.SQL("select * from {}._private_jobs where id = %s").format(sql.Identifier(schema))
    async with conn.cursor(row_factory=dict_row) as cursor:
        await cursor.execute(query, [job_id])
        return await cursor.fetchone()


async def run_once(
    url: str,
    schema: str,
    tasks: Mapping[str, Callable[..., Any]],
    *,
    plugins: Sequence[object] = (),
    plugin_manager: gwcore.PluginManager | None = None,
    **options: Any,
) -> gwcore.Worker:
    manager = plugin_manager or gwcore.create_plugin_manager(plugins, entry_points=False)
    worker = gwcore.Worker(
        url, schema=schema, tasks=tasks, plugin_manager=manager, worker_id=WORKER_ID, **options
    )
    await asyncio.wait_for(worker.run_once(), 30)
    return worker


def counting_task(
    calls: list[int], *, error: BaseException | None = None, value: Any = None
) -> Callable[..., Any]:
    async def task(payload: Any, ctx: gwcore.JobContext) -> Any:
        calls.append(ctx.id)
        if error is not None:
            raise error
        return value

    return task


class Interceptor:
    """Returns fixed results from gw_before_job_run and gw_after_job_run."""

    def __init__(self, *, before: Any = None, after: Any = None) -> None:
        self.before = before
        self.after = after

    @hookimpl
    def gw_before_job_run(self, ctx: Any) -> Any:
        if isinstance(self.before, BaseException):
            raise self.before
        return self.before

    @hookimpl
    def gw_after_job_run(self, ctx: Any) -> Any:
        if isinstance(self.after, BaseException):
            raise self.after
        return self.after


# ---------------------------------------------------------------------------
# Order and ctx fields
# ---------------------------------------------------------------------------


async def test_hooks_order_on_success(
    gw_database_url: str, gw_schema: str, gw_conn: psycopg.AsyncConnection[Any]
) -> None:
    recorder = Recorder()
    calls: list[int] = []
    job = await add(gw_conn, gw_schema, "succeed", {"n": 1})

    worker = await run_once(
        gw_database_url,
        gw_schema,
        {"succeed": counting_task(calls, value="the result")},
        plugins=[recorder],
        extensions={"setting": "on"},
    )

    assert recorder.names() == JOB_HOOKS_SUCCESS
    assert calls == [job.id]

    init = recorder.ctx("gw_worker_init")
    assert init.schema == gw_schema
    assert init.concurrency == 1
    assert init.database.dbname == psycopg.conninfo.conninfo_to_dict(gw_database_url)["dbname"]

    start = recorder.ctx("gw_worker_start")
    assert start.worker_id == WORKER_ID
    assert start.worker is worker
    assert start.extensions == {"setting": "on"}

    fetch = recorder.ctx("gw_job_fetch")
    assert fetch.job.id == job.id
    assert fetch.job.attempts == 1
    assert fetch.job.locked_by == WORKER_ID
    assert fetch.worker_id == WORKER_ID

    before = recorder.ctx("gw_before_job_run")
    assert before.job.id == job.id
    assert before.payload == {"n": 1}
    assert before.worker_id == WORKER_ID

    job_start = recorder.ctx("gw_job_start")
    assert job_start.job.id == job.id
    assert job_start.worker_id == WORKER_ID

    after = recorder.ctx("gw_after_job_run")
    assert after.job.id == job.id
    assert after.result.ok is True
    assert after.result.value == "the result"
    assert after.result.error is None
    assert after.duration >= 0

    complete = recorder.ctx("gw_job_complete")
    assert complete.job.id == job.id
    assert complete.worker_id == WORKER_ID
    assert complete.duration >= 0

    shutdown = recorder.ctx("gw_worker_shutdown")
    assert shutdown.reason == "graceful"
    assert shutdown.error is None
    assert shutdown.worker_id == WORKER_ID

    assert await job_row(gw_conn, gw_schema, job.id) is None


async def test_hooks_order_on_failure(
    gw_database_url: str, gw_schema: str, gw_conn: psycopg.AsyncConnection[Any]
) -> None:
    recorder = Recorder()
    calls: list[int] = []
    error = ValueError("bad input")
    job = await add(gw_conn, gw_schema, "fail", max_attempts=3)

    await run_once(
        gw_database_url, gw_schema, {"fail": counting_task(calls, error=error)}, plugins=[recorder]
    )

    assert recorder.names() == [
        "gw_worker_init",
        "gw_worker_start",
        "gw_job_fetch",
        "gw_before_job_run",
        "gw_job_start",
        "gw_after_job_run",
        "gw_job_fail",
        "gw_worker_shutdown",
    ]
    after = recorder.ctx("gw_after_job_run")
    assert after.result.ok is False
    assert after.result.error is error

    fail = recorder.ctx("gw_job_fail")
    assert fail.job.id == job.id
    assert fail.error is error
    assert fail.will_retry is True
    assert fail.job.attempts == 1
    assert fail.job.locked_by is None
    assert fail.job.last_error.startswith("ValueError: bad input")

    row = await job_row(gw_conn, gw_schema, job.id)
    assert row is not None
    assert fail.job.run_at == row["run_at"]
    assert fail.job.run_at > fail.job.created_at


async def test_hooks_order_on_permanent_failure(
    gw_database_url: str, gw_schema: str, gw_conn: psycopg.AsyncConnection[Any]
) -> None:
    recorder = Recorder()
    error = RuntimeError("gave up")
    job = await add(gw_conn, gw_schema, "fail", max_attempts=1)

    await run_once(gw_database_url, gw_schema, {"fail": counting_task([], error=error)}, plugins=[recorder])

    assert recorder.names()[-3:] == ["gw_job_fail", "gw_job_permanently_fail", "gw_worker_shutdown"]
    fail = recorder.ctx("gw_job_fail")
    assert fail.will_retry is False
    assert fail.error is error

    permanent = recorder.ctx("gw_job_permanently_fail")
    assert permanent.job.id == job.id
    assert permanent.job.attempts == 1
    assert permanent.job.max_attempts == 1
    assert permanent.error is error
    assert permanent.worker_id == WORKER_ID

    row = await job_row(gw_conn, gw_schema, job.id)
    assert row is not None
    assert row["attempts"] == 1


# ---------------------------------------------------------------------------
# Interceptors
# ---------------------------------------------------------------------------


async def test_before_run_skip(
    gw_database_url: str, gw_schema: str, gw_conn: psycopg.AsyncConnection[Any]
) -> None:
    recorder = Recorder()
    calls: list[int] = []
    job = await add(gw_conn, gw_schema, "skipped")

    await run_once(
        gw_database_url,
        gw_schema,
        {"skipped": counting_task(calls)},
        plugins=[Interceptor(before=HookResult.SKIP), recorder],
    )

    assert calls == []
    assert await job_row(gw_conn, gw_schema, job.id) is None
    assert recorder.names() == [
        "gw_worker_init",
        "gw_worker_start",
        "gw_job_fetch",
        "gw_before_job_run",
        "gw_job_complete",
        "gw_worker_shutdown",
    ]
    assert recorder.ctx("gw_job_complete").job.id == job.id


async def test_before_run_fail(
    gw_database_url: str, gw_schema: str, gw_conn: psycopg.AsyncConnection[Any]
) -> None:
    recorder = Recorder()
    calls: list[int] = []
    job = await add(gw_conn, gw_schema, "refused")

    await run_once(
        gw_database_url,
        gw_schema,
        {"refused": counting_task(calls)},
        plugins=[Interceptor(before=HookResult.fail("quota exceeded")), recorder],
    )

    assert calls == []
    row = await job_row(gw_conn, gw_schema, job.id)
    assert row is not None
    assert row["attempts"] == 1
    assert row["locked_by"] is None
    assert "quota exceeded" in row["last_error"]
    assert "gw_job_start" not in recorder.names()
    assert recorder.ctx("gw_job_fail").will_retry is True
    assert str(recorder.ctx("gw_job_fail").error) == "quota exceeded"


async def test_before_run_exception_fails(
    gw_database_url: str, gw_schema: str, gw_conn: psycopg.AsyncConnection[Any]
) -> None:
    recorder = Recorder()
    calls: list[int] = []
    error = KeyError("missing tenant")
    job = await add(gw_conn, gw_schema, "broken_before")

    await run_once(
        gw_database_url,
        gw_schema,
        {"broken_before": counting_task(calls)},
        plugins=[Interceptor(before=error), recorder],
    )

    assert calls == []
    row = await job_row(gw_conn, gw_schema, job.id)
    assert row is not None
    assert row["attempts"] == 1
    assert row["last_error"].startswith("KeyError: 'missing tenant'")
    assert recorder.ctx("gw_job_fail").error is error


async def test_after_run_continue_keeps_outcome(
    gw_database_url: str, gw_schema: str, gw_conn: psycopg.AsyncConnection[Any]
) -> None:
    calls: list[int] = []
    ok_job = await add(gw_conn, gw_schema, "ok")
    failing_job = await add(gw_conn, gw_schema, "bad")

    await run_once(
        gw_database_url,
        gw_schema,
        {"ok": counting_task(calls), "bad": counting_task(calls, error=ValueError("still failing"))},
        plugins=[Interceptor(after=HookResult.CONTINUE)],
    )

    assert sorted(calls) == sorted([ok_job.id, failing_job.id])
    assert await job_row(gw_conn, gw_schema, ok_job.id) is None
    row = await job_row(gw_conn, gw_schema, failing_job.id)
    assert row is not None
    assert row["last_error"].startswith("ValueError: still failing")


async def test_after_run_skip_marks_done(
    gw_database_url: str, gw_schema: str, gw_conn: psycopg.AsyncConnection[Any]
) -> None:
    recorder = Recorder()
    calls: list[int] = []
    job = await add(gw_conn, gw_schema, "bad")

    await run_once(
        gw_database_url,
        gw_schema,
        {"bad": counting_task(calls, error=ValueError("ignored"))},
        plugins=[Interceptor(after=HookResult.SKIP), recorder],
    )

    assert calls == [job.id]
    assert await job_row(gw_conn, gw_schema, job.id) is None
    assert "gw_job_fail" not in recorder.names()
    assert recorder.ctx("gw_job_complete").job.id == job.id


async def test_after_run_fail_fails_success(
    gw_database_url: str, gw_schema: str, gw_conn: psycopg.AsyncConnection[Any]
) -> None:
    recorder = Recorder()
    calls: list[int] = []
    job = await add(gw_conn, gw_schema, "ok")

    await run_once(
        gw_database_url,
        gw_schema,
        {"ok": counting_task(calls, value="fine")},
        plugins=[Interceptor(after=HookResult.fail("result rejected")), recorder],
    )

    assert calls == [job.id]
    row = await job_row(gw_conn, gw_schema, job.id)
    assert row is not None
    assert row["attempts"] == 1
    assert "result rejected" in row["last_error"]
    assert "gw_job_complete" not in recorder.names()
    assert recorder.ctx("gw_after_job_run").result.value == "fine"


async def test_after_run_exception_fails(
    gw_database_url: str, gw_schema: str, gw_conn: psycopg.AsyncConnection[Any]
) -> None:
    job = await add(gw_conn, gw_schema, "ok")

    await run_once(
        gw_database_url,
        gw_schema,
        {"ok": counting_task([])},
        plugins=[Interceptor(after=LookupError("audit failed"))],
    )

    row = await job_row(gw_conn, gw_schema, job.id)
    assert row is not None
    assert row["last_error"].startswith("LookupError: audit failed")


async def test_interceptor_bad_return_fails(
    gw_database_url: str, gw_schema: str, gw_conn: psycopg.AsyncConnection[Any]
) -> None:
    calls: list[int] = []
    job = await add(gw_conn, gw_schema, "ok")
    manager = gwcore.create_plugin_manager(entry_points=False)
    manager.register(Interceptor(before="skip please"), name="sloppy_interceptor")

    await run_once(gw_database_url, gw_schema, {"ok": counting_task(calls)}, plugin_manager=manager)

    assert calls == []
    row = await job_row(gw_conn, gw_schema, job.id)
    assert row is not None
    assert row["last_error"].startswith("PluginError: plugin 'sloppy_interceptor' returned 'skip please'")


# ---------------------------------------------------------------------------
# Observer errors, async implementations and ordering
# ---------------------------------------------------------------------------


class BrokenObserver:
    @hookimpl(tryfirst=True)
    def gw_job_start(self, ctx: Any) -> None:
        raise RuntimeError("observer broke in gw_job_start")

    @hookimpl(tryfirst=True)
    async def gw_job_complete(self, ctx: Any) -> None:
        raise RuntimeError("observer broke in gw_job_complete")


@pytest.mark.parametrize(
    ("registered_name", "logged_name"),
    [("broken_observer", "broken_observer"), (None, "BrokenObserver")],
    ids=["named", "class-name"],
)
async def test_observer_exception_logged_ignored(
    gw_database_url: str,
    gw_schema: str,
    gw_conn: psycopg.AsyncConnection[Any],
    caplog: pytest.LogCaptureFixture,
    registered_name: str | None,
    logged_name: str,
) -> None:
    recorder = Recorder()
    calls: list[int] = []
    job = await add(gw_conn, gw_schema, "ok")
    manager = gwcore.create_plugin_manager([recorder], entry_points=False)
    manager.register(BrokenObserver(), name=registered_name)

    caplog.set_level(logging.ERROR, logger="gwcore.plugins")
    await run_once(gw_database_url, gw_schema, {"ok": counting_task(calls)}, plugin_manager=manager)

    assert calls == [job.id]
    assert await job_row(gw_conn, gw_schema, job.id) is None
    assert recorder.names() == JOB_HOOKS_SUCCESS

    errors = [record for record in caplog.records if record.name == "gwcore.plugins"]
    assert len(errors) == 2
    assert f"'{logged_name}'" in errors[0].getMessage()
    assert "gw_job_start" in errors[0].getMessage()
    assert f"'{logged_name}'" in errors[1].getMessage()
    assert "gw_job_complete" in errors[1].getMessage()
    assert errors[1].exc_info is not None
    assert str(errors[1].exc_info[1]) == "observer broke in gw_job_complete"


class AsyncPlugin:
    def __init__(self) -> None:
        self.events: list[str] = []

    @hookimpl
    async def gw_job_start(self, ctx: Any) -> None:
        await asyncio.sleep(0)
        self.events.append("start")

    @hookimpl
    async def gw_before_job_run(self, ctx: Any) -> Any:
        await asyncio.sleep(0)
        self.events.append("before")
        return HookResult.SKIP if ctx.payload.get("skip") else None

    @hookimpl
    async def gw_after_job_run(self, ctx: Any) -> Any:
        await asyncio.sleep(0)
        self.events.append("after")
        return HookResult.fail("async after says no")

    @hookimpl
    async def gw_job_complete(self, ctx: Any) -> None:
        await asyncio.sleep(0)
        self.events.append(f"complete {ctx.job.payload['name']}")


async def test_async_hookimpls_work(
    gw_database_url: str, gw_schema: str, gw_conn: psycopg.AsyncConnection[Any]
) -> None:
    plugin = AsyncPlugin()
    calls: list[int] = []
    skipped = await add(gw_conn, gw_schema, "ok", {"name": "skipped", "skip": True}, priority=0)
    failed = await add(gw_conn, gw_schema, "ok", {"name": "failed", "skip": False}, priority=1)

    await run_once(gw_database_url, gw_schema, {"ok": counting_task(calls)}, plugins=[plugin])

    assert calls == [failed.id]
    assert plugin.events == ["before", "complete skipped", "before", "start", "after"]
    assert await job_row(gw_conn, gw_schema, skipped.id) is None
    row = await job_row(gw_conn, gw_schema, failed.id)
    assert row is not None
    assert "async after says no" in row["last_error"]


async def test_tryfirst_trylast_order(
    gw_database_url: str, gw_schema: str, gw_conn: psycopg.AsyncConnection[Any]
) -> None:
    order: list[str] = []

    class First:
        @hookimpl(tryfirst=True)
        def gw_job_start(self, ctx: Any) -> None:
            order.append("first")

    class Middle:
        @hookimpl
        def gw_job_start(self, ctx: Any) -> None:
            order.append("middle")

    class Last:
        @hookimpl(trylast=True)
        def gw_job_start(self, ctx: Any) -> None:
            order.append("last")

    await add(gw_conn, gw_schema, "ok")
    await run_once(gw_database_url, gw_schema, {"ok": counting_task([])}, plugins=[Last(), Middle(), First()])

    assert order == ["first", "middle", "last"]


async def test_tryfirst_skip_ends_chain(
    gw_database_url: str, gw_schema: str, gw_conn: psycopg.AsyncConnection[Any]
) -> None:
    chain: list[str] = []
    calls: list[int] = []

    class Gate:
        @hookimpl(tryfirst=True)
        def gw_before_job_run(self, ctx: Any) -> Any:
            chain.append("gate")
            return HookResult.SKIP

    class Later:
        @hookimpl
        def gw_before_job_run(self, ctx: Any) -> Any:
            chain.append("later")
            return None

    job = await add(gw_conn, gw_schema, "ok")
    await run_once(gw_database_url, gw_schema, {"ok": counting_task(calls)}, plugins=[Gate(), Later()])

    assert chain == ["gate"]
    assert calls == []
    assert await job_row(gw_conn, gw_schema, job.id) is None


# ---------------------------------------------------------------------------
# Registering plugins
# ---------------------------------------------------------------------------


async def test_unmarked_gw_functions_accepted(
    gw_database_url: str, gw_schema: str, gw_conn: psycopg.AsyncConnection[Any]
) -> None:
    events: list[str] = []

    class UnmarkedClass:
        def gw_job_start(self, ctx: Any) -> None:
            events.append(f"class start {ctx.job.id}")

        def gw_job_fetch(self) -> None:
            events.append("class fetch without ctx")

    def gw_job_complete(ctx: Any) -> None:
        events.append(f"module complete {ctx.job.id}")

    module = types.ModuleType("unmarked_plugin_module")
    module.gw_job_complete = gw_job_complete  # type: ignore[attr-defined]

    job = await add(gw_conn, gw_schema, "ok")
    await run_once(gw_database_url, gw_schema, {"ok": counting_task([])}, plugins=[UnmarkedClass(), module])

    assert events == ["class fetch without ctx", f"class start {job.id}", f"module complete {job.id}"]


def test_unknown_hook_name_raises() -> None:
    class Misspelled:
        def gw_job_strat(self, ctx: Any) -> None:
            pass

    with pytest.raises(gwcore.PluginError) as raised:
        gwcore.create_plugin_manager([Misspelled()], entry_points=False)

    message = str(raised.value)
    assert "gw_job_strat" in message
    assert "gw_job_start" in message
    assert "gw_before_job_run" in message


def test_unknown_marked_hook_raises() -> None:
    class Invented:
        @hookimpl
        def gw_job_teleport(self, ctx: Any) -> None:
            pass

    with pytest.raises(gwcore.PluginError) as raised:
        gwcore.create_plugin_manager([Invented()], builtins=False, entry_points=False)

    message = str(raised.value)
    assert "gw_job_teleport" in message
    assert "gw_job_complete" in message


def test_wrong_argument_name_raises() -> None:
    class WrongArgument:
        @hookimpl
        def gw_job_start(self, context: Any) -> None:
            pass

    with pytest.raises(gwcore.PluginError) as raised:
        gwcore.create_plugin_manager([WrongArgument()], builtins=False, entry_points=False)

    message = str(raised.value)
    assert "context" in message
    assert "gw_job_start takes these arguments: (ctx)" in message


async def test_console_plugin_blocked(
    gw_database_url: str,
    gw_schema: str,
    gw_conn: psycopg.AsyncConnection[Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="gwcore.console")
    blocked = gwcore.create_plugin_manager(blocked=["console"], entry_points=False)
    default = gwcore.create_plugin_manager(entry_points=False)

    assert not blocked.has_plugin("console")
    assert blocked.has_plugin("lock_sweep")
    assert default.has_plugin("console")

    await add(gw_conn, gw_schema, "ok")
    await run_once(gw_database_url, gw_schema, {"ok": counting_task([])}, plugin_manager=blocked)
    assert [record for record in caplog.records if record.name == "gwcore.console"] == []

    reported_job = await add(gw_conn, gw_schema, "ok")
    await run_once(gw_database_url, gw_schema, {"ok": counting_task([])}, plugin_manager=default)
    messages = [record.getMessage() for record in caplog.records if record.name == "gwcore.console"]
    assert len(messages) == 1
    assert messages[0].startswith(f"completed ok job {reported_job.id} in ")


# ---------------------------------------------------------------------------
# Task context from a plugin
# ---------------------------------------------------------------------------

current_request: contextvars.ContextVar[str | None] = contextvars.ContextVar("current_request", default=None)


class RequestContextPlugin:
    """Sets `current_request` around each task, as a tracing plugin would."""

    def __init__(self) -> None:
        self.tokens: dict[int, contextvars.Token[str | None]] = {}
        self.after_complete: list[str | None] = []

    @hookimpl
    def gw_before_job_run(self, ctx: Any) -> None:
        self.tokens[ctx.job.id] = current_request.set(f"request-{ctx.job.id}")

    @hookimpl
    def gw_after_job_run(self, ctx: Any) -> None:
        current_request.reset(self.tokens.pop(ctx.job.id))

    @hookimpl
    def gw_job_complete(self, ctx: Any) -> None:
        self.after_complete.append(current_request.get())


async def test_contextvar_from_plugin_visible(
    gw_database_url: str, gw_schema: str, gw_conn: psycopg.AsyncConnection[Any]
) -> None:
    plugin = RequestContextPlugin()
    seen: dict[str, str | None] = {}

    async def async_task(payload: Any, ctx: gwcore.JobContext) -> None:
        seen["async"] = current_request.get()

    def sync_task(payload: Any, ctx: gwcore.JobContext) -> None:
        seen["sync"] = current_request.get()

    async_job = await add(gw_conn, gw_schema, "async_task")
    sync_job = await add(gw_conn, gw_schema, "sync_task")

    await run_once(
        gw_database_url,
        gw_schema,
        {"async_task": async_task, "sync_task": sync_task},
        plugins=[plugin],
        concurrency=2,
    )

    assert seen["async"] == f"request-{async_job.id}"
    assert seen["sync"] == f"request-{sync_job.id}"
    assert plugin.after_complete == [None, None]
    assert plugin.tokens == {}
    assert current_request.get() is None


async def test_unimplemented_hook_skipped(
    gw_database_url: str, gw_schema: str, gw_conn: psycopg.AsyncConnection[Any]
) -> None:
    manager = gwcore.create_plugin_manager(builtins=False, entry_points=False)

    assert manager.has_calls("gw_job_start") is False
    assert manager.calls("gw_before_job_run") == ()

    calls: list[int] = []
    job = await add(gw_conn, gw_schema, "ok")
    await run_once(gw_database_url, gw_schema, {"ok": counting_task(calls)}, plugin_manager=manager)

    assert calls == [job.id]
    assert await job_row(gw_conn, gw_schema, job.id) is None

    recorder = Recorder()
    manager.register(recorder)
    assert manager.has_calls("gw_job_start") is True
