"""The targets that gwcore's functions accept: a connection, a pool or a connection string."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any, TypeAlias

import psycopg
from psycopg_pool import AsyncConnectionPool, ConnectionPool

from gwcore.errors import ValidationError

AsyncTarget: TypeAlias = "psycopg.AsyncConnection[Any] | AsyncConnectionPool | str"
SyncTarget: TypeAlias = "psycopg.Connection[Any] | ConnectionPool | str"


@asynccontextmanager
async def async_connection(target: AsyncTarget) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    """Yield a connection of ``target``: the connection itself, one from the pool, or a new one.

    A connection opened from a string is in autocommit mode and closed afterwards.
    """
    if isinstance(target, psycopg.AsyncConnection):
        yield target
    elif isinstance(target, AsyncConnectionPool):
        async with target.connection() as conn:
            yield conn
    elif isinstance(target, str):
        async with await psycopg.AsyncConnection.connect(target, autocommit=True) as conn:
            yield conn
    else:
        raise ValidationError(
            f"target is invalid: {target!r}; the async API takes a psycopg AsyncConnection, "
            "an AsyncConnectionPool or a connection string. For a sync connection use the twin "
            "ending in _sync, such as add_job_sync."
        )


@contextmanager
def sync_connection(target: SyncTarget) -> Iterator[psycopg.Connection[Any]]:
    """Yield a connection of ``target``, as `async_connection` does for the sync API."""
    if isinstance(target, psycopg.Connection):
        yield target
    elif isinstance(target, ConnectionPool):
        with target.connection() as conn:
            yield conn
    elif isinstance(target, str):
        with psycopg.Connection.connect(target, autocommit=True) as conn:
            yield conn
    else:
        raise ValidationError(
            f"target is invalid: {target!r}; the sync API takes a psycopg Connection, "
            "a ConnectionPool or a connection string. For an async connection use the twin "
            "without _sync, such as gwcore.add_job."
        )
