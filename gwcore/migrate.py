"""Install and upgrade gwcore's database schema.

Two series of numbered SQL migrations are applied, in order:

* ``gwcore/migrations/NNNNNN.sql`` has the same effect, migration by migration, as
  graphile-worker's own migrations. Applied ones are recorded in ``<schema>.migrations``,
  the table graphile-worker uses, so gwcore and a Node.js graphile-worker can install,
  upgrade and share one schema.
* ``gwcore/migrations/gwcore/NNNNNN.sql`` contains objects that only gwcore uses. They are
  recorded in ``<schema>._gwcore_migrations``, so their numbers never clash with a
  migration that a later graphile-worker adds.

The SQL files write the schema as ``:GW_SCHEMA``; the runner replaces it with the quoted
schema name. A first line that starts with ``--! breaking`` marks a breaking migration.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from typing import Any

import psycopg
from psycopg import errors, pq, sql

from gwcore.errors import SchemaError, SchemaTooNewError, ValidationError

logger = logging.getLogger("gwcore.migrate")

MIN_SERVER_VERSION_NUM = 120000
MAX_IDENTIFIER_BYTES = 63
BREAKING_MARKER = "--! breaking"

_PLACEHOLDER = re.compile(r":GW_SCHEMA\b")
_FILE_NAME = re.compile(r"^(\d{6})\.sql$")

# SQLSTATEs of "table or column does not exist" (the schema needs bootstrapping) and of
# "already exists" (another process bootstrapped it at the same moment).
_MISSING_CODES = frozenset({"3F000", "42P01", "42703"})
_CLASH_CODES = frozenset({"23505", "42P06", "42P07", "42710"})


@dataclass(frozen=True)
class Migration:
    """One numbered SQL file of a migration series, with ``:GW_SCHEMA`` not yet replaced."""

    number: int
    sql: str
    breaking: bool


@dataclass(frozen=True)
class MigrationResult:
    """Outcome of `migrate`: the migrations it applied and the schema revision it left behind.

    ``applied`` lists the graphile-worker-series migrations that this call applied.
    ``latest`` is the highest one recorded in the database, which can be newer than the
    migrations this gwcore ships. ``gwcore_applied`` and ``gwcore_latest`` are the same for
    gwcore's own series.
    """

    applied: tuple[int, ...]
    latest: int
    latest_breaking: int
    gwcore_applied: tuple[int, ...] = ()
    gwcore_latest: int = 0


def quote_schema(schema: str) -> str:
    """Return ``schema`` quoted as an SQL identifier, for example ``"graphile_worker"``.

    Raises `ValidationError` when the name is empty or longer than PostgreSQL's limit of
    63 bytes (PostgreSQL would silently truncate it).
    """
    if not schema:
        raise ValidationError("schema name is empty; pass a name such as 'graphile_worker'")
    size = len(schema.encode("utf-8"))
    if size > MAX_IDENTIFIER_BYTES:
        raise ValidationError(
            f"schema name {schema!r} is {size} bytes long, but PostgreSQL allows at most "
            f"{MAX_IDENTIFIER_BYTES}; choose a shorter name"
        )
    if "\x00" in schema:
        raise ValidationError(f"schema name {schema!r} contains a NUL character; remove it")
    return sql.Identifier(schema).as_string(None)


def worker_migrations_dir() -> Traversable:
    """Return the folder of the graphile-worker-compatible migration series."""
    return resources.files("gwcore") / "migrations"


def gwcore_migrations_dir() -> Traversable:
    """Return the folder of gwcore's own migration series."""
    return worker_migrations_dir() / "gwcore"


