"""A gwcore plugin for the plugin discovery tests, installed through a ``gwcore.plugins`` entry point.

Its ``gw_before_job_schedule`` acts on the job's payload:

- ``{"reject": REASON}`` fails the job with REASON, so nothing is inserted.
- ``{"skip": true}`` skips the job.
- any other dict gets ``"stamped_by": "gw_test_plugin"`` added.
"""

from __future__ import annotations

from gwcore import JobScheduleResult
from gwcore.contexts import BeforeJobScheduleContext


def gw_before_job_schedule(ctx: BeforeJobScheduleContext) -> JobScheduleResult | None:
    payload = ctx.payload
    if not isinstance(payload, dict):
        return None
    if "reject" in payload:
        return JobScheduleResult.fail(str(payload["reject"]))
    if payload.get("skip") is True:
        return JobScheduleResult.SKIP
    return JobScheduleResult.continue_with({**payload, "stamped_by": "gw_test_plugin"})
