"""Exception classes raised by gwcore.

Every error that gwcore raises on purpose derives from `GwError`, so an
application can catch them all in one place. Errors caused by bad input also
derive from `ValueError`.
"""

from __future__ import annotations


class GwError(Exception):
    """Base class of every error that gwcore raises on purpose."""


class ValidationError(GwError, ValueError):
    """An argument is invalid; the message names the field, the value and the allowed range."""


class ConfigurationError(GwError, ValueError):
    """The worker or CLI configuration is invalid or incomplete."""


class TaskLoadError(GwError):
    """A task module or task directory could not be loaded."""


class PluginError(GwError):
    """A plugin failed to load or register, or its hook implementation is invalid."""


class SchemaError(GwError):
    """The database schema could not be installed or is not usable."""


class SchemaTooNewError(SchemaError):
    """The database has a breaking migration newer than the ones this gwcore ships.

    Running against such a schema could corrupt jobs, so the worker does not
    start. The CLI exits with `EXIT_CODE` for this error.
    """

    EXIT_CODE = 57

    def __init__(self, message: str, *, latest_migration: int, latest_breaking: int, known: int):
        super().__init__(message)
        self.latest_migration = latest_migration
        self.latest_breaking = latest_breaking
        self.known = known


class JobScheduleError(GwError):
    """A `gw_before_job_schedule` hook rejected a job, so nothing was inserted."""


class EmbeddedDatabaseError(GwError):
    """The embedded PostgreSQL server is not installed or failed to start."""