def load_migrations(folder: Traversable) -> tuple[Migration, ...]:
    """Read the ``NNNNNN.sql`` files of ``folder``, sorted by number.

    A missing folder is an empty series. Raises `SchemaError` when the numbers do not run
    1, 2, 3, ... without a gap, which means the installed package is damaged.
    """
    if not folder.is_dir():
        return ()

    found: dict[int, Migration] = {}
    for entry in folder.iterdir():
        match = _FILE_NAME.match(entry.name)
        if match is None or not entry.is_file():
            continue
        number = int(match.group(1))
        text = entry.read_text(encoding="utf-8")
        found[number] = Migration(number, text, text.startswith(BREAKING_MARKER))

    numbers = sorted(found)
    if numbers != list(range(1, len(numbers) + 1)):
        raise SchemaError(
            f"migration files in {folder} are numbered {numbers}, but must run from 1 without "
            "gaps; reinstall gwcore"
        )
    return tuple(found[number] for number in numbers)


async def migrate(conn: psycopg.AsyncConnection[Any], schema: str = "graphile_worker") -> MigrationResult:
    """Create or upgrade the gwcore / graphile-worker schema ``schema`` over ``conn``.

    Several processes, including Node.js graphile-worker processes, may run it at once,
    because each migration records its row first and only one insert of that row succeeds.
    The connection must not be inside a transaction. It is left with the autocommit setting
    it had.

    Raises `ValidationError` for an invalid schema name or a connection inside a
    transaction, `SchemaError` when PostgreSQL is older than 12 or a migration cannot be
    applied, and `SchemaTooNewError` when the database has a breaking migration newer than
    this gwcore version ships. Otherwise a failing migration's own psycopg error propagates,
    with a note that names the migration.
    """
    return await _run_migrations(conn, schema)


async def _run_migrations(
    conn: psycopg.AsyncConnection[Any],
    schema: str,
    *,
    own_migrations_dir: Traversable | None = None,
) -> MigrationResult:
    """Apply both migration series; ``own_migrations_dir`` replaces gwcore's own series."""
    quoted = quote_schema(schema)
    if "$$" in schema:
        raise ValidationError(
            f"schema name {schema!r} contains '$$', which would end the function bodies "
            "in the migrations; choose another name"
        )
    if conn.info.transaction_status != pq.TransactionStatus.IDLE:
        raise ValidationError(
            "the connection passed to migrate() is inside a transaction; commit or roll it back first"
        )

    version = conn.info.server_version
    if version < MIN_SERVER_VERSION_NUM:
        raise SchemaError(
            f"gwcore requires PostgreSQL 12 or newer, but the server reports "
            f"server_version_num {version}; upgrade PostgreSQL"
        )

    worker_series = load_migrations(worker_migrations_dir())
    own_series = load_migrations(own_migrations_dir or gwcore_migrations_dir())

    # Each migration commits on its own, which needs autocommit between them.
    was_autocommit = conn.autocommit
    if not was_autocommit:
        await conn.set_autocommit(True)
    try:
        return await _migrate_locked(conn, schema, quoted, worker_series, own_series)
    finally:
        if not was_autocommit and not conn.closed:
            await conn.set_autocommit(False)


async def _migrate_locked(
    conn: psycopg.AsyncConnection[Any],
    schema: str,
    quoted: str,
    worker_series: tuple[Migration, ...],
    own_series: tuple[Migration, ...],
) -> MigrationResult:
    """Run both series while holding a session advisory lock keyed on the schema name.

    The lock only serialises gwcore processes. Node.js graphile-worker does not take it, so
    every migration still detects a concurrent migrator by its row in the migrations table.
    """
    lock_key = f"gwcore.migrate:{schema}"
    await conn.execute("select pg_advisory_lock(hashtextextended(%s, 0))", [lock_key])
    try:
        latest, _ = await _read_revision(conn, schema, worker_series)

        applied: list[int] = []
        for migration in worker_series:
            if migration.number > latest and await _apply_worker_migration(conn, schema, quoted, migration):
                applied.append(migration.number)

        latest, latest_breaking = await _read_revision(conn, schema, worker_series)
        _check_not_too_new(schema, latest, latest_breaking, len(worker_series))

        gwcore_applied, gwcore_latest = await _apply_own_series(conn, schema, quoted, own_series)
    finally:
        if not conn.closed:
            await conn.execute("select pg_advisory_unlock(hashtextextended(%s, 0))", [lock_key])

    if applied or gwcore_applied:
        logger.info(
            "migrated schema %s to revision %d (applied %s) and gwcore revision %d",
            schema,
            latest,
            ", ".join(map(str, applied)) or "none",
            gwcore_latest,
        )
    return MigrationResult(
        applied=tuple(applied),
        latest=latest,
        latest_breaking=latest_breaking,
        gwcore_applied=gwcore_applied,
        gwcore_latest=gwcore_latest,
    )


