"""The slowlog plugin: warnings for slow completed and failed jobs, and its threshold setting."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import gw_plugin_slowlog
import pytest
from gw_plugin_slowlog import SlowLog, read_threshold

from gwcore import ConfigurationError, HookResult, JobContext, hookimpl
from gwcore.testing import AddJob, RunUntilIdle, WorkerFactory

# The tasks sleep this long, and the plugin's threshold is below it, so the warning is certain.
NAP_SECONDS = 0.05
LOW_THRESHOLD = 0.01


async def nap(payload: Any, ctx: JobContext) -> None:
    await asyncio.sleep(NAP_SECONDS)


async def nap_then_fail(payload: Any, ctx: JobContext) -> None:
    await asyncio.sleep(NAP_SECONDS)
    raise RuntimeError("disk full")


async def quick(payload: Any, ctx: JobContext) -> None:
    return None


def slowlog_messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.name == "gwcore.slowlog"]


def slowlog_levels(caplog: pytest.LogCaptureFixture) -> list[int]:
    return [record.levelno for record in caplog.records if record.name == "gwcore.slowlog"]


async def test_slow_job_logs_warning(
    gw_worker_factory: WorkerFactory,
    gw_add_job: AddJob,
    gw_run_until_idle: RunUntilIdle,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(gw_plugin_slowlog.plugin, "threshold", LOW_THRESHOLD)
    worker = gw_worker_factory(tasks={"nap": nap}, plugins=[gw_plugin_slowlog])
    job = await gw_add_job("nap", {}, worker=worker)
    assert job is not None
    caplog.set_level(logging.INFO, logger="gwcore.slowlog")

    await gw_run_until_idle(worker)

    messages = slowlog_messages(caplog)
    assert len(messages) == 1, messages
    assert messages[0].startswith(f"slow job nap {job.id} took ")
    assert messages[0].endswith(f" s (threshold {LOW_THRESHOLD:g} s)")
    seconds = float(messages[0].split(" took ")[1].split(" s ")[0])
    assert seconds >= NAP_SECONDS
    assert slowlog_levels(caplog) == [logging.WARNING]
    assert gw_plugin_slowlog.plugin.started == {}


async def test_fast_job_logs_nothing(
    gw_worker_factory: WorkerFactory,
    gw_add_job: AddJob,
    gw_run_until_idle: RunUntilIdle,
    caplog: pytest.LogCaptureFixture,
) -> None:
    plugin = SlowLog(threshold=60.0)
    worker = gw_worker_factory(tasks={"quick": quick}, plugins=[plugin])
    await gw_add_job("quick", {}, worker=worker)
    await gw_add_job("quick", {}, worker=worker)
    caplog.set_level(logging.INFO, logger="gwcore.slowlog")

    await gw_run_until_idle(worker)

    assert slowlog_messages(caplog) == []
    assert plugin.started == {}


async def test_slow_failure_logs_attempt(
    gw_worker_factory: WorkerFactory,
    gw_add_job: AddJob,
    gw_run_until_idle: RunUntilIdle,
    caplog: pytest.LogCaptureFixture,
) -> None:
    plugin = SlowLog(threshold=LOW_THRESHOLD)
    worker = gw_worker_factory(tasks={"nap_then_fail": nap_then_fail}, plugins=[plugin])
    job = await gw_add_job("nap_then_fail", {}, worker=worker, max_attempts=1)
    assert job is not None
    caplog.set_level(logging.INFO, logger="gwcore.slowlog")

    await gw_run_until_idle(worker)

    messages = slowlog_messages(caplog)
    assert len(messages) == 1, messages
    assert messages[0].startswith(f"slow job nap_then_fail {job.id} took ")
    assert messages[0].endswith(f" s (threshold {LOW_THRESHOLD:g} s) and failed (attempt 1 of 1)")
    assert plugin.started == {}


class RejectAll:
    @hookimpl
    def gw_before_job_run(self, ctx: Any) -> HookResult:
        return HookResult.fail("rejected before the task started")


async def test_rejected_job_logs_nothing(
    gw_worker_factory: WorkerFactory,
    gw_add_job: AddJob,
    gw_run_until_idle: RunUntilIdle,
    caplog: pytest.LogCaptureFixture,
) -> None:
    plugin = SlowLog(threshold=0.0)
    worker = gw_worker_factory(tasks={"nap": nap}, plugins=[plugin, RejectAll()])
    await gw_add_job("nap", {}, worker=worker, max_attempts=1)
    caplog.set_level(logging.INFO, logger="gwcore.slowlog")

    await gw_run_until_idle(worker)

    assert slowlog_messages(caplog) == []
    assert plugin.started == {}


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, 1.0),
        ({"GW_SLOWLOG_THRESHOLD": ""}, 1.0),
        ({"GW_SLOWLOG_THRESHOLD": "2.5"}, 2.5),
        ({"GW_SLOWLOG_THRESHOLD": " 0 "}, 0.0),
    ],
)
def test_threshold_valid_values(environ: dict[str, str], expected: float) -> None:
    assert read_threshold(environ) == expected


@pytest.mark.parametrize("text", ["abc", "-1", "nan", "inf", "1s"])
def test_threshold_invalid_values(text: str) -> None:
    with pytest.raises(ConfigurationError) as raised:
        read_threshold({"GW_SLOWLOG_THRESHOLD": text})
    message = str(raised.value)
    assert message.startswith(f"GW_SLOWLOG_THRESHOLD is invalid: {text!r}")
    assert "such as 0.5" in message


@pytest.mark.parametrize("threshold", [-0.5, float("nan"), "1", True])
def test_slowlog_rejects_bad_threshold(threshold: Any) -> None:
    with pytest.raises(ConfigurationError, match=r"^threshold is invalid: "):
        SlowLog(threshold=threshold)
