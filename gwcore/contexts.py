"""The ``ctx`` argument of each hook: one frozen dataclass per hook."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit, urlunsplit

from psycopg.conninfo import conninfo_to_dict, make_conninfo

from gwcore.job import Job, JobSpec

if TYPE_CHECKING:
    from gwcore.local_queue import LocalQueueMode
    from gwcore.worker import Worker

ShutdownReason = Literal["signal", "graceful", "error"]
MASK = "********"
# libpq parameters whose values are secrets.
SECRET_PARAMETERS = ("password", "sslpassword")


@dataclass(frozen=True)
class DatabaseInfo:
    """Connection details of a worker: the connection string with its password masked, and its parts."""

    url: str
    host: str | None
    port: str | None
    dbname: str | None
    user: str | None

    @classmethod
    def from_conninfo(cls, conninfo: str) -> DatabaseInfo:
        """Describe a connection string (URL or ``key=value`` form) without its password."""
        try:
            params = conninfo_to_dict(conninfo)
        except Exception:  # psycopg raises ProgrammingError for a malformed string
            return cls(url="<invalid connection string>", host=None, port=None, dbname=None, user=None)
        return cls(
            url=mask_password(conninfo),
            host=_as_text(params.get("host")),
            port=_as_text(params.get("port")),
            dbname=_as_text(params.get("dbname")),
            user=_as_text(params.get("user")),
        )


def mask_password(conninfo: str) -> str:
    """Return ``conninfo`` with any password replaced by asterisks."""
    if "://" in conninfo:
        parts = urlsplit(conninfo)
        netloc = parts.netloc
        if "@" in netloc:
            credentials, _, location = netloc.rpartition("@")
            user, has_password, _ = credentials.partition(":")
            if has_password:
                netloc = f"{user}:{MASK}@{location}"
        masked = urlunsplit(parts._replace(netloc=netloc))
        if "password=" in parts.query:
            query = "&".join(
                f"{item.partition('=')[0]}={MASK}" if item.partition("=")[0] in SECRET_PARAMETERS else item
                for item in parts.query.split("&")
            )
            masked = urlunsplit(parts._replace(netloc=netloc, query=query))
        return masked
    params = conninfo_to_dict(conninfo)
    for name in SECRET_PARAMETERS:
        if name in params:
            params[name] = MASK
    return make_conninfo("", **params)


def _as_text(value: Any) -> str | None:
    return None if value is None else str(value)


# ---------------------------------------------------------------------------
# Worker lifecycle
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class WorkerInitContext:
    database: DatabaseInfo
    schema: str
    concurrency: int


@dataclass(frozen=True)
class WorkerStartContext:
    database: DatabaseInfo
    worker_id: str
    extensions: Mapping[str, Any]
    worker: Worker


@dataclass(frozen=True)
class WorkerShutdownContext:
    database: DatabaseInfo
    worker_id: str
    reason: ShutdownReason
    error: BaseException | None
    worker: Worker


# ---------------------------------------------------------------------------
# Running a job
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class JobFetchContext:
    job: Job
    worker_id: str


@dataclass(frozen=True)
class BeforeJobRunContext:
    job: Job
    worker_id: str
    payload: Any


@dataclass(frozen=True)
class JobStartContext:
    job: Job
    worker_id: str


@dataclass(frozen=True)
class TaskResult:
    """Outcome of a task call: its return value, or the exception it raised."""

    value: Any = None
    error: BaseException | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class AfterJobRunContext:
    job: Job
    worker_id: str
    result: TaskResult
    duration: float


@dataclass(frozen=True)
class JobCompleteContext:
    job: Job
    worker_id: str
    duration: float


@dataclass(frozen=True)
class JobFailContext:
    job: Job
    worker_id: str
    error: BaseException
    will_retry: bool


@dataclass(frozen=True)
class JobPermanentlyFailContext:
    job: Job
    worker_id: str
    error: BaseException


@dataclass(frozen=True)
class JobInterruptedContext:
    job: Job
    worker_id: str
    reason: str


# ---------------------------------------------------------------------------
# Local queue
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class LocalQueueInitContext:
    worker_id: str


@dataclass(frozen=True)
class LocalQueueSetModeContext:
    worker_id: str
    old_mode: LocalQueueMode
    new_mode: LocalQueueMode


@dataclass(frozen=True)
class LocalQueueGetJobsCompleteContext:
    worker_id: str
    jobs_count: int


@dataclass(frozen=True)
class LocalQueueReturnJobsContext:
    worker_id: str
    jobs_count: int


@dataclass(frozen=True)
class LocalQueueRefetchDelayStartContext:
    worker_id: str
    duration: float
    threshold: int
    abort_threshold: int


@dataclass(frozen=True)
class LocalQueueRefetchDelayAbortContext:
    worker_id: str
    count: int
    abort_threshold: int


@dataclass(frozen=True)
class LocalQueueRefetchDelayExpiredContext:
    worker_id: str


# ---------------------------------------------------------------------------
# Adding jobs
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class BeforeJobScheduleContext:
    identifier: str
    payload: Any
    spec: JobSpec
