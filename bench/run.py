"""Benchmark gwcore against graphile-worker 0.18 and a SQL floor on the same database.

    .venv/bin/python bench/run.py [--jobs N] [--concurrency C] [--repeat R] [--floor-connections F]
                                  [--only NAME,...] [--no-graphile]

Prints one JSON line per measurement, then a summary table with the ratios of
gwcore to graphile-worker and to the SQL floor measured in the same run, and
the targets. Uses DATABASE_URL, or by default the database gwcore_bench on the
local server, which it creates when missing; every run works in a schema of its
own that it drops afterwards. docs/performance.md describes each measurement
and the figures of a full run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import platform
import sys
from typing import Any

import measurements
import psycopg
from child import (
    LOCAL_QUEUE_SIZE,
    ensure_graphile_worker,
    graphile_worker_argv,
    gwcore_worker_argv,
    load_average,
    node_version,
    sql_floor_argv,
)
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

# A database of its own: graphile-worker stops when any schema in its database gets a breaking
# migration, which a test suite that creates schemas does many times a second.
DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/gwcore_bench"
MEASUREMENTS = ("throughput", "latency", "floor", "graphile", "enqueue", "hooks", "memory", "large")
NOT_AVAILABLE = "not available"
# From this many jobs on, --repeat defaults to 1 instead of 3. An estimate from the figures in
# docs/performance.md (2 cores, under load): at 100,000 jobs one run of each throughput figure
# takes about 16 minutes in all, and latency and enqueue 2 more, so 3 runs each would take about 50.
SINGLE_RUN_JOBS = 50_000


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--jobs", type=int, default=100_000, help="no-op jobs per throughput run (default: 100000)"
    )
    parser.add_argument("--concurrency", type=int, default=10, help="worker slots (default: 10)")
    parser.add_argument(
        "--repeat",
        type=int,
        help=f"runs per throughput figure; the median is kept (default: 3 under {SINGLE_RUN_JOBS} jobs, "
        f"1 from {SINGLE_RUN_JOBS} jobs up)",
    )
    parser.add_argument(
        "--floor-connections",
        type=int,
        default=2,
        help=f"SQL floor connections, each fetching {LOCAL_QUEUE_SIZE} jobs per statement (default: 2)",
    )
    parser.add_argument(
        "--latency-samples", type=int, default=1000, help="sequential latency samples (default: 1000)"
    )
    parser.add_argument(
        "--single-adds", type=int, default=1000, help="add_job calls timed one at a time (default: 1000)"
    )
    parser.add_argument(
        "--large-rows",
        type=int,
        default=1_000_000,
        help="unrunnable rows for the large-table run (default: 1000000)",
    )
    parser.add_argument(
        "--only", default=",".join(MEASUREMENTS), help=f"comma-separated subset of: {', '.join(MEASUREMENTS)}"
    )
    parser.add_argument(
        "--graphile",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="measure graphile-worker 0.18 too",
    )
    args = parser.parse_args()
    selected = {name.strip() for name in args.only.split(",") if name.strip()}
    unknown = selected - set(MEASUREMENTS)
    if unknown:
        parser.error(
            f"--only names unknown measurement(s) {', '.join(sorted(unknown))}; "
            f"choose from {', '.join(MEASUREMENTS)}"
        )
    if args.repeat is None:
        args.repeat = 1 if args.jobs >= SINGLE_RUN_JOBS else 3
    for option in ("jobs", "concurrency", "repeat", "floor_connections", "latency_samples", "single_adds"):
        if getattr(args, option) < 1:
            parser.error(f"--{option.replace('_', '-')} is {getattr(args, option)}; it must be at least 1")
    if args.latency_samples < 2:
        parser.error("--latency-samples must be at least 2 to compute percentiles")
    if args.large_rows < 0:
        parser.error(f"--large-rows is {args.large_rows}; it must be 0 or more")
    args.selected = selected
    return args


def emit(figure: dict[str, Any], figures: dict[str, dict[str, Any]]) -> None:
    print(json.dumps(figure), flush=True)
    figures[figure["measurement"]] = figure


async def ensure_database(url: str) -> None:
    """Create the database that ``url`` names when it does not exist yet."""
    try:
        conn = await psycopg.AsyncConnection.connect(url, autocommit=True)
    except psycopg.OperationalError as error:
        if "does not exist" not in str(error):
            raise
        params = conninfo_to_dict(url)
        name = params["dbname"]
        params["dbname"] = "postgres"
        async with await psycopg.AsyncConnection.connect(make_conninfo(**params), autocommit=True) as admin:
            await admin.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
        print(f"created database {name} for the benchmark", file=sys.stderr)
        return
    await conn.close()


async def machine(url: str) -> dict[str, Any]:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        cursor = await conn.execute("show server_version")
        row = await cursor.fetchone()
    return {
        "measurement": "machine",
        "cores": os.cpu_count(),
        "postgresql": row[0] if row else None,
        "python": platform.python_version(),
        "node": node_version(),
        "load_at_start": load_average(),
    }


async def run(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    url = os.environ.get("DATABASE_URL", DEFAULT_URL)
    await ensure_database(url)
    jobs, concurrency, repeat = args.jobs, args.concurrency, args.repeat
    selected = args.selected
    figures: dict[str, dict[str, Any]] = {}
    emit(await machine(url), figures)

    def gwcore_argv(observers: str | None = None, *, batched: bool = False) -> Any:
        return lambda schema: gwcore_worker_argv(
            url, schema, concurrency, jobs, observers=observers, batched=batched
        )

    if selected & {"throughput", "hooks", "memory", "large"}:
        emit(
            await measurements.throughput(
                url, "throughput/gwcore", jobs, repeat, gwcore_argv(), "gwcore", concurrency=concurrency
            ),
            figures,
        )
    if selected & {"throughput", "hooks", "large"}:
        emit(
            await measurements.throughput(
                url,
                "throughput/gwcore-batched",
                jobs,
                repeat,
                gwcore_argv(batched=True),
                "gwcore",
                concurrency=concurrency,
                local_queue_size=LOCAL_QUEUE_SIZE,
            ),
            figures,
        )

    graphile_problem = (
        ensure_graphile_worker() if args.graphile and selected & {"graphile", "latency"} else None
    )
    run_graphile = args.graphile and graphile_problem is None
    if graphile_problem:
        emit({"measurement": "graphile-worker", "result": NOT_AVAILABLE, "reason": graphile_problem}, figures)

    if "graphile" in selected and run_graphile:
        for batched, name in (
            (False, "throughput/graphile-worker"),
            (True, "throughput/graphile-worker-batched"),
        ):
            emit(
                await measurements.throughput(
                    url,
                    name,
                    jobs,
                    repeat,
                    lambda schema, batched=batched: graphile_worker_argv(
                        url, schema, concurrency, jobs, batched=batched
                    ),
                    "graphile",
                    concurrency=concurrency,
                ),
                figures,
            )

    if "floor" in selected:
        emit(
            await measurements.throughput(
                url,
                "throughput/sql-floor",
                jobs,
                repeat,
                lambda schema: sql_floor_argv(url, schema, args.floor_connections, jobs),
                "floor",
                connections=args.floor_connections,
                batch_size=LOCAL_QUEUE_SIZE,
            ),
            figures,
        )

    if "latency" in selected:
        samples = args.latency_samples
        emit(
            await measurements.latency(
                url,
                "latency/gwcore",
                samples,
                lambda schema: gwcore_worker_argv(url, schema, concurrency, 0, report_starts=True),
                "gwcore",
            ),
            figures,
        )
        emit(
            await measurements.latency(
                url,
                "latency/gwcore-batched",
                samples,
                lambda schema: gwcore_worker_argv(
                    url, schema, concurrency, 0, report_starts=True, batched=True
                ),
                "gwcore",
            ),
            figures,
        )
        if run_graphile:
            emit(
                await measurements.latency(
                    url,
                    "latency/graphile-worker",
                    samples,
                    lambda schema: graphile_worker_argv(url, schema, concurrency, 0, report_starts=True),
                    "graphile",
                ),
                figures,
            )

    if "enqueue" in selected:
        for figure in await measurements.enqueue(url, jobs, args.single_adds, repeat):
            emit(figure, figures)

    if "hooks" in selected:
        # With defaults, each job waits for two commits, so the hooks' CPU cost barely shows.
        # The batched settings make the worker CPU-bound, and there it shows in full.
        for batched, suffix in ((False, ""), (True, "-batched")):
            for kind in ("sync", "async"):
                emit(
                    await measurements.throughput(
                        url,
                        f"hooks/{kind}-observers{suffix}",
                        jobs,
                        repeat,
                        gwcore_argv(kind, batched=batched),
                        "gwcore",
                        observers=10,
                    ),
                    figures,
                )

    if "large" in selected:
        for batched, name in ((False, "large-table/gwcore"), (True, "large-table/gwcore-batched")):
            emit(
                await measurements.throughput(
                    url,
                    name,
                    jobs,
                    repeat,
                    gwcore_argv(batched=batched),
                    "gwcore",
                    large_rows=args.large_rows,
                    unrunnable_rows=args.large_rows,
                ),
                figures,
            )
    return figures


def rate(figures: dict[str, dict[str, Any]], name: str) -> float | None:
    figure = figures.get(name)
    return figure.get("jobs_per_second") if figure else None


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return numerator / denominator


def targets(figures: dict[str, dict[str, Any]]) -> list[tuple[str, str, str, str]]:
    """Return (target, measured, goal, verdict) rows; a figure that was not measured gives "n/a"."""
    gwcore = rate(figures, "throughput/gwcore")
    gwcore_batched = rate(figures, "throughput/gwcore-batched")
    latency_gw = figures.get("latency/gwcore")
    latency_graphile = figures.get("latency/graphile-worker")
    rows: list[tuple[str, float | None, float, bool]] = [
        (
            "batched / graphile-worker batched",
            ratio(gwcore_batched, rate(figures, "throughput/graphile-worker-batched")),
            1.0,
            True,
        ),
        ("batched / SQL floor", ratio(gwcore_batched, rate(figures, "throughput/sql-floor")), 0.6, True),
        (
            "defaults / graphile-worker defaults",
            ratio(gwcore, rate(figures, "throughput/graphile-worker")),
            1.0,
            True,
        ),
        ("defaults / SQL floor (no target)", ratio(gwcore, rate(figures, "throughput/sql-floor")), 0.0, True),
    ]
    for key in ("p50_ms", "p99_ms"):
        mine = latency_gw[key] if latency_gw else None
        theirs = latency_graphile[key] if latency_graphile else None
        rows.append((f"latency {key[:3]} / graphile-worker", ratio(mine, theirs), 1.0, False))
    for suffix, baseline in (("", gwcore), ("-batched", gwcore_batched)):
        for kind in ("sync", "async"):
            retained = ratio(rate(figures, f"hooks/{kind}-observers{suffix}"), baseline)
            label = f"10 {kind} observers{' (batched)' if suffix else ''}: throughput lost"
            rows.append((label, None if retained is None else 1 - retained, 0.15, False))
    rss = figures.get("throughput/gwcore", {}).get("max_rss_mb")
    rows.append(("peak RSS of the worker (MB)", rss, 80.0, False))
    rows.append(("large table / empty", ratio(rate(figures, "large-table/gwcore"), gwcore), 0.8, True))
    rows.append(
        (
            "large table / empty (batched)",
            ratio(rate(figures, "large-table/gwcore-batched"), gwcore_batched),
            0.8,
            True,
        )
    )

    table = []
    for name, value, goal, at_least in rows:
        measured, verdict = "n/a", "n/a"
        if value is not None:
            measured = _format_figure(name, value)
            reached = value >= goal if at_least else value <= goal
            verdict = "met" if reached else "missed"
        goal_text = ("<= " if not at_least else ">= ") + _format_figure(name, goal)
        if "no target" in name:
            goal_text, verdict = "-", "-"
        table.append((name, measured, goal_text, verdict))
    return table


def _format_figure(name: str, value: float) -> str:
    """Format a measured value or a goal: a percentage of throughput lost, megabytes, or a ratio."""
    if "lost" in name:
        return f"{value:.0%}"
    if "MB" in name:
        return f"{value:g}" if value == int(value) else f"{value:.2f}"
    return f"{value:.2f}x"


def print_summary(figures: dict[str, dict[str, Any]]) -> None:
    print()
    machine_figure = figures.get("machine", {})
    print(
        f"machine: {machine_figure.get('cores')} cores, PostgreSQL {machine_figure.get('postgresql')}, "
        f"Python {machine_figure.get('python')}, Node {machine_figure.get('node')}, "
        f"load at start {machine_figure.get('load_at_start')}, load at end {load_average()}"
    )
    print()
    print(f"{'throughput':<36} {'jobs':>7} {'jobs/s':>9} {'best':>9} {'RSS MB':>7}  load per run")
    for name, figure in figures.items():
        if not name.startswith(("throughput/", "hooks/", "large-table/")) or "jobs_per_second" not in figure:
            if figure.get("result") in (NOT_AVAILABLE, measurements.TIMED_OUT):
                print(f"{name:<36} {figure['result']}: {figure.get('reason')}")
            continue
        print(
            f"{name:<36} {figure['jobs']:>7} {figure['jobs_per_second']:>9.1f} "
            f"{figure['best_jobs_per_second']:>9.1f} {figure['max_rss_mb']:>7.1f}  {figure['runs_load']}"
        )
    enqueue = [figure for name, figure in figures.items() if name.startswith("enqueue/")]
    if enqueue:
        print()
        print(f"{'enqueue':<36} {'jobs':>7} {'jobs/s':>9}")
        for figure in enqueue:
            print(f"{figure['measurement']:<36} {figure['jobs']:>7} {figure['jobs_per_second']:>9.1f}")
    latency = [figure for name, figure in figures.items() if name.startswith("latency/")]
    if latency:
        print()
        print(f"{'latency (ms)':<36} {'samples':>7} {'min':>7} {'p50':>7} {'p95':>7} {'p99':>7} {'max':>7}")
        for figure in latency:
            print(
                f"{figure['measurement']:<36} {figure['samples']:>7} {figure['min_ms']:>7.2f} "
                f"{figure['p50_ms']:>7.2f} {figure['p95_ms']:>7.2f} {figure['p99_ms']:>7.2f} "
                f"{figure['max_ms']:>7.2f}"
            )
    print()
    print(f"{'ratio or target':<48} {'measured':>9} {'target':>9}  verdict")
    for name, measured, goal, verdict in targets(figures):
        print(f"{name:<48} {measured:>9} {goal:>9}  {verdict}")


def main() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.WARNING)
    figures = asyncio.run(run(args))
    print_summary(figures)


if __name__ == "__main__":
    sys.exit(main())
