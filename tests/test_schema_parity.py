"""Compare the schema gwcore's migrations build with the one graphile-worker builds.

Needs ``node`` and ``npm``. graphile-worker is installed once per machine into
``~/.cache/gwcore/graphile-worker/<version>``. The tests compare catalog contents (tables,
columns, indexes, constraints, function signatures, views, types, sequences, triggers, row
level security) and, for the final schema, what the SQL functions return and notify.
"""

from __future__ import annotations

import asyncio
import difflib
import json
import re
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg
import pytest
from psycopg import conninfo, sql

from gwcore.migrate import (
    _bootstrap,
    _schema_sql,
    load_migrations,
    migrate,
    quote_schema,
    worker_migrations_dir,
)
from gwcore.testing import drop_schema, new_schema_name

pytestmark = pytest.mark.skipif(
    shutil.which("node") is None or shutil.which("npm") is None,
    reason="node and npm are not on PATH, so graphile-worker cannot run",
)

REFERENCE_VERSION = "0.18.0"
GWCORE_PREFIX = "gwcore_"
CACHE_ROOT = Path.home() / ".cache" / "gwcore" / "graphile-worker"
# Installs that a machine image may already contain; copied instead of downloaded.
SEED_ROOT = Path("/root/.cache/gwcore-ref")
NPM_TIMEOUT_SECONDS = 300
NODE_TIMEOUT_SECONDS = 60


# --- graphile-worker installs -------------------------------------------------------------


def graphile_worker_dir(version: str) -> Path:
    """Return the folder of an npm install of graphile-worker ``version``, installing it once."""
    folder = CACHE_ROOT / version
    if (folder / "node_modules" / ".bin" / "graphile-worker").exists():
        return folder

    seed = SEED_ROOT / version
    if (seed / "node_modules" / ".bin" / "graphile-worker").exists():
        shutil.copytree(seed, folder, symlinks=True, dirs_exist_ok=True)
        return folder

    folder.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["npm", "install", "--no-audit", "--no-fund", "--prefix", str(folder), f"graphile-worker@{version}"],
        check=True,
        capture_output=True,
        timeout=NPM_TIMEOUT_SECONDS,
    )
    return folder


def run_graphile_worker(version: str, url: str, schema: str, cwd: Path) -> None:
    """Install or upgrade ``schema`` with graphile-worker ``version``'s CLI."""
    binary = graphile_worker_dir(version) / "node_modules" / ".bin" / "graphile-worker"
    result = subprocess.run(
        [str(binary), "-c", url, "--schema", schema, "--schema-only"],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=NODE_TIMEOUT_SECONDS,
    )
    assert result.returncode == 0, f"graphile-worker {version} failed:\n{result.stderr}"


def run_gwcore(url: str, schema: str) -> None:
    async def run() -> None:
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            await migrate(conn, schema)

    asyncio.run(run())


# --- catalog snapshot ---------------------------------------------------------------------

