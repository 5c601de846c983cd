"""Tests of gwcore.migrate against a real PostgreSQL server."""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg
import pytest
from psycopg import conninfo, sql

from gwcore.errors import SchemaError, SchemaTooNewError, ValidationError
from gwcore.migrate import (
    MigrationResult,
    _apply_worker_migration,
    _read_revision,
    _run_migrations,
    load_migrations,
    migrate,
    quote_schema,
    worker_migrations_dir,
)
from gwcore.testing import drop_schema

ALL_MIGRATIONS = tuple(range(1, 21))
BREAKING_MIGRATIONS = {1, 3, 11, 13, 14, 16, 19}
PUBLIC_FUNCTIONS = {
    "add_job",
    "add_jobs",
    "complete_jobs",
    "permanently_fail_jobs",
    "reschedule_jobs",
    "remove_job",
    "force_unlock_workers",
}


@pytest.fixture
async def conn(gw_database_url: str) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    async with await psycopg.AsyncConnection.connect(gw_database_url, autocommit=True) as conn:
        yield conn


def database_url(url: str, dbname: str) -> str:
    """Return ``url`` pointing at database ``dbname``; a URL stays a URL, for node's pg."""
    if url.startswith(("postgresql://", "postgres://")):
        return urlsplit(url)._replace(path="/" + dbname).geturl()
    return conninfo.make_conninfo(url, dbname=dbname)


@pytest.fixture
def private_database_url(gw_database_url: str) -> Iterator[str]:
    """URL of a database of this test's own, dropped afterwards.

    NOTIFY channels are per database, so other tests' migrations cannot reach its listeners.
    """
    name = f"gw_migrate_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(gw_database_url, autocommit=True) as admin:
        admin.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
    try:
        yield database_url(gw_database_url, name)
    finally:
        with psycopg.connect(gw_database_url, autocommit=True) as admin:
            admin.execute(sql.SQL("drop database {} with (force)").format(sql.Identifier(name)))


@pytest.fixture
def schema(gw_database_url: str, gw_schema_name: str) -> Iterator[str]:
    """A schema name of this test's own; the schema is dropped afterwards."""
    yield gw_schema_name
    drop_schema(gw_database_url, gw_schema_name)


async def fetch(conn: psycopg.AsyncConnection[Any], query: sql.Composable) -> list[Any]:
    cursor = await conn.execute(query)
    return await cursor.fetchall()


async def migration_rows(conn: psycopg.AsyncConnection[Any], schema: str) -> list[Any]:
    return await fetch(
        conn,
        sql.SQL("select id, breaking, ts from {}.migrations order by id").format(sql.Identifier(schema)),
    )


async def relation_names(conn: psycopg.AsyncConnection[Any], schema: str) -> set[str]:
    rows = await fetch(
        conn,
        sql.SQL(
            "select c.relname from pg_class c join pg_namespace n on n.oid = c.relnamespace"
            " where n.nspname = {}"
        ).format(sql.Literal(schema)),
    )
    return {row[0] for row in rows}


# --- quote_schema and loading -------------------------------------------------------------


def test_quote_schema_valid_names() -> None:
    assert quote_schema("graphile_worker") == '"graphile_worker"'
    assert quote_schema('my "odd" schema') == '"my ""odd"" schema"'
    assert quote_schema("é" * 31) == '"' + "é" * 31 + '"'


@pytest.mark.parametrize(
    ("name", "fragment"),
    [("", "empty"), ("x" * 64, "64 bytes"), ("é" * 32, "64 bytes"), ("a\x00b", "NUL")],
)
def test_quote_schema_rejects_name(name: str, fragment: str) -> None:
    with pytest.raises(ValidationError) as info:
        quote_schema(name)

    assert fragment in str(info.value)
    if name:
        assert repr(name) in str(info.value)


