"""Values that interceptor hooks return to steer what happens next."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any, ClassVar


class Outcome(Enum):
    """Decision of an interceptor chain."""

    CONTINUE = "continue"
    SKIP = "skip"
    FAIL = "fail"


@dataclass(frozen=True)
class HookResult:
    """Result of ``gw_before_job_run`` and ``gw_after_job_run``.

    Use the constants `HookResult.CONTINUE` and `HookResult.SKIP`, or
    `HookResult.fail` with a reason.
    """

    outcome: Outcome
    reason: str | BaseException | None = None

    CONTINUE: ClassVar[HookResult]
    SKIP: ClassVar[HookResult]

    @staticmethod
    def fail(reason: str | BaseException) -> HookResult:
        """Fail the job with ``reason``, a message or an exception."""
        return HookResult(Outcome.FAIL, reason)

    @property
    def is_continue(self) -> bool:
        return self.outcome is Outcome.CONTINUE

    @property
    def is_skip(self) -> bool:
        return self.outcome is Outcome.SKIP

    @property
    def is_fail(self) -> bool:
        return self.outcome is Outcome.FAIL


HookResult.CONTINUE = HookResult(Outcome.CONTINUE)
HookResult.SKIP = HookResult(Outcome.SKIP)


_NO_PAYLOAD: Any = object()


@dataclass(frozen=True)
class JobScheduleResult:
    """Result of ``gw_before_job_schedule``.

    Use `JobScheduleResult.continue_with` to pass on a new payload,
    `JobScheduleResult.SKIP` to insert nothing, or `JobScheduleResult.fail`.
    """

    outcome: Outcome
    payload: Any = _NO_PAYLOAD
    reason: str | BaseException | None = None

    SKIP: ClassVar[JobScheduleResult]

    @staticmethod
    def continue_with(payload: Any) -> JobScheduleResult:
        """Replace the payload for the next implementation and for the insert."""
        return JobScheduleResult(Outcome.CONTINUE, payload)

    @staticmethod
    def fail(reason: str | BaseException) -> JobScheduleResult:
        """Reject the job: the add raises `gwcore.errors.JobScheduleError` and inserts nothing."""
        return JobScheduleResult(Outcome.FAIL, reason=reason)

    @property
    def has_payload(self) -> bool:
        return self.payload is not _NO_PAYLOAD


JobScheduleResult.SKIP = JobScheduleResult(Outcome.SKIP)


def describe_reason(reason: str | BaseException | None) -> str:
    """Return a reason as text for logs and ``last_error``."""
    if reason is None:
        return "no reason given"
    if isinstance(reason, BaseException):
        return f"{type(reason).__name__}: {reason}"
    return reason
