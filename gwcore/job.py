"""Jobs as Python values: the row a worker fetched, and the spec of a job to add, with its validation."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from gwcore.errors import ValidationError

JobKeyMode = Literal["replace", "preserve_run_at", "unsafe_dedupe"]
JOB_KEY_MODES: tuple[str, ...] = ("replace", "preserve_run_at", "unsafe_dedupe")

MAX_IDENTIFIER_LENGTH = 128
MAX_QUEUE_NAME_LENGTH = 128
MAX_JOB_KEY_LENGTH = 512
SMALLINT_MIN = -32768
SMALLINT_MAX = 32767

# A NUL that json.dumps escaped: "\u0000" after an even number of backslashes, so that an escaped
# backslash followed by the text "u0000" does not match.
_ESCAPED_NUL = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")


@dataclass(frozen=True)
class Job:
    """One row of ``_private_jobs``, with its task identifier and queue name resolved.

    ``attempts`` counts the current attempt once a worker has fetched the job.
    ``flags`` maps each flag to ``True``, as graphile-worker stores them.
    """

    id: int
    task_identifier: str
    payload: Any
    queue_name: str | None
    priority: int
    run_at: datetime
    attempts: int
    max_attempts: int
    key: str | None
    revision: int
    flags: Mapping[str, bool] | None
    last_error: str | None
    created_at: datetime
    updated_at: datetime
    locked_at: datetime | None
    locked_by: str | None
    task_id: int
    job_queue_id: int | None

    @property
    def is_last_attempt(self) -> bool:
        return self.attempts >= self.max_attempts

    @classmethod
    def from_row(cls, row: Mapping[str, Any], *, task_identifier: str, queue_name: str | None) -> Job:
        """Build a job from a ``_private_jobs`` row fetched as a dict."""
        return cls(
            id=row["id"],
            task_identifier=task_identifier,
            payload=row["payload"],
            queue_name=queue_name,
            priority=row["priority"],
            run_at=row["run_at"],
            attempts=row["attempts"],
            max_attempts=row["max_attempts"],
            key=row["key"],
            revision=row["revision"],
            flags=row["flags"],
            last_error=row["last_error"],
            created_at=row["created_at"],
            updated_at=row["updated_at"],
            locked_at=row["locked_at"],
            locked_by=row["locked_by"],
            task_id=row["task_id"],
            job_queue_id=row["job_queue_id"],
        )


@dataclass(frozen=True)
class JobSpec:
    """A job to add: the task identifier, its payload and the options of ``add_job``.

    Every option left at ``None`` takes the database's default: no queue,
    ``run_at`` now, 25 attempts, priority 0, no flags. Create specs with
    `JobSpec.create`, which validates every field.
    """

    identifier: str
    payload: Any = None
    queue_name: str | None = None
    run_at: datetime | None = None
    max_attempts: int | None = None
    job_key: str | None = None
    job_key_mode: JobKeyMode | None = None
    priority: int | None = None
    flags: tuple[str, ...] | None = field(default=None)

    @classmethod
    def create(
        cls,
        identifier: str,
        payload: Any = None,
        *,
        queue_name: str | None = None,
        run_at: datetime | None = None,
        max_attempts: int | None = None,
        job_key: str | None = None,
        job_key_mode: str | None = None,
        priority: int | None = None,
        flags: Sequence[str] | None = None,
    ) -> JobSpec:
        """Validate the arguments and return the spec; raise `ValidationError` on the first bad one."""
        spec = cls(
            identifier=identifier,
            payload=payload,
            queue_name=queue_name,
            run_at=run_at,
            max_attempts=max_attempts,
            job_key=job_key,
            job_key_mode=job_key_mode,  # type: ignore[arg-type]  # checked by validate()
            priority=priority,
            flags=_flags_tuple(flags),
        )
        spec.validate()
        return spec

    def with_payload(self, payload: Any) -> JobSpec:
        """Return a copy of this spec with another payload (validated)."""
        spec = JobSpec(
            identifier=self.identifier,
            payload=payload,
            queue_name=self.queue_name,
            run_at=self.run_at,
            max_attempts=self.max_attempts,
            job_key=self.job_key,
            job_key_mode=self.job_key_mode,
            priority=self.priority,
            flags=self.flags,
        )
        payload_to_json(payload)
        return spec

    def validate(self) -> None:
        """Check every field; raise `ValidationError` naming the field, the value and the allowed range."""
        _check_text("identifier", self.identifier, MAX_IDENTIFIER_LENGTH, required=True)
        _check_text("queue_name", self.queue_name, MAX_QUEUE_NAME_LENGTH)
        _check_text("job_key", self.job_key, MAX_JOB_KEY_LENGTH)
        _check_smallint("priority", self.priority, SMALLINT_MIN)
        _check_smallint("max_attempts", self.max_attempts, 1)
        _check_run_at(self.run_at)
        _check_job_key_mode(self.job_key_mode)
        _check_flags(self.flags)
        payload_to_json(self.payload)

    def payload_json(self) -> str:
        """Return the payload as JSON text, ``{}`` for a ``None`` payload."""
        return payload_to_json(self.payload)


def payload_to_json(payload: Any) -> str:
    """Serialize a payload to JSON text; ``None`` becomes ``{}`` as in graphile-worker.

    Raises `ValidationError` for values JSON cannot hold (NaN, Infinity,
    objects of unknown types) and for NUL characters, which PostgreSQL cannot
    convert to ``jsonb`` or text (graphile-worker's ``add_jobs`` casts payloads to ``jsonb``).
    """
    if payload is None:
        return "{}"
    try:
        text = json.dumps(payload, allow_nan=False, separators=(",", ":"))
    except ValueError as error:
        raise ValidationError(
            f"payload is invalid: {error}. JSON has no NaN or Infinity; send such numbers as strings or null."
        ) from error
    except TypeError as error:
        raise ValidationError(
            f"payload is invalid: {error}. A payload must be made of dict, list, str, "
            "int, float, bool and None; convert other values (dates, decimals, bytes) first."
        ) from error
    if _ESCAPED_NUL.search(text):
        raise ValidationError(
            "payload is invalid: it contains a NUL character (\\u0000), which PostgreSQL "
            "cannot convert to jsonb or text; remove it or encode the data (for example as base64)."
        )
    return text


def _flags_tuple(flags: Sequence[str] | None) -> tuple[str, ...] | None:
    if flags is None:
        return None
    if isinstance(flags, str):
        raise ValidationError(
            f"flags is invalid: {flags!r} is a string; pass a list of strings, such as [{flags!r}]."
        )
    return tuple(flags)


def _check_text(name: str, value: str | None, max_length: int, *, required: bool = False) -> None:
    if value is None:
        if required:
            raise ValidationError(f"{name} is missing: pass a string of 1 to {max_length} characters.")
        return
    if not isinstance(value, str):
        raise ValidationError(
            f"{name} is invalid: {value!r} is of type {type(value).__name__}; "
            f"pass a string of 1 to {max_length} characters."
        )
    if not 1 <= len(value) <= max_length:
        shown = value if len(value) <= 40 else value[:40] + "..."
        raise ValidationError(
            f"{name} is invalid: {shown!r} has {len(value)} characters; it must have 1 to {max_length}."
        )


def _check_smallint(name: str, value: int | None, minimum: int) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationError(
            f"{name} is invalid: {value!r} is not an integer; "
            f"pass an integer from {minimum} to {SMALLINT_MAX}."
        )
    if not minimum <= value <= SMALLINT_MAX:
        raise ValidationError(
            f"{name} is invalid: {value} is out of range; it must be from {minimum} to {SMALLINT_MAX}."
        )


def _check_run_at(run_at: datetime | None) -> None:
    if run_at is None:
        return
    if not isinstance(run_at, datetime):
        raise ValidationError(
            f"run_at is invalid: {run_at!r} is not a datetime; pass an aware datetime, "
            "such as datetime.now(timezone.utc) + timedelta(minutes=5)."
        )
    if run_at.tzinfo is None or run_at.tzinfo.utcoffset(run_at) is None:
        raise ValidationError(
            f"run_at is invalid: {run_at.isoformat()} has no time zone; pass an aware "
            "datetime, such as datetime(..., tzinfo=timezone.utc)."
        )


def _check_job_key_mode(mode: str | None) -> None:
    if mode is None or mode in JOB_KEY_MODES:
        return
    raise ValidationError(
        f"job_key_mode is invalid: {mode!r}; it must be one of " + ", ".join(JOB_KEY_MODES) + "."
    )


def _check_flags(flags: tuple[str, ...] | None) -> None:
    if flags is None:
        return
    for flag in flags:
        if not isinstance(flag, str) or not flag:
            raise ValidationError(
                f"flags is invalid: {flag!r} is not a non-empty string; pass a list of flag names."
            )
