"""Task ``send_email``: pretends to send an email (it only logs it)."""

import asyncio


async def task(payload, ctx):
    await asyncio.sleep(0.05)  # simulates a call to a mail server
    ctx.logger.info("sent email to %s: %s", payload["to"], payload.get("subject", "(no subject)"))
    if payload.get("follow_up"):
        await ctx.add_job("send_email", {"to": payload["to"], "subject": "Following up"})
