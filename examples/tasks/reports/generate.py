"""Task ``reports/generate``: a plain ``def`` task, run in the worker's thread pool."""

import time


def task(payload, ctx):
    time.sleep(0.1)  # simulates CPU or blocking I/O work
    rows = sum(range(payload.get("rows", 1000)))
    ctx.logger.info("report %s ready (checksum %d), attempt %d", payload["name"], rows, ctx.attempts)
