"""The measurements: throughput runs against a worker process, latency samples, and enqueue rates.

Every throughput run works the same way whatever the worker: the worker
process starts in a fresh schema and reports ``ready``; after 0.5 s (time for
its LISTEN connection) this process adds the jobs with `gwcore.add_jobs` in
batches of `BATCH_SIZE` on one connection, and the clock runs from just before
the first add until no added job is left in ``_private_jobs``.
"""

from __future__ import annotations

import asyncio
import statistics
import time
import uuid
from collections.abc import Callable
from typing import Any

import psycopg
from child import Child, ChildError, ChildTimeoutError, drop_schema, graphile_worker_argv, load_average
from psycopg import sql

import gwcore
from gwcore.migrate import migrate

BATCH_SIZE = 1000
LATENCY_WARMUP = 10
SETTLE_SECONDS = 0.5
# Runs retried when the worker process exits early, such as graphile-worker stopping itself
# because another schema in the database was migrated. A throughput run that times out is not retried.
MAX_RETRIES = 3
TIMED_OUT = "timed out"

# Preparation of the schema before the worker starts. "gwcore" migrates it, "floor" migrates it
# and inserts the task row that sql_floor.py looks up, and "graphile" leaves it to graphile-worker.
Prepare = str


def new_schema(label: str) -> str:
    return f"gw_bench_{label}_{uuid.uuid4().hex[:6]}"


def adder_plugins() -> gwcore.PluginManager:
    """Return a plugin manager with no plugin, so that adding costs the same for every worker measured."""
    return gwcore.create_plugin_manager(builtins=False, entry_points=False, requests=[])


async def prepare_schema(url: str, schema: str, prepare: Prepare, large_rows: int) -> None:
    if prepare == "graphile":
        migrator = await Child.start(
            "graphile-worker migrations", graphile_worker_argv(url, schema, 1, 0, migrate_only=True)
        )
        await migrator.next_event("migrated", timeout=120)
        await migrator.kill()
        return
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await migrate(conn, schema)
        if prepare == "floor" or large_rows:
            await conn.execute(
                sql.SQL(
                    "insert into {}._private_tasks (identifier) values ('noop') on conflict do nothing"
                ).format(sql.Identifier(schema))
            )
        if large_rows:
            await insert_unrunnable_rows(conn, schema, large_rows)


async def insert_unrunnable_rows(conn: psycopg.AsyncConnection[Any], schema: str, rows: int) -> None:
    """Insert ``rows`` jobs that a worker for task ``noop`` must pass over, a third of each kind.

    Kind 0: task ``bench_unknown_task``, which no worker runs, due an hour ago.
    Kind 1: task ``noop``, permanently failed (attempts = max_attempts = 25).
    Kind 2: task ``noop``, due in a day.
    """
    name = sql.Identifier(schema)
    await conn.execute(
        sql.SQL(
            "insert into {}._private_tasks (identifier) values ('bench_unknown_task') on conflict do nothing"
        ).format(name)
    )
    statement = sql.SQL(
        """
        insert into {schema}._private_jobs (task_id, payload, run_at, attempts, max_attempts, last_error)
        select
            case when g %% 3 = 0 then unknown.id else noop.id end,
            '{{}}'::json,
            case when g %% 3 = 2 then now() + interval '1 day' else now() - interval '1 hour' end,
            case when g %% 3 = 1 then 25 else 0 end,
            25,
            case when g %% 3 = 1 then 'bench: permanently failed' end
        from generate_series(1, %(rows)s::int) as g,
            (select id from {schema}._private_tasks where identifier = 'bench_unknown_task') as unknown,
            (select id from {schema}._private_tasks where identifier = 'noop') as noop
        """
    ).format(schema=name)
    await conn.execute(statement, {"rows": rows})
    await conn.execute(sql.SQL("analyze {}._private_jobs").format(name))


