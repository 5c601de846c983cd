"""Worker processes for the benchmark, the JSON-line protocol they speak, and schema helpers."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

BENCH_DIR = Path(__file__).resolve().parent
GRAPHILE_VERSION = "0.18.0"
GRAPHILE_DIR = Path.home() / ".cache" / "gwcore" / "graphile-worker" / GRAPHILE_VERSION
# The batched settings, the same for gwcore and graphile-worker (bench/graphile/worker.mjs): a local
# queue of this many jobs, and completions and failures written in batches with a delay of 0 s.
LOCAL_QUEUE_SIZE = 1000
BATCH_DELAY = 0


class ChildError(Exception):
    """A worker process exited, or did not report an event in time."""


class ChildTimeoutError(ChildError):
    """A worker process is still running but did not report an event in time."""


class Child:
    """A worker process started by the benchmark, read one JSON event a line."""

    def __init__(self, name: str, process: asyncio.subprocess.Process) -> None:
        self.name = name
        self.process = process

    @classmethod
    async def start(cls, name: str, argv: list[str]) -> Child:
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            limit=1 << 20,
        )
        return cls(name, process)

    async def next_event(self, expected: str, timeout: float) -> dict[str, Any]:  # noqa: ASYNC109
        """Return the next event named ``expected``, skipping others.

        Raises `ChildError` when the child exits, and `ChildTimeoutError` when the wait times out.
        """
        assert self.process.stdout is not None
        while True:
            try:
                line = await asyncio.wait_for(self.process.stdout.readline(), timeout)
            except TimeoutError:
                raise ChildTimeoutError(
                    f"{self.name} reported no {expected!r} event within {timeout:.0f} s"
                ) from None
            if not line:
                code = await self.process.wait()
                raise ChildError(f"{self.name} exited with code {code} before reporting {expected!r}")
            event = json.loads(line)
            if event.get("event") == "exited":
                raise ChildError(f"{self.name} exited before reporting {expected!r}: {event.get('reason')}")
            if event.get("event") == expected:
                return event

    async def stop(self, timeout: float = 60) -> dict[str, Any]:  # noqa: ASYNC109
        """Ask the process to stop and return its ``stopped`` event (with ``max_rss_kb``)."""
        assert self.process.stdin is not None
        self.process.stdin.write(b"stop\n")
        await self.process.stdin.drain()
        try:
            return await self.next_event("stopped", timeout)
        finally:
            await self.kill()

    async def kill(self, *, wait: bool = True) -> None:
        """Wait up to 5 s for the process to exit (at once unless ``wait``), then kill it."""
        if self.process.returncode is None and not wait:
            self.process.kill()
        if self.process.returncode is None:
            try:
                await asyncio.wait_for(self.process.wait(), 5)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()


def gwcore_worker_argv(
    url: str,
    schema: str,
    concurrency: int,
    jobs: int,
    *,
    observers: str | None = None,
    report_starts: bool = False,
    batched: bool = False,
) -> list[str]:
    """Return the command line of a gwcore worker, with the batched settings when ``batched``."""
    argv = [sys.executable, str(BENCH_DIR / "gwcore_worker.py"), "--url", url, "--schema", schema]
    argv += ["--concurrency", str(concurrency), "--jobs", str(jobs)]
    if observers:
        argv += ["--observers", observers]
    if report_starts:
        argv.append("--report-starts")
    if batched:
        argv += ["--local-queue-size", str(LOCAL_QUEUE_SIZE)]
        argv += ["--complete-batch-delay", str(BATCH_DELAY), "--fail-batch-delay", str(BATCH_DELAY)]
    return argv


def sql_floor_argv(url: str, schema: str, connections: int, jobs: int) -> list[str]:
    """Return the command line of the SQL floor, fetching `LOCAL_QUEUE_SIZE` jobs per statement."""
    argv = [sys.executable, str(BENCH_DIR / "sql_floor.py"), "--url", url, "--schema", schema]
    argv += ["--concurrency", str(connections), "--jobs", str(jobs)]
    return [*argv, "--batch-size", str(LOCAL_QUEUE_SIZE)]


def graphile_worker_argv(
    url: str,
    schema: str,
    concurrency: int,
    jobs: int,
    *,
    batched: bool = False,
    report_starts: bool = False,
    migrate_only: bool = False,
) -> list[str]:
    options = {
        "migrateOnly": migrate_only,
        "modulesDir": str(GRAPHILE_DIR / "node_modules"),
        "connectionString": url,
        "schema": schema,
        "concurrency": concurrency,
        "jobs": jobs,
        "batched": batched,
        "localQueueSize": LOCAL_QUEUE_SIZE,
        "reportStarts": report_starts,
    }
    return ["node", str(BENCH_DIR / "graphile" / "worker.mjs"), json.dumps(options)]


def ensure_graphile_worker() -> str | None:
    """Install graphile-worker into `GRAPHILE_DIR` unless it is there.

    Returns the reason it is unavailable, or None when it is ready.
    """
    if (GRAPHILE_DIR / "node_modules" / "graphile-worker" / "package.json").exists():
        return None
    if shutil.which("node") is None or shutil.which("npm") is None:
        return "node or npm is not installed"
    GRAPHILE_DIR.mkdir(parents=True, exist_ok=True)
    command = ["npm", "install", "--prefix", str(GRAPHILE_DIR), f"graphile-worker@{GRAPHILE_VERSION}"]
    print(f"installing graphile-worker {GRAPHILE_VERSION}: {' '.join(command)}", file=sys.stderr)
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        return f"npm install failed with code {result.returncode}: {result.stderr.strip()[-500:]}"
    return None


def node_version() -> str | None:
    if shutil.which("node") is None:
        return None
    return subprocess.run(["node", "--version"], capture_output=True, text=True, check=False).stdout.strip()


def load_average() -> float:
    return round(os.getloadavg()[0], 2)


async def drop_schema(url: str, schema: str) -> None:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await conn.execute(sql.SQL("drop schema if exists {} cascade").format(sql.Identifier(schema)))
