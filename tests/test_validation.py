"""Validation of the arguments of add_job, add_jobs and JobSpec.create.

Every rejected value must raise `ValidationError` whose message names the
field and the allowed range or the fix, and nothing may reach the database.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from psycopg import sql

import gwcore
from gwcore import JobSpec, ValidationError

# Each case: the keyword arguments of add_job (besides the target), and text the message must contain.
REJECTED: dict[str, tuple[dict[str, Any], list[str]]] = {
    "identifier_empty": ({"identifier": ""}, ["identifier", "''", "0 characters", "1 to 128"]),
    "identifier_129": ({"identifier": "i" * 129}, ["identifier", "iiii", "129 characters", "1 to 128"]),
    "identifier_missing": ({"identifier": None}, ["identifier", "missing", "1 to 128"]),
    "identifier_not_str": ({"identifier": 42}, ["identifier", "42", "int", "1 to 128"]),
    "queue_name_empty": ({"queue_name": ""}, ["queue_name", "''", "0 characters", "1 to 128"]),
    "queue_name_129": ({"queue_name": "q" * 129}, ["queue_name", "qqqq", "129 characters", "1 to 128"]),
    "job_key_empty": ({"job_key": ""}, ["job_key", "''", "0 characters", "1 to 512"]),
    "job_key_513": ({"job_key": "k" * 513}, ["job_key", "kkkk", "513 characters", "1 to 512"]),
    "priority_32768": ({"priority": 32768}, ["priority", "32768", "-32768 to 32767"]),
    "priority_minus_32769": ({"priority": -32769}, ["priority", "-32769", "-32768 to 32767"]),
    "priority_bool": ({"priority": True}, ["priority", "True", "not an integer", "-32768 to 32767"]),
    "priority_float": ({"priority": 1.5}, ["priority", "1.5", "not an integer", "-32768 to 32767"]),
    "max_attempts_0": ({"max_attempts": 0}, ["max_attempts", "0", "1 to 32767"]),
    "max_attempts_32768": ({"max_attempts": 32768}, ["max_attempts", "32768", "1 to 32767"]),
    "max_attempts_bool": ({"max_attempts": False}, ["max_attempts", "False", "not an integer"]),
    "run_at_naive": (
        {"run_at": datetime(2030, 1, 2, 3, 4, 5)},
        ["run_at", "2030-01-02T03:04:05", "no time zone", "aware datetime"],
    ),
    "run_at_string": ({"run_at": "2030-01-02"}, ["run_at", "'2030-01-02'", "aware datetime"]),
    "payload_nan": ({"payload": {"x": float("nan")}}, ["payload", "NaN or Infinity", "strings or null"]),
    "payload_infinity": ({"payload": [1, float("inf")]}, ["payload", "NaN or Infinity", "strings or null"]),
    "payload_minus_infinity": ({"payload": float("-inf")}, ["payload", "NaN or Infinity", "strings or null"]),
    "payload_nul_value": ({"payload": {"text": "a\u0000b"}}, ["payload", "NUL", "\\u0000"]),
    "payload_nul_key": ({"payload": {"k\u0000": 1}}, ["payload", "NUL", "\\u0000"]),
    "payload_nul_nested": ({"payload": [{"a": ["ok", "\u0000"]}]}, ["payload", "NUL", "\\u0000"]),
    "payload_nul_top": ({"payload": "\u0000"}, ["payload", "NUL", "\\u0000"]),
    "payload_nul_after_backslash": ({"payload": "\\\u0000"}, ["payload", "NUL", "\\u0000"]),
    "payload_datetime": (
        {"payload": {"when": datetime(2030, 1, 1, tzinfo=UTC)}},
        ["payload", "datetime", "convert"],
    ),
    "payload_set": ({"payload": {"tags": {"a"}}}, ["payload", "set", "convert"]),
    "payload_decimal": ({"payload": [Decimal("1.5")]}, ["payload", "Decimal", "convert"]),
    "payload_bytes": ({"payload": b"raw"}, ["payload", "bytes", "convert"]),
    "job_key_mode_unknown": (
        {"job_key": "k", "job_key_mode": "upsert"},
        ["job_key_mode", "'upsert'", "replace, preserve_run_at, unsafe_dedupe"],
    ),
    "flags_bare_string": ({"flags": "urgent"}, ["flags", "'urgent'", "list of strings", "['urgent']"]),
    "flags_empty_name": ({"flags": ["ok", ""]}, ["flags", "''", "non-empty string"]),
    "flags_not_str": ({"flags": [7]}, ["flags", "7", "non-empty string"]),
}

# Each case: keyword arguments at the edge of the allowed range.
ACCEPTED: dict[str, dict[str, Any]] = {
    "identifier_128": {"identifier": "i" * 128},
    "identifier_1": {"identifier": "i"},
    "queue_name_128": {"queue_name": "q" * 128},
    "job_key_512": {"job_key": "k" * 512},
    "priority_32767": {"priority": 32767},
    "priority_minus_32768": {"priority": -32768},
    "max_attempts_1": {"max_attempts": 1},
    "max_attempts_32767": {"max_attempts": 32767},
    "run_at_other_zone": {"run_at": datetime(2030, 1, 1, tzinfo=timezone(timedelta(hours=-5)))},
    "payload_escaped_backslash_u0000": {"payload": {"path": "C:\\u0000\\dir"}},
    "payload_two_backslashes_u0000": {"payload": "\\\\u0000"},
    "payload_unicode": {"payload": {"name": "Zoë 🚀", "list": [1, 2.5, None, True]}},
    "job_key_mode_unsafe_dedupe": {"job_key": "k", "job_key_mode": "unsafe_dedupe"},
}


def _arguments(case: dict[str, Any]) -> dict[str, Any]:
    arguments: dict[str, Any] = {"identifier": "validated_task", "payload": {"a": 1}}
    arguments.update(case)
    return arguments


async def _count(conn: psycopg.AsyncConnection[Any], schema: str, relation: str) -> int:
    query = sql.SQL("select count(*) from {}.{}").format(sql.Identifier(schema), sql.Identifier(relation))
    cursor = await conn.execute(query)
    row = await cursor.fetchone()
    assert row is not None
    return int(row[0])


def _plugins() -> gwcore.PluginManager:
    return gwcore.create_plugin_manager([], entry_points=False)


@pytest.mark.parametrize("case", list(REJECTED), ids=list(REJECTED))
async def test_add_job_rejects_invalid(
    case: str, gw_conn: psycopg.AsyncConnection[Any], gw_schema: str
) -> None:
    overrides, fragments = REJECTED[case]
    arguments = _arguments(overrides)

    with pytest.raises(ValidationError) as info:
        await gwcore.add_job(gw_conn, **arguments, schema=gw_schema, plugins=_plugins())

    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} missing from {message!r}"
    assert await _count(gw_conn, gw_schema, "jobs") == 0
    assert await _count(gw_conn, gw_schema, "_private_tasks") == 0
    assert await _count(gw_conn, gw_schema, "_private_job_queues") == 0


@pytest.mark.parametrize("case", list(ACCEPTED), ids=list(ACCEPTED))
async def test_add_job_accepts_edge(case: str, gw_conn: psycopg.AsyncConnection[Any], gw_schema: str) -> None:
    arguments = _arguments(ACCEPTED[case])

    job = await gwcore.add_job(gw_conn, **arguments, schema=gw_schema, plugins=_plugins())

    assert job is not None
    assert job.task_identifier == arguments["identifier"]
    if "queue_name" in arguments:
        assert job.queue_name == arguments["queue_name"]
    if "job_key" in arguments:
        assert job.key == arguments["job_key"]
    if "priority" in arguments:
        assert job.priority == arguments["priority"]
    if "max_attempts" in arguments:
        assert job.max_attempts == arguments["max_attempts"]
    if "run_at" in arguments:
        assert job.run_at == arguments["run_at"]
    assert job.payload == arguments["payload"]
    assert await _count(gw_conn, gw_schema, "jobs") == 1


SYNC_CASES = [
    "identifier_129",
    "priority_32768",
    "max_attempts_0",
    "run_at_naive",
    "payload_nan",
    "flags_bare_string",
]


@pytest.mark.parametrize("case", SYNC_CASES)
def test_add_job_sync_rejects_invalid(case: str, gw_database_url: str, gw_schema: str) -> None:
    overrides, fragments = REJECTED[case]
    arguments = _arguments(overrides)

    with pytest.raises(ValidationError) as info:
        gwcore.add_job_sync(gw_database_url, **arguments, schema=gw_schema, plugins=_plugins())

    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} missing from {message!r}"
    with psycopg.connect(gw_database_url) as conn:
        query = sql.SQL("select count(*) from {}.jobs").format(sql.Identifier(gw_schema))
        row = conn.execute(query).fetchone()
    assert row == (0,)


@pytest.mark.parametrize("case", ["queue_name_129", "job_key_empty", "priority_bool", "payload_set"])
def test_spec_create_rejects_invalid(case: str) -> None:
    overrides, fragments = REJECTED[case]
    arguments = _arguments(overrides)
    identifier = arguments.pop("identifier")
    payload = arguments.pop("payload")

    with pytest.raises(ValidationError) as info:
        JobSpec.create(identifier, payload, **arguments)

    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} missing from {message!r}"


def test_validation_error_is_value_error() -> None:
    with pytest.raises(ValueError):
        JobSpec.create("task", priority=99999)


# Specs built with the constructor skip JobSpec.create's checks, so add_jobs must validate them again.
UNCHECKED_SPECS: dict[str, tuple[JobSpec, list[str]]] = {
    "priority": (JobSpec("task", priority=40000), ["priority", "40000", "-32768 to 32767"]),
    "max_attempts": (JobSpec("task", max_attempts=0), ["max_attempts", "0", "1 to 32767"]),
    "identifier": (JobSpec(""), ["identifier", "0 characters", "1 to 128"]),
    "run_at": (JobSpec("task", run_at=datetime(2030, 1, 1)), ["run_at", "aware datetime"]),
    "payload": (JobSpec("task", payload={"x": float("nan")}), ["payload", "NaN"]),
    "job_key_mode": (JobSpec("task", job_key="k", job_key_mode="merge"), ["job_key_mode", "'merge'"]),  # type: ignore[arg-type]
}


@pytest.mark.parametrize("case", list(UNCHECKED_SPECS))
async def test_add_jobs_rejects_invalid_spec(
    case: str, gw_conn: psycopg.AsyncConnection[Any], gw_schema: str
) -> None:
    bad_spec, fragments = UNCHECKED_SPECS[case]
    good_spec = JobSpec.create("task", {"n": 1})

    with pytest.raises(ValidationError) as info:
        await gwcore.add_jobs(gw_conn, [good_spec, bad_spec], schema=gw_schema, plugins=_plugins())

    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} missing from {message!r}"
    assert await _count(gw_conn, gw_schema, "jobs") == 0
    assert await _count(gw_conn, gw_schema, "_private_tasks") == 0


async def test_add_jobs_rejects_non_spec(gw_conn: psycopg.AsyncConnection[Any], gw_schema: str) -> None:
    good_spec = JobSpec.create("task")

    with pytest.raises(ValidationError) as info:
        await gwcore.add_jobs(
            gw_conn,
            [good_spec, {"identifier": "task"}],  # type: ignore[list-item]
            schema=gw_schema,
            plugins=_plugins(),
        )

    message = str(info.value)
    assert "specs[1]" in message
    assert "{'identifier': 'task'}" in message
    assert "JobSpec.create" in message
    assert await _count(gw_conn, gw_schema, "jobs") == 0


def test_sync_add_jobs_rejects_invalid_spec(gw_database_url: str, gw_schema: str) -> None:
    specs = [JobSpec.create("task"), JobSpec("task", priority=-40000)]

    with pytest.raises(ValidationError) as info:
        gwcore.add_jobs_sync(gw_database_url, specs, schema=gw_schema, plugins=_plugins())

    assert "priority" in str(info.value)
    assert "-40000" in str(info.value)
    with psycopg.connect(gw_database_url) as conn:
        query = sql.SQL("select count(*) from {}.jobs").format(sql.Identifier(gw_schema))
        row = conn.execute(query).fetchone()
    assert row == (0,)
