"""Task ``flaky``: fails on its first attempt to show retries with exponential backoff."""


def task(payload, ctx):
    if ctx.attempts < 2:
        raise ConnectionError("the upstream service is unavailable (first attempt fails on purpose)")
    ctx.logger.info("succeeded on attempt %d", ctx.attempts)