async def add_all(
    conn: psycopg.AsyncConnection[Any], schema: str, jobs: int, plugins: gwcore.PluginManager
) -> int:
    """Add ``jobs`` no-op jobs in batches and return the smallest id added."""
    first_id: int | None = None
    for offset in range(0, jobs, BATCH_SIZE):
        size = min(BATCH_SIZE, jobs - offset)
        specs = [gwcore.JobSpec.create("noop", {"n": offset + i}) for i in range(size)]
        added = await gwcore.add_jobs(conn, specs, schema=schema, plugins=plugins)
        if first_id is None:
            first_id = min(job.id for job in added)
    assert first_id is not None
    return first_id


async def wait_until_done(conn: psycopg.AsyncConnection[Any], schema: str, first_id: int) -> None:
    """Poll every 2 ms until no job with id >= ``first_id`` is left, through the primary key."""
    statement = sql.SQL("select exists (select 1 from {}._private_jobs where id >= %s)").format(
        sql.Identifier(schema)
    )
    while True:
        cursor = await conn.execute(statement, (first_id,))
        row = await cursor.fetchone()
        if row is not None and not row[0]:
            return
        await asyncio.sleep(0.002)


async def throughput_once(
    url: str,
    name: str,
    jobs: int,
    make_argv: Callable[[str], list[str]],
    prepare: Prepare,
    *,
    large_rows: int = 0,
) -> dict[str, Any]:
    """Run ``jobs`` no-op jobs through one worker process and return the run's figures."""
    schema = new_schema(name.split("/")[0].replace("-", "_"))
    plugins = adder_plugins()
    child: Child | None = None
    try:
        await prepare_schema(url, schema, prepare, large_rows)
        child = await Child.start(name, make_argv(schema))
        await child.next_event("ready", timeout=120)
        await asyncio.sleep(SETTLE_SECONDS)
        load = load_average()
        # NOTE: a run that cannot reach 20 jobs/s is reported as timed out, not measured.
        deadline = 60 + jobs / 20
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            started = time.perf_counter()
            first_id = await add_all(conn, schema, jobs, plugins)
            await child.next_event("ran", timeout=deadline)
            try:
                await asyncio.wait_for(wait_until_done(conn, schema, first_id), timeout=deadline)
            except TimeoutError:
                raise ChildTimeoutError(
                    f"{name} timed out: jobs were still in {schema}._private_jobs "
                    f"{deadline:.0f} s after the worker reported 'ran'"
                ) from None
            seconds = time.perf_counter() - started
        stopped = await child.stop()
        child = None
    finally:
        if child is not None:
            await child.kill(wait=False)
        await drop_schema(url, schema)
    return {
        "seconds": round(seconds, 3),
        "jobs_per_second": round(jobs / seconds, 1),
        "max_rss_mb": round(stopped["max_rss_kb"] / 1024, 1),
        "load": load,
    }