def test_breaking_markers_match_graphile_worker() -> None:
    migrations = load_migrations(worker_migrations_dir())

    assert [m.number for m in migrations] == list(ALL_MIGRATIONS)
    assert {m.number for m in migrations if m.breaking} == BREAKING_MIGRATIONS


def test_load_migrations_rejects_gap(tmp_path: Path) -> None:
    (tmp_path / "000001.sql").write_text("select 1;")
    (tmp_path / "000003.sql").write_text("select 1;")

    with pytest.raises(SchemaError, match=r"\[1, 3\]"):
        load_migrations(tmp_path)


def test_load_migrations_missing_folder_is_empty(tmp_path: Path) -> None:
    assert load_migrations(tmp_path / "absent") == ()


# --- install and re-run -------------------------------------------------------------------


async def test_fresh_install(conn: psycopg.AsyncConnection[Any], schema: str) -> None:
    result = await migrate(conn, schema)

    assert result == MigrationResult(
        applied=ALL_MIGRATIONS, latest=20, latest_breaking=19, gwcore_applied=(1, 2), gwcore_latest=2
    )
    rows = await migration_rows(conn, schema)
    assert [row[0] for row in rows] == list(ALL_MIGRATIONS)
    assert {row[0] for row in rows if row[1]} == BREAKING_MIGRATIONS
    names = await relation_names(conn, schema)
    assert {"_private_jobs", "_private_job_queues", "_private_tasks"} <= names
    assert {"_private_known_crontabs", "migrations", "jobs", "jobs_id_seq1"} <= names
    assert {"_gwcore_migrations", "gwcore_jobs_task_fetch_index"} <= names
    assert "gwcore_jobs_fetch_index" not in names
    functions = await fetch(
        conn,
        sql.SQL(
            "select p.proname from pg_proc p join pg_namespace n on n.oid = p.pronamespace"
            " where n.nspname = {}"
        ).format(sql.Literal(schema)),
    )
    assert {row[0] for row in functions} == PUBLIC_FUNCTIONS | {"gwcore_fetch_candidates"}


async def test_fresh_install_notifies_each_migration(private_database_url: str) -> None:
    async with (
        await psycopg.AsyncConnection.connect(private_database_url, autocommit=True) as listener,
        await psycopg.AsyncConnection.connect(private_database_url, autocommit=True) as conn,
    ):
        await listener.execute('listen "worker:migrate"')

        await migrate(conn, "graphile_worker")

        payloads = [notify.payload async for notify in listener.notifies(timeout=1.0, stop_after=20)]
    assert payloads[0] == '{"migrationNumber":1,"breaking":true}'
    assert [json.loads(p) for p in payloads] == [
        {"migrationNumber": n, "breaking": n in BREAKING_MIGRATIONS} for n in ALL_MIGRATIONS
    ]


async def test_rerun_is_noop(conn: psycopg.AsyncConnection[Any], schema: str) -> None:
    await migrate(conn, schema)
    before = await migration_rows(conn, schema)

    result = await migrate(conn, schema)

    assert result.applied == ()
    assert result.latest == 20
    assert await migration_rows(conn, schema) == before


async def test_connection_left_as_found(gw_database_url: str, schema: str) -> None:
    async with await psycopg.AsyncConnection.connect(gw_database_url) as conn:
        assert conn.autocommit is False

        await migrate(conn, schema)

        assert conn.autocommit is False
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        locks = await fetch(
            conn,
            sql.SQL("select count(*) from pg_locks where locktype = 'advisory' and pid = pg_backend_pid()"),
        )
        await conn.rollback()
    assert locks == [(0,)]


async def test_connection_in_transaction_rejected(gw_database_url: str, schema: str) -> None:
    async with await psycopg.AsyncConnection.connect(gw_database_url) as conn:
        await conn.execute("select 1")

        with pytest.raises(ValidationError, match="inside a transaction"):
            await migrate(conn, schema)


