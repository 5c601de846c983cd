"""The task ``hello``: records its payload in runs.jsonl in the working directory."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def task(payload: Any, ctx: Any) -> None:
    with (Path.cwd() / "runs.jsonl").open("a", encoding="utf-8") as file:
        file.write(json.dumps({"identifier": "hello", "payload": payload}) + "\n")
