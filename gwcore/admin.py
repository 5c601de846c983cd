"""Operations on the queue as a whole, for operators and plugins."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from gwcore.queries import queries_for


async def release_stale_locks(
    target: psycopg.AsyncConnection[Any] | AsyncConnectionPool, schema: str
) -> tuple[int, int]:
    """Unlock jobs and queues locked for more than 4 hours; return how many (jobs, queues).

    A worker that crashed leaves its locks behind. A released job whose
    ``run_at`` lies in the past gets ``run_at = now()``, and keeps the attempt
    that the crashed worker counted, as graphile-worker does.
    """
    statement = queries_for(schema).release_stale_locks
    if isinstance(target, AsyncConnectionPool):
        async with target.connection() as conn:
            row = await (await conn.execute(statement)).fetchone()
    else:
        row = await (await target.execute(statement)).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])