async def _read_revision(
    conn: psycopg.AsyncConnection[Any], schema: str, worker_series: tuple[Migration, ...]
) -> tuple[int, int]:
    """Return the highest recorded migration and the highest breaking one (0 for none).

    Bootstraps the schema and its migrations table first when they do not exist yet.
    """
    query = sql.SQL(
        "select"
        " (select max(id) from {schema}.migrations),"
        " (select max(id) from {schema}.migrations where breaking)"
    ).format(schema=sql.Identifier(schema))
    for attempt in range(2):
        try:
            cursor = await conn.execute(query)
            row = await cursor.fetchone()
            assert row is not None
            return (row[0] or 0, row[1] or 0)
        except psycopg.Error as error:
            if attempt > 0 or error.sqlstate not in _MISSING_CODES:
                raise
        await _bootstrap(conn, schema, worker_series)
    raise AssertionError("unreachable: the second attempt returns or raises")


async def _bootstrap(
    conn: psycopg.AsyncConnection[Any], schema: str, worker_series: tuple[Migration, ...]
) -> None:
    """Create the schema and its migrations table the way graphile-worker does.

    A clash with another process that bootstraps at the same moment is not an error.
    """
    breaking = [migration.number for migration in worker_series if migration.breaking]
    identifier = sql.Identifier(schema)
    statements = [
        sql.SQL("create schema if not exists {}").format(identifier),
        sql.SQL(
            "create table if not exists {}.migrations ("
            " id int primary key,"
            " ts timestamptz default now() not null"
            ")"
        ).format(identifier),
        sql.SQL(
            "alter table {}.migrations add column if not exists breaking boolean not null default false"
        ).format(identifier),
    ]
    mark_breaking = sql.SQL(
        "update {}.migrations set breaking = true where id = any(%s::int[]) and not breaking"
    ).format(identifier)
    try:
        async with conn.transaction():
            for statement in statements:
                await conn.execute(statement)
            await conn.execute(mark_breaking, [breaking])
    except psycopg.Error as error:
        if error.sqlstate not in _CLASH_CODES:
            raise
        logger.debug("another process bootstrapped schema %s at the same time", schema)


class _AlreadyApplied(Exception):
    """Another process recorded the migration first."""


async def _apply_worker_migration(
    conn: psycopg.AsyncConnection[Any], schema: str, quoted: str, migration: Migration
) -> bool:
    """Apply one graphile-worker-series migration in its own transaction.

    Returns False when another process (gwcore or graphile-worker) applied it first.
    Raises `SchemaError` for migration 11 while jobs are locked.
    """
    record = sql.SQL("insert into {}.migrations (id, breaking) values (%s, %s)").format(
        sql.Identifier(schema)
    )
    payload = json.dumps(
        {"migrationNumber": migration.number, "breaking": migration.breaking},
        separators=(",", ":"),
    )
    try:
        async with conn.transaction():
            # The row goes in first, so a concurrent migrator fails here on the primary key,
            # before it runs any of the migration.
            try:
                await conn.execute(record, [migration.number, migration.breaking])
            except errors.UniqueViolation as error:
                raise _AlreadyApplied from error
            await conn.execute(_schema_sql(migration.sql, quoted))
            await conn.execute("select pg_notify('worker:migrate', %s)", [payload])
    except _AlreadyApplied:
        logger.debug("migration %d of schema %s was applied by another process", migration.number, schema)
        return False
    except errors.DivisionByZero as error:
        if migration.number != 11:
            raise
        raise SchemaError(
            f"migration 11 of schema {schema!r} cannot run while jobs are locked. Stop every "
            "worker (gwcore and graphile-worker), then unlock the jobs with "
            f"'update {quoted}.jobs set locked_at = null, locked_by = null' and "
            f"'update {quoted}.job_queues set locked_at = null, locked_by = null', and run "
            "the migration again"
        ) from error
    except psycopg.Error as error:
        error.add_note(f"while applying migration {migration.number} to schema {schema!r}")
        raise

    logger.debug("applied migration %d to schema %s", migration.number, schema)
    return True