CATALOG_QUERIES: dict[str, str] = {
    "relations": """
        select c.relname, c.relkind, c.relrowsecurity, c.relforcerowsecurity, c.relpersistence
          from pg_class c join pg_namespace n on n.oid = c.relnamespace
         where n.nspname = %(schema)s
         order by 1
    """,
    "columns": """
        select c.relname, a.attnum, a.attname, format_type(a.atttypid, a.atttypmod),
               pg_get_expr(d.adbin, d.adrelid), a.attnotnull, a.attgenerated, a.attidentity,
               a.attcollation::regcollation::text
          from pg_attribute a
          join pg_class c on c.oid = a.attrelid
          join pg_namespace n on n.oid = c.relnamespace
          left join pg_attrdef d on d.adrelid = a.attrelid and d.adnum = a.attnum
         where n.nspname = %(schema)s and c.relkind in ('r', 'v', 'c', 'p')
           and a.attnum > 0 and not a.attisdropped
         order by 1, 2
    """,
    "indexes": """
        select c.relname, pg_get_indexdef(i.indexrelid)
          from pg_index i
          join pg_class c on c.oid = i.indexrelid
          join pg_namespace n on n.oid = c.relnamespace
         where n.nspname = %(schema)s
         order by 1
    """,
    "constraints": """
        select t.relname, o.conname, o.contype, pg_get_constraintdef(o.oid), o.condeferrable
          from pg_constraint o
          join pg_class t on t.oid = o.conrelid
          join pg_namespace n on n.oid = t.relnamespace
         where n.nspname = %(schema)s
         order by 1, 2
    """,
    "functions": """
        select p.proname, pg_get_function_identity_arguments(p.oid),
               pg_get_function_arguments(p.oid), pg_get_function_result(p.oid), l.lanname,
               p.provolatile, p.proisstrict, p.prosecdef, p.proretset, p.proleakproof,
               p.proparallel, p.proconfig
          from pg_proc p
          join pg_namespace n on n.oid = p.pronamespace
          join pg_language l on l.oid = p.prolang
         where n.nspname = %(schema)s
         order by 1, 2
    """,
    "views": """
        select c.relname, pg_get_viewdef(c.oid)
          from pg_class c join pg_namespace n on n.oid = c.relnamespace
         where n.nspname = %(schema)s and c.relkind = 'v'
         order by 1
    """,
    "types": """
        select t.typname, t.typtype, t.typcategory
          from pg_type t join pg_namespace n on n.oid = t.typnamespace
         where n.nspname = %(schema)s
         order by 1
    """,
    "sequences": """
        select c.relname, format_type(s.seqtypid, null), s.seqstart, s.seqincrement,
               s.seqmax, s.seqmin, s.seqcache, s.seqcycle, owner.relname, a.attname, d.deptype
          from pg_sequence s
          join pg_class c on c.oid = s.seqrelid
          join pg_namespace n on n.oid = c.relnamespace
          left join pg_depend d
            on d.objid = c.oid and d.classid = 'pg_class'::regclass
           and d.refclassid = 'pg_class'::regclass and d.deptype in ('a', 'i')
          left join pg_class owner on owner.oid = d.refobjid
          left join pg_attribute a on a.attrelid = d.refobjid and a.attnum = d.refobjsubid
         where n.nspname = %(schema)s
         order by 1
    """,
    "triggers": """
        select c.relname, t.tgname, pg_get_triggerdef(t.oid)
          from pg_trigger t
          join pg_class c on c.oid = t.tgrelid
          join pg_namespace n on n.oid = c.relnamespace
         where n.nspname = %(schema)s and not t.tgisinternal
         order by 1, 2
    """,
    "policies": """
        select c.relname, p.polname, p.polcmd, pg_get_expr(p.polqual, p.polrelid)
          from pg_policy p
          join pg_class c on c.oid = p.polrelid
          join pg_namespace n on n.oid = c.relnamespace
         where n.nspname = %(schema)s
         order by 1, 2
    """,
}


def normalise(text: str, schema: str) -> str:
    """Replace the schema name in a catalog definition with SCHEMA."""
    text = text.replace(quote_schema(schema) + ".", "SCHEMA.")
    return re.sub(rf"(?<![\w\"]){re.escape(schema)}\.", "SCHEMA.", text)


def catalog_snapshot(url: str, schema: str) -> dict[str, list[str]]:
    """Return the schema's catalog contents, one readable line per object, by category."""
    snapshot: dict[str, list[str]] = {}
    with psycopg.connect(url) as conn:
        for category, query in CATALOG_QUERIES.items():
            rows = conn.execute(query, {"schema": schema}).fetchall()
            lines = [normalise(" | ".join(map(str, row)), schema) for row in rows]
            # Objects of gwcore's own migration series are not graphile-worker's to compare.
            snapshot[category] = [line for line in lines if GWCORE_PREFIX not in line]
    return snapshot


def assert_same_schema(
    expected: dict[str, list[str]], actual: dict[str, list[str]], context: str = ""
) -> None:
    """Assert two catalog snapshots are equal, showing a unified diff per category."""
    report = []
    for category in CATALOG_QUERIES:
        if expected[category] != actual[category]:
            diff = difflib.unified_diff(
                expected[category], actual[category], "graphile-worker", "gwcore", lineterm=""
            )
            report.append(f"{category}:\n" + "\n".join(diff))
    assert not report, f"schemas differ{context}:\n\n" + "\n\n".join(report)


# --- fixtures -----------------------------------------------------------------------------


@pytest.fixture
def schema_names(gw_database_url: str) -> Iterator[list[str]]:
    """A list the test appends its schema names to; they are dropped afterwards."""
    names: list[str] = []
    yield names
    for name in names:
        drop_schema(gw_database_url, name)


def database_url(url: str, dbname: str) -> str:
    """Return ``url`` pointing at database ``dbname``; a URL stays a URL, for node's pg."""
    if url.startswith(("postgresql://", "postgres://")):
        return urlsplit(url)._replace(path="/" + dbname).geturl()
    return conninfo.make_conninfo(url, dbname=dbname)


@pytest.fixture
def private_database_url(gw_database_url: str) -> Iterator[str]:
    """URL of a database of this test's own, dropped afterwards.

    NOTIFY channels are per database, so other tests' jobs cannot reach its listeners.
    """
    name = f"gw_parity_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(gw_database_url, autocommit=True) as conn:
        conn.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
    try:
        yield database_url(gw_database_url, name)
    finally:
        with psycopg.connect(gw_database_url, autocommit=True) as conn:
            conn.execute(sql.SQL("drop database {} with (force)").format(sql.Identifier(name)))


