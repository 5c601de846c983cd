"""gwcore: a PostgreSQL job queue for Python, built on pluggy, that speaks graphile-worker's schema."""

from gwcore.add import (
    JobKeyContentionError,
    add_job,
    add_job_spec,
    add_job_spec_sync,
    add_job_sync,
    add_jobs,
    add_jobs_sync,
)
from gwcore.admin import release_stale_locks
from gwcore.contexts import TaskResult
from gwcore.errors import (
    ConfigurationError,
    EmbeddedDatabaseError,
    GwError,
    JobScheduleError,
    PluginError,
    SchemaError,
    SchemaTooNewError,
    TaskLoadError,
    ValidationError,
)
from gwcore.hookspecs import hookimpl
from gwcore.job import Job, JobSpec
from gwcore.plugins import PluginManager, create_plugin_manager
from gwcore.results import HookResult, JobScheduleResult
from gwcore.task_context import JobContext
from gwcore.tasks import TaskRegistry, task
from gwcore.worker import Worker

__version__ = "0.1.0"

__all__ = [
    "ConfigurationError",
    "EmbeddedDatabaseError",
    "GwError",
    "HookResult",
    "Job",
    "JobContext",
    "JobKeyContentionError",
    "JobScheduleError",
    "JobScheduleResult",
    "JobSpec",
    "PluginError",
    "PluginManager",
    "SchemaError",
    "SchemaTooNewError",
    "TaskLoadError",
    "TaskRegistry",
    "TaskResult",
    "ValidationError",
    "Worker",
    "__version__",
    "add_job",
    "add_job_spec",
    "add_job_spec_sync",
    "add_job_sync",
    "add_jobs",
    "add_jobs_sync",
    "create_plugin_manager",
    "hookimpl",
    "release_stale_locks",
    "task",
]
