"""Admin and inspection commands of ``gw``: list, show and change jobs and queues.

Each command registers a subparser whose ``handler`` default is a coroutine
function ``handler(args, url) -> exit code``, which `gwcore.cli` calls.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

AddCommonOptions = Callable[[argparse.ArgumentParser], None]


def add_admin_commands(commands: Any, add_common_options: AddCommonOptions) -> None:
    """Add the admin subcommands to ``commands``, the ``gw`` parser's subparsers."""