@pytest.fixture(scope="module")
def reference_schema(gw_database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A schema that graphile-worker 0.18.0 installed."""
    schema = new_schema_name("gw_ref")
    run_graphile_worker(REFERENCE_VERSION, gw_database_url, schema, tmp_path_factory.mktemp("gw"))
    yield schema
    drop_schema(gw_database_url, schema)


# --- schema comparisons -------------------------------------------------------------------


def test_fresh_install_matches_graphile_worker(
    gw_database_url: str, reference_schema: str, schema_names: list[str]
) -> None:
    ours = new_schema_name("gw_ours")
    schema_names.append(ours)

    run_gwcore(gw_database_url, ours)

    assert_same_schema(
        catalog_snapshot(gw_database_url, reference_schema),
        catalog_snapshot(gw_database_url, ours),
    )


@pytest.mark.parametrize("old_version", ["0.16.6", "0.17.3"])
def test_takeover_matches_graphile_worker(
    gw_database_url: str,
    reference_schema: str,
    schema_names: list[str],
    tmp_path: Path,
    old_version: str,
) -> None:
    schema = new_schema_name("gw_old")
    schema_names.append(schema)
    run_graphile_worker(old_version, gw_database_url, schema, tmp_path)
    with psycopg.connect(gw_database_url, autocommit=True) as conn:
        before = conn.execute(
            sql.SQL("select max(id) from {}.migrations").format(sql.Identifier(schema))
        ).fetchone()
        conn.execute(
            sql.SQL("select {}.add_job('takeover', job_key => 'kept')").format(sql.Identifier(schema))
        )

    run_gwcore(gw_database_url, schema)

    assert before is not None
    assert before[0] == {"0.16.6": 18, "0.17.3": 19}[old_version]
    assert_same_schema(
        catalog_snapshot(gw_database_url, reference_schema),
        catalog_snapshot(gw_database_url, schema),
    )
    with psycopg.connect(gw_database_url) as conn:
        ids = conn.execute(
            sql.SQL("select id, breaking from {}.migrations order by id").format(sql.Identifier(schema))
        ).fetchall()
        kept = conn.execute(
            sql.SQL("select task_identifier from {}.jobs where key = 'kept'").format(sql.Identifier(schema))
        ).fetchall()
    assert [row[0] for row in ids] == list(range(1, 21))
    assert {row[0] for row in ids if row[1]} == {1, 3, 11, 13, 14, 16, 19}
    assert kept == [("takeover",)]


def test_each_step_matches_graphile_worker(gw_database_url: str, schema_names: list[str]) -> None:
    """After every migration K, gwcore's schema equals graphile-worker's after its K."""
    theirs_dir = graphile_worker_dir(REFERENCE_VERSION) / "node_modules" / "graphile-worker" / "sql"
    theirs = sorted(theirs_dir.glob("0*.sql"))
    ours = load_migrations(worker_migrations_dir())
    assert len(theirs) == len(ours)

    their_schema = new_schema_name("gw_step_ref")
    our_schema = new_schema_name("gw_step_ours")
    schema_names.extend([their_schema, our_schema])
    with psycopg.connect(gw_database_url, autocommit=True) as conn:
        for schema in (their_schema, our_schema):
            conn.execute(sql.SQL("create schema {}").format(sql.Identifier(schema)))

        for their_file, our_migration in zip(theirs, ours, strict=True):
            their_text = their_file.read_text().replace(":GRAPHILE_WORKER_SCHEMA", quote_schema(their_schema))
            with conn.transaction():
                conn.execute(their_text.encode())
            with conn.transaction():
                conn.execute(_schema_sql(our_migration.sql, quote_schema(our_schema)))

            assert our_migration.breaking == their_file.read_text().startswith("--! breaking-change"), (
                f"breaking marker of migration {our_migration.number}"
            )
            assert_same_schema(
                catalog_snapshot(gw_database_url, their_schema),
                catalog_snapshot(gw_database_url, our_schema),
                f" after migration {our_migration.number}",
            )


# --- function behaviour -------------------------------------------------------------------

# Each call runs in both schemas; results are compared without the timestamps that now() sets.
BEHAVIOUR_CALLS: list[str] = [
    "select * from {s}.add_job('plain')",
    "select * from {s}.add_job('queued', '{{\"a\": 1}}', queue_name => 'q1', priority => 3,"
    " flags => array['f1', 'f2'], max_attempts => 7)",
    "select * from {s}.add_job('keyed', '[1]', job_key => 'k1')",
    "select * from {s}.add_job('keyed', '[2]', job_key => 'k1')",
    "select * from {s}.add_job('keyed', job_key => 'k2', run_at => '2030-01-01T00:00:00Z')",
    "select * from {s}.add_job('keyed', job_key => 'k2', run_at => '2031-01-01T00:00:00Z',"
    " job_key_mode => 'preserve_run_at')",
    "select * from {s}.add_job('dedupe', job_key => 'k3', job_key_mode => 'unsafe_dedupe')",
    "select * from {s}.add_job('dedupe2', job_key => 'k3', job_key_mode => 'unsafe_dedupe')",
    "select * from {s}.add_job('x', job_key => 'k4', job_key_mode => 'bogus')",
    "select * from {s}.add_job(repeat('t', 129))",
    "select * from {s}.add_job('x', queue_name => repeat('q', 129))",
    "select * from {s}.add_job('x', max_attempts => 0)",
    "select * from {s}.add_job('x', job_key => '')",
    "select * from {s}.add_jobs(array[('bulk', '{{}}', 'q2', null, null, 'k5', null, null),"
    " ('bulk', null, null, null, 2, null, 1, array['f'])]::{s}.job_spec[])",
    "select * from {s}.add_jobs(array[]::{s}.job_spec[])",
    "update {s}._private_jobs set locked_at = now(), locked_by = 'w1' where key = 'k1'",
    "select * from {s}.add_job('keyed', '[3]', job_key => 'k1')",
    "select * from {s}.remove_job('k1')",
    "select * from {s}.remove_job('k5')",
    "select * from {s}.remove_job('missing')",
    "select * from {s}.reschedule_jobs(array(select id from {s}._private_jobs order by id),"
    " run_at => '2032-01-01T00:00:00Z', priority => 9, attempts => 1)",
    "select * from {s}.permanently_fail_jobs(array(select id from {s}._private_jobs"
    " where key = 'k2'), 'gave up')",
    "select {s}.force_unlock_workers(array['w1'])",
    "select * from {s}.complete_jobs(array(select id from {s}._private_jobs order by id limit 2))",
    "select * from {s}.jobs order by task_identifier, key nulls first, priority",
]

# Ids stay in: both schemas start with fresh identity sequences, so equal ids also show that
# the functions use up sequence values the same way.
VOLATILE_COLUMNS = {"created_at", "updated_at", "locked_at"}


def run_behaviour(url: str, schema: str) -> list[Any]:
    """Run BEHAVIOUR_CALLS against ``schema``; return each result or error, and the NOTIFYs."""
    outcomes: list[Any] = []
    quoted = quote_schema(schema)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute('listen "jobs:insert"')
        for call in BEHAVIOUR_CALLS:
            query = call.format(s=quoted).encode()
            try:
                cursor = conn.execute(query)
            except psycopg.Error as error:
                outcomes.append(("error", error.sqlstate, error.diag.message_primary))
            else:
                names = [column.name for column in cursor.description or []]
                rows = cursor.fetchall() if cursor.description else []
                outcomes.append(
                    [
                        {
                            name: value
                            for name, value in zip(names, row, strict=True)
                            if name not in VOLATILE_COLUMNS
                            and not (name == "run_at" and value is not None and value.year < 2030)
                        }
                        for row in rows
                    ]
                )
            for notify in conn.notifies(timeout=0.05, stop_after=None):
                payload = json.loads(notify.payload) if notify.payload else None
                assert payload is None or isinstance(payload["r"], float)
                count = None if payload is None else payload["count"]
                outcomes.append(("notify", notify.channel, count))
    return outcomes


def test_functions_behave_like_graphile_worker(private_database_url: str, tmp_path: Path) -> None:
    theirs = new_schema_name("gw_fn_ref")
    ours = new_schema_name("gw_fn_ours")
    run_graphile_worker(REFERENCE_VERSION, private_database_url, theirs, tmp_path)
    run_gwcore(private_database_url, ours)

    expected = run_behaviour(private_database_url, theirs)
    actual = run_behaviour(private_database_url, ours)

    for number, (want, got) in enumerate(zip(expected, actual, strict=True)):
        assert got == want, f"outcome {number} differs"


def test_bootstrap_migrations_table_matches(
    gw_database_url: str, reference_schema: str, schema_names: list[str]
) -> None:
    schema = f"gw_boot_{uuid.uuid4().hex[:12]}"
    schema_names.append(schema)

    async def run() -> None:
        async with await psycopg.AsyncConnection.connect(gw_database_url, autocommit=True) as conn:
            await _bootstrap(conn, schema, load_migrations(worker_migrations_dir()))

    asyncio.run(run())

    expected = catalog_snapshot(gw_database_url, reference_schema)
    actual = catalog_snapshot(gw_database_url, schema)
    for category in ("columns", "constraints", "indexes"):
        assert [line for line in actual[category] if line.startswith("migrations")] == [
            line for line in expected[category] if line.startswith("migrations")
        ]
