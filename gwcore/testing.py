"""Pytest fixtures for testing gwcore and gwcore plugins against a real PostgreSQL.

Enable them in a test suite with ``pytest_plugins = ["gwcore.testing"]`` in
``conftest.py``.

The database comes from ``GW_TEST_DATABASE_URL`` when it is set. Otherwise the
fixtures try ``postgresql://postgres@127.0.0.1:5432/test`` and, when no server
accepts connections there, start an embedded PostgreSQL (the ``embedded`` extra) in a
temporary folder for the test session. Each test that uses ``gw_schema`` gets a
schema of its own, migrated before the test and dropped after it.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator

import psycopg
import pytest
from psycopg import sql

DEFAULT_TEST_URL = "postgresql://postgres@127.0.0.1:5432/test"


def _server_answers(url: str) -> bool:
    try:
        with psycopg.connect(url, connect_timeout=3) as conn:
            conn.execute("select 1")
        return True
    except psycopg.OperationalError:
        return False


@pytest.fixture(scope="session")
def gw_database_url() -> Iterator[str]:
    """Connection string of the PostgreSQL database the tests run against."""
    configured = os.environ.get("GW_TEST_DATABASE_URL")
    if configured:
        yield configured
        return

    if _server_answers(DEFAULT_TEST_URL):
        yield DEFAULT_TEST_URL
        return

    from gwcore.embedded import start_embedded_server

    with tempfile.TemporaryDirectory(prefix="gwcore-test-pg-") as folder:
        server = start_embedded_server(os.path.join(folder, "data"), cleanup="delete")
        yield server.url


def new_schema_name(prefix: str = "gw_test") -> str:
    """Return a schema name that no other test uses."""
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


def drop_schema(url: str, schema: str) -> None:
    """Drop ``schema`` and everything in it, ignoring a schema that does not exist."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql.SQL("drop schema if exists {} cascade").format(sql.Identifier(schema)))


@pytest.fixture
def gw_schema_name() -> str:
    """A fresh schema name; nothing is created in the database."""
    return new_schema_name()


@pytest.fixture
async def gw_schema(gw_database_url: str, gw_schema_name: str) -> AsyncIterator[str]:
    """A schema of this test's own with gwcore's migrations applied, dropped afterwards."""
    from gwcore.migrate import migrate

    async with await psycopg.AsyncConnection.connect(gw_database_url, autocommit=True) as conn:
        await migrate(conn, gw_schema_name)
    try:
        yield gw_schema_name
    finally:
        drop_schema(gw_database_url, gw_schema_name)


@pytest.fixture
async def gw_conn(gw_database_url: str) -> AsyncIterator[psycopg.AsyncConnection]:
    """An autocommit async connection to the test database."""
    async with await psycopg.AsyncConnection.connect(gw_database_url, autocommit=True) as conn:
        yield conn