async def test_odd_schema_name(gw_database_url: str, conn: psycopg.AsyncConnection[Any]) -> None:
    schema = f'my "odd" schema {uuid.uuid4().hex[:8]}'
    try:
        result = await migrate(conn, schema)
        quoted = sql.Identifier(schema)
        job = await fetch(conn, sql.SQL("select key from {}.add_job('odd', job_key => 'k')").format(quoted))
        jobs = await fetch(
            conn,
            sql.SQL(
                "select count(*) from {}.add_jobs(array[row('bulk', null, 'q', null, null,"
                " null, null, null)::{}.job_spec])"
            ).format(quoted, quoted),
        )
        view = await fetch(conn, sql.SQL("select task_identifier from {}.jobs order by id").format(quoted))
        removed = await fetch(conn, sql.SQL("select key from {}.remove_job('k')").format(quoted))
    finally:
        drop_schema(gw_database_url, schema)

    assert result.applied == ALL_MIGRATIONS
    assert job == [("k",)]
    assert jobs == [(1,)]
    assert view == [("odd",), ("bulk",)]
    assert removed == [("k",)]


async def test_dollar_quote_schema_rejected(conn: psycopg.AsyncConnection[Any]) -> None:
    with pytest.raises(ValidationError, match=r"\$\$"):
        await migrate(conn, "bad$$name")


# --- concurrency --------------------------------------------------------------------------


async def test_concurrent_migrators(gw_database_url: str, schema: str) -> None:
    async def run_one() -> MigrationResult:
        async with await psycopg.AsyncConnection.connect(gw_database_url, autocommit=True) as c:
            return await migrate(c, schema)

    results = await asyncio.gather(*(run_one() for _ in range(4)))

    applied = sorted(n for result in results for n in result.applied)
    assert applied == list(ALL_MIGRATIONS)
    assert all(result.latest == 20 for result in results)
    async with await psycopg.AsyncConnection.connect(gw_database_url) as c:
        rows = await migration_rows(c, schema)
    assert [row[0] for row in rows] == list(ALL_MIGRATIONS)


async def test_concurrent_processes(gw_database_url: str, schema: str) -> None:
    script = (
        "import asyncio, sys, psycopg\n"
        "from gwcore.migrate import migrate\n"
        "async def main():\n"
        "    async with await psycopg.AsyncConnection.connect(sys.argv[1], autocommit=True) as c:\n"
        "        print(len((await migrate(c, sys.argv[2])).applied))\n"
        "asyncio.run(main())\n"
    )
    processes = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            script,
            gw_database_url,
            schema,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for _ in range(2)
    ]
    outputs = await asyncio.wait_for(
        asyncio.gather(*(process.communicate() for process in processes)), timeout=60
    )

    assert [process.returncode for process in processes] == [0, 0], outputs
    assert sorted(int(out.decode()) for out, _ in outputs) == [0, 20]
    async with await psycopg.AsyncConnection.connect(gw_database_url) as c:
        rows = await migration_rows(c, schema)
    assert [row[0] for row in rows] == list(ALL_MIGRATIONS)


# --- newer schemas ------------------------------------------------------------------------


async def test_newer_breaking_migration_raises(conn: psycopg.AsyncConnection[Any], schema: str) -> None:
    await migrate(conn, schema)
    await conn.execute(
        sql.SQL("insert into {}.migrations (id, breaking) values (21, true)").format(sql.Identifier(schema))
    )

    with pytest.raises(SchemaTooNewError) as info:
        await migrate(conn, schema)

    assert info.value.latest_breaking == 21
    assert info.value.latest_migration == 21
    assert info.value.known == 20
    assert "21" in str(info.value)
    assert "20" in str(info.value)
    assert "upgrade gwcore" in str(info.value)


async def test_newer_compatible_migration_warns(
    conn: psycopg.AsyncConnection[Any], schema: str, caplog: pytest.LogCaptureFixture
) -> None:
    await migrate(conn, schema)
    await conn.execute(
        sql.SQL("insert into {}.migrations (id, breaking) values (21, false)").format(sql.Identifier(schema))
    )

    with caplog.at_level(logging.WARNING, logger="gwcore.migrate"):
        result = await migrate(conn, schema)

    assert result.latest == 21
    assert result.applied == ()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "21" in warnings[0].getMessage()