async def throughput(
    url: str,
    name: str,
    jobs: int,
    repeat: int,
    make_argv: Callable[[str], list[str]],
    prepare: Prepare,
    *,
    large_rows: int = 0,
    **extra: Any,
) -> dict[str, Any]:
    """Repeat `throughput_once` and return the median run, with every run's rate and load.

    A run that times out ends the measurement, whose figure then has ``result``
    `TIMED_OUT` and the ``reason``, because a second run would most likely time out too.
    """
    runs = []
    failures: list[str] = []
    figure: dict[str, Any] = {"measurement": name, "jobs": jobs, **extra}
    while len(runs) < repeat:
        try:
            runs.append(await throughput_once(url, name, jobs, make_argv, prepare, large_rows=large_rows))
        except ChildTimeoutError as error:
            figure.update(result=TIMED_OUT, reason=str(error))
            figure["runs_jobs_per_second"] = [run["jobs_per_second"] for run in runs]
            if failures:
                figure["retried_after"] = failures
            return figure
        except ChildError as error:
            failures.append(str(error))
            if len(failures) > MAX_RETRIES:
                raise
    rates = [run["jobs_per_second"] for run in runs]
    median = sorted(runs, key=lambda run: run["jobs_per_second"])[(len(runs) - 1) // 2]
    figure.update(median)
    figure["best_jobs_per_second"] = max(rates)
    figure["runs_jobs_per_second"] = rates
    figure["runs_load"] = [run["load"] for run in runs]
    figure["max_rss_mb"] = max(run["max_rss_mb"] for run in runs)
    if failures:
        figure["retried_after"] = failures
    return figure


async def latency(
    url: str, name: str, samples: int, make_argv: Callable[[str], list[str]], prepare: Prepare
) -> dict[str, Any]:
    """Run `latency_once`, retrying up to `MAX_RETRIES` times when the worker process exits early."""
    failures: list[str] = []
    while True:
        try:
            figure = await latency_once(url, name, samples, make_argv, prepare)
        except ChildError as error:
            failures.append(str(error))
            if len(failures) > MAX_RETRIES:
                raise
            continue
        if failures:
            figure["retried_after"] = failures
        return figure


async def latency_once(
    url: str, name: str, samples: int, make_argv: Callable[[str], list[str]], prepare: Prepare
) -> dict[str, Any]:
    """Time ``samples`` jobs, one at a time, from just before the add to the task's first line.

    After each sample the loop waits until the job's row is gone and 10 ms more, so that
    the worker is idle (waiting on LISTEN) when the next job is added. The first
    `LATENCY_WARMUP` samples are dropped.
    """
    schema = new_schema(name.split("/")[0].replace("-", "_"))
    plugins = adder_plugins()
    child: Child | None = None
    milliseconds: list[float] = []
    try:
        await prepare_schema(url, schema, prepare, 0)
        child = await Child.start(name, make_argv(schema))
        await child.next_event("ready", timeout=120)
        await asyncio.sleep(SETTLE_SECONDS)
        load = load_average()
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            for n in range(LATENCY_WARMUP + samples):
                before = time.perf_counter_ns()
                job = await gwcore.add_job(conn, "noop", {"n": n}, schema=schema, plugins=plugins)
                assert job is not None
                event = await child.next_event("started", timeout=30)
                if event["n"] != n:
                    raise ChildError(f"{name} started job n={event['n']} while job n={n} was expected")
                if n >= LATENCY_WARMUP:
                    milliseconds.append((int(event["t_ns"]) - before) / 1e6)
                await wait_until_done(conn, schema, job.id)
                await asyncio.sleep(0.01)
        await child.stop()
        child = None
    finally:
        if child is not None:
            await child.kill(wait=False)
        await drop_schema(url, schema)
    cuts = statistics.quantiles(milliseconds, n=100, method="inclusive")
    return {
        "measurement": name,
        "samples": samples,
        "min_ms": round(min(milliseconds), 2),
        "p50_ms": round(cuts[49], 2),
        "p95_ms": round(cuts[94], 2),
        "p99_ms": round(cuts[98], 2),
        "max_ms": round(max(milliseconds), 2),
        "load": load,
    }


async def enqueue(url: str, jobs: int, single_adds: int, repeat: int) -> list[dict[str, Any]]:
    """Time `gwcore.add_jobs` in batches of `BATCH_SIZE` and `gwcore.add_job` one call at a time."""
    plugins = adder_plugins()
    batched: list[float] = []
    single: list[float] = []
    load = load_average()
    for _ in range(repeat):
        schema = new_schema("enqueue")
        try:
            await prepare_schema(url, schema, "gwcore", 0)
            async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
                started = time.perf_counter()
                await add_all(conn, schema, jobs, plugins)
                batched.append(jobs / (time.perf_counter() - started))
                started = time.perf_counter()
                for n in range(single_adds):
                    await gwcore.add_job(conn, "noop", {"n": n}, schema=schema, plugins=plugins)
                single.append(single_adds / (time.perf_counter() - started))
        finally:
            await drop_schema(url, schema)
    return [
        {
            "measurement": "enqueue/add_jobs",
            "jobs": jobs,
            "batch_size": BATCH_SIZE,
            "jobs_per_second": round(statistics.median(batched), 1),
            "runs_jobs_per_second": [round(rate, 1) for rate in batched],
            "load": load,
        },
        {
            "measurement": "enqueue/add_job",
            "jobs": single_adds,
            "jobs_per_second": round(statistics.median(single), 1),
            "runs_jobs_per_second": [round(rate, 1) for rate in single],
            "load": load,
        },
    ]