def _check_not_too_new(schema: str, latest: int, latest_breaking: int, known: int) -> None:
    """Raise `SchemaTooNewError` for an unknown breaking migration; warn for a compatible one."""
    if latest_breaking > known:
        raise SchemaTooNewError(
            f"schema {schema!r} has breaking migration {latest_breaking} (revision {latest}), "
            f"but this gwcore version ships migrations up to {known} only. Running against it could "
            "corrupt jobs; upgrade gwcore, or stop the newer graphile-worker and use another "
            "schema",
            latest_migration=latest,
            latest_breaking=latest_breaking,
            known=known,
        )
    if latest > known:
        logger.warning(
            "schema %s has migration %d, newer than %d, the highest this gwcore version ships; none of "
            "the newer migrations is marked breaking, so gwcore continues. Upgrade gwcore to "
            "match the newest graphile-worker that uses this schema",
            schema,
            latest,
            known,
        )


async def _apply_own_series(
    conn: psycopg.AsyncConnection[Any],
    schema: str,
    quoted: str,
    own_series: tuple[Migration, ...],
) -> tuple[tuple[int, ...], int]:
    """Apply gwcore's own migrations; return the numbers applied and the latest recorded.

    Their table is created only for a non-empty series, so that a schema without them stays
    identical to one graphile-worker installed.
    """
    if not own_series:
        return ((), 0)

    identifier = sql.Identifier(schema)
    async with conn.transaction():
        await conn.execute(
            sql.SQL(
                "create table if not exists {}._gwcore_migrations ("
                " id int primary key,"
                " ts timestamptz default now() not null"
                ")"
            ).format(identifier)
        )
    latest_query = sql.SQL("select max(id) from {}._gwcore_migrations").format(identifier)
    record = sql.SQL("insert into {}._gwcore_migrations (id) values (%s)").format(identifier)

    cursor = await conn.execute(latest_query)
    row = await cursor.fetchone()
    latest = (row[0] if row else None) or 0

    applied: list[int] = []
    for migration in own_series:
        if migration.number <= latest:
            continue
        try:
            async with conn.transaction():
                try:
                    await conn.execute(record, [migration.number])
                except errors.UniqueViolation as error:
                    raise _AlreadyApplied from error
                await conn.execute(_schema_sql(migration.sql, quoted))
        except _AlreadyApplied:
            continue
        except psycopg.Error as error:
            error.add_note(f"while applying gwcore migration {migration.number} to schema {schema!r}")
            raise
        logger.debug("applied gwcore migration %d to schema %s", migration.number, schema)
        applied.append(migration.number)

    cursor = await conn.execute(latest_query)
    row = await cursor.fetchone()
    latest = (row[0] if row else None) or 0
    if latest > len(own_series):
        logger.warning(
            "schema %s has gwcore migration %d, newer than %d, the highest this gwcore version ships; "
            "continuing. Upgrade gwcore to match the newest gwcore that uses this schema",
            schema,
            latest,
            len(own_series),
        )
    return (tuple(applied), latest)


def _schema_sql(text: str, quoted: str) -> bytes:
    """Replace ``:GW_SCHEMA`` in a migration file's text with the quoted schema name.

    The result runs without parameters, so psycopg does not parse a ``%`` in the schema name
    as a placeholder. It is bytes because psycopg accepts a query that is not a literal
    string only as bytes or as an `sql.SQL` object.
    """
    return _PLACEHOLDER.sub(lambda _: quoted, text).encode("utf-8")
