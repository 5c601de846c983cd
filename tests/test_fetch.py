"""The fetch statement: what it reads, in which order, and what it locks."""

from __future__ import annotations

import json
from typing import Any

import psycopg
import pytest
from psycopg import sql

import gwcore
from gwcore.queries import fetch_window, queries_for

ADD_PLUGINS = gwcore.create_plugin_manager(builtins=False, entry_points=False)
OTHER_TASK_ROWS = 3000


async def insert_other_task_rows(conn: psycopg.AsyncConnection[Any], schema: str, count: int) -> None:
    """Insert ``count`` jobs of a task that the fetching worker does not run, due an hour ago."""
    await conn.execute(
        sql.SQL(
            "insert into {schema}._private_tasks (identifier) values ('other_service_task') "
            "on conflict do nothing"
        ).format(schema=sql.Identifier(schema))
    )
    await conn.execute(
        sql.SQL(
            "insert into {schema}._private_jobs (task_id, payload, run_at)"
            " select tasks.id, '{{}}'::json, now() - interval '1 hour'"
            " from generate_series(1, %(count)s::int), {schema}._private_tasks as tasks"
            " where tasks.identifier = 'other_service_task'"
        ).format(schema=sql.Identifier(schema)),
        {"count": count},
    )


async def task_id(conn: psycopg.AsyncConnection[Any], schema: str, identifier: str) -> int:
    cursor = await conn.execute(
        sql.SQL("select id from {}._private_tasks where identifier = %s").format(sql.Identifier(schema)),
        [identifier],
    )
    row = await cursor.fetchone()
    assert row is not None
    return int(row[0])


def job_scans(plan: dict[str, Any]) -> list[dict[str, Any]]:
    """Return every scan node of ``plan`` (an EXPLAIN JSON plan) that reads _private_jobs."""
    found = []
    if plan.get("Relation Name") == "_private_jobs":
        found.append(plan)
    for child in plan.get("Plans", []):
        found.extend(job_scans(child))
    return found


async def explained_fetch(
    conn: psycopg.AsyncConnection[Any], schema: str, task_ids: list[int], size: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Run the fetch with auto_explain reporting every nested plan; return the rows and those plans."""
    try:
        await conn.execute("load 'auto_explain'")
    except psycopg.Error as error:
        pytest.skip(f"auto_explain cannot be loaded here: {error}")
    for setting, value in (
        ("auto_explain.log_min_duration", "0"),
        ("auto_explain.log_analyze", "on"),
        ("auto_explain.log_nested_statements", "on"),
        ("auto_explain.log_format", "json"),
        ("auto_explain.log_level", "notice"),
    ):
        await conn.execute(sql.SQL("set {} = {}").format(sql.Identifier(setting), sql.Literal(value)))

    notices: list[str] = []
    conn.add_notice_handler(lambda diagnostic: notices.append(diagnostic.message_primary or ""))
    params = {"worker_id": "test-worker", "task_ids": task_ids, "size": size, "window": fetch_window(size)}
    cursor = await conn.execute(queries_for(schema).fetch_jobs, params)
    rows = await cursor.fetchall()
    await conn.execute("set auto_explain.log_min_duration = -1")

    plans = []
    for notice in notices:
        _, _, document = notice.partition("plan:")
        if document.strip():
            plans.append(json.loads(document)["Plan"])
    return [
        dict(zip([column.name for column in cursor.description or ()], row, strict=True)) for row in rows
    ], plans


async def test_fetch_skips_other_tasks_jobs(gw_schema: str, gw_conn: psycopg.AsyncConnection[Any]) -> None:
    await insert_other_task_rows(gw_conn, gw_schema, OTHER_TASK_ROWS)
    added = await gwcore.add_jobs(
        gw_conn,
        [gwcore.JobSpec.create("mine", {"n": n}) for n in range(3)],
        schema=gw_schema,
        plugins=ADD_PLUGINS,
    )
    mine = await task_id(gw_conn, gw_schema, "mine")

    rows, plans = await explained_fetch(gw_conn, gw_schema, [mine], size=1)

    assert [row["id"] for row in rows] == [min(job.id for job in added)]
    scans = [scan for plan in plans for scan in job_scans(plan)]
    assert scans, "auto_explain reported no scan of _private_jobs"
    read = sum(scan.get("Actual Rows", 0) + scan.get("Rows Removed by Filter", 0) for scan in scans)
    assert read < OTHER_TASK_ROWS / 10


async def test_fetch_reads_index_in_order(gw_schema: str, gw_conn: psycopg.AsyncConnection[Any]) -> None:
    # Freshly inserted rows and no ANALYZE: the statistics describe an empty table, as they do
    # for a job table that filled up within the last minute.
    await gwcore.add_jobs(
        gw_conn,
        [gwcore.JobSpec.create("mine", {"n": n}) for n in range(2000)],
        schema=gw_schema,
        plugins=ADD_PLUGINS,
    )
    mine = await task_id(gw_conn, gw_schema, "mine")

    rows, plans = await explained_fetch(gw_conn, gw_schema, [mine], size=10)

    assert len(rows) == 10
    node_types = {scan["Node Type"] for plan in plans for scan in job_scans(plan)}
    assert "Bitmap Heap Scan" not in node_types
    assert "Seq Scan" not in node_types
    candidate_scans = [
        scan
        for plan in plans
        for scan in job_scans(plan)
        if scan.get("Index Name") == "gwcore_jobs_task_fetch_index"
    ]
    assert candidate_scans, f"no scan of gwcore_jobs_task_fetch_index among {sorted(node_types)}"
    assert all(scan["Actual Rows"] <= fetch_window(10) for scan in candidate_scans)


async def test_fetch_takes_first_jobs_in_order(gw_schema: str, gw_conn: psycopg.AsyncConnection[Any]) -> None:
    specs = [
        gwcore.JobSpec.create("first", {}, priority=1),
        gwcore.JobSpec.create("second", {}, priority=0),
        gwcore.JobSpec.create("first", {}, priority=0),
        gwcore.JobSpec.create("second", {}, priority=2),
    ]
    added = [
        await gwcore.add_job_spec(gw_conn, spec, schema=gw_schema, plugins=ADD_PLUGINS) for spec in specs
    ]
    task_ids = [await task_id(gw_conn, gw_schema, name) for name in ("first", "second")]

    rows, _ = await explained_fetch(gw_conn, gw_schema, task_ids, size=3)

    fetched = sorted(rows, key=lambda row: (row["priority"], row["run_at"], row["id"]))
    assert [row["id"] for row in fetched] == [added[1].id, added[2].id, added[0].id]
    assert all(row["locked_by"] == "test-worker" for row in rows)
    assert all(row["attempts"] == 1 for row in rows)