async def test_missing_breaking_column_added(conn: psycopg.AsyncConnection[Any], schema: str) -> None:
    await migrate(conn, schema)
    await conn.execute(
        sql.SQL("alter table {}.migrations drop column breaking").format(sql.Identifier(schema))
    )

    result = await migrate(conn, schema)

    assert result.applied == ()
    assert result.latest_breaking == 19
    rows = await migration_rows(conn, schema)
    assert {row[0] for row in rows if row[1]} == BREAKING_MIGRATIONS


# --- migration 11 with locked jobs --------------------------------------------------------


async def test_migration_11_locked_jobs_message(conn: psycopg.AsyncConnection[Any], schema: str) -> None:
    series = load_migrations(worker_migrations_dir())
    await _read_revision(conn, schema, series)
    for migration in series[:10]:
        await _apply_worker_migration(conn, schema, quote_schema(schema), migration)
    await conn.execute(sql.SQL("select {}.add_job('locked')").format(sql.Identifier(schema)))
    await conn.execute(
        sql.SQL("update {}.jobs set locked_at = now(), locked_by = 'worker-1'").format(sql.Identifier(schema))
    )

    with pytest.raises(SchemaError, match="migration 11") as info:
        await migrate(conn, schema)

    assert isinstance(info.value.__cause__, psycopg.errors.DivisionByZero)
    assert "Stop every worker" in str(info.value)
    rows = await migration_rows(conn, schema)
    assert [row[0] for row in rows] == list(range(1, 11))
    assert "job_queues_legacy" not in await relation_names(conn, schema)


# --- gwcore's own series ------------------------------------------------------------------


async def test_own_series_applied_once(
    conn: psycopg.AsyncConnection[Any], schema: str, tmp_path: Path
) -> None:
    (tmp_path / "000001.sql").write_text("create table :GW_SCHEMA.own_one (id int);")
    (tmp_path / "000002.sql").write_text("create table :GW_SCHEMA.own_two (id int);")

    first = await _run_migrations(conn, schema, own_migrations_dir=tmp_path)
    second = await _run_migrations(conn, schema, own_migrations_dir=tmp_path)

    assert first.applied == ALL_MIGRATIONS
    assert first.gwcore_applied == (1, 2)
    assert first.gwcore_latest == 2
    assert second.gwcore_applied == ()
    assert second.gwcore_latest == 2
    names = await relation_names(conn, schema)
    assert {"own_one", "own_two", "_gwcore_migrations"} <= names
    rows = await fetch(
        conn,
        sql.SQL("select id from {}._gwcore_migrations order by id").format(sql.Identifier(schema)),
    )
    assert rows == [(1,), (2,)]
    graphile_rows = await migration_rows(conn, schema)
    assert [row[0] for row in graphile_rows] == list(ALL_MIGRATIONS)


async def test_own_series_failure_rolls_back(
    conn: psycopg.AsyncConnection[Any], schema: str, tmp_path: Path
) -> None:
    (tmp_path / "000001.sql").write_text("create table :GW_SCHEMA.own_one (id int);")
    (tmp_path / "000002.sql").write_text(
        "create table :GW_SCHEMA.own_two (id int); select no_such_function();"
    )

    with pytest.raises(psycopg.errors.UndefinedFunction) as info:
        await _run_migrations(conn, schema, own_migrations_dir=tmp_path)

    assert any("gwcore migration 2" in note for note in info.value.__notes__)
    names = await relation_names(conn, schema)
    assert "own_one" in names
    assert "own_two" not in names
    rows = await fetch(
        conn,
        sql.SQL("select id from {}._gwcore_migrations").format(sql.Identifier(schema)),
    )
    assert rows == [(1,)]
