"""Run several worker processes on one host under one supervisor process.

``gw worker --processes N`` with N > 1 migrates the schema once, then starts
N children that each run the same ``gw worker`` command with ``--processes 1``,
because one Python process uses one CPU core. The children fetch jobs with
``FOR UPDATE SKIP LOCKED`` like any other workers, so the supervisor needs no
coordination beyond starting, signalling and restarting them.

- SIGINT or SIGTERM is forwarded to every child. The first makes children
  finish their jobs within the grace period, and a second one makes them stop
  at once.
- A child that exits while no stop was requested is logged and restarted after
  a delay that doubles from `RestartPolicy.initial_delay` up to
  `RestartPolicy.max_delay`. A child that exits 0 under ``--once`` has finished
  and is not restarted.
- Exit code 2 (invalid input) or 57 (schema too new) of a child stops the
  others and becomes the supervisor's exit code, since a restart cannot fix
  either. So do more than `RestartPolicy.max_restarts` restarts within
  `RestartPolicy.window` seconds, with exit code 1.

Children run in their own process group, so that Ctrl-C in a terminal reaches
only the supervisor, and each child receives each signal once, from the supervisor.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import threading
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from gwcore.errors import SchemaTooNewError

logger = logging.getLogger("gwcore.supervisor")

# Set in each child's environment to the supervisor's pid. A child with it skips the migration,
# because the supervisor already ran it, and stops when the supervisor is gone.
SUPERVISED_ENV = "GW_SUPERVISED"

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
# Exit codes that a restart cannot fix: invalid input and a schema that is too new.
FATAL_EXIT_CODES = frozenset({EXIT_USAGE, SchemaTooNewError.EXIT_CODE})
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
# Seconds between checks, in a child, that its supervisor still runs.
PARENT_CHECK_INTERVAL = 1.0


@dataclass(frozen=True)
class RestartPolicy:
    """When and how often the supervisor restarts a child that exited unexpectedly.

    All durations are in seconds.
    """

    initial_delay: float = 1.0
    max_delay: float = 30.0
    # A child that ran at least this long before it exited is restarted after `initial_delay` again.
    reset_after: float = 60.0
    max_restarts: int = 5
    window: float = 60.0


class Supervisor:
    """Starts ``processes`` children that each run ``command``, forwards stop signals and restarts them.

    ``once`` marks children that exit 0 when they run out of work, so that an
    exit 0 ends that child instead of causing a restart. ``env`` is the
    children's environment (default: this process's).
    """

    def __init__(
        self,
        command: Sequence[str],
        processes: int,
        *,
        once: bool = False,
        env: Mapping[str, str] | None = None,
        policy: RestartPolicy = RestartPolicy(),
        handle_signals: bool = True,
    ) -> None:
        if isinstance(processes, bool) or not isinstance(processes, int) or processes < 1:
            raise ValueError(f"processes is invalid: {processes!r}; pass a whole number >= 1.")
        self.command = list(command)
        self.processes = processes
        self.once = once
        self.env = dict(os.environ if env is None else env)
        self.policy = policy
        self._handle_signals = handle_signals
        self._children: dict[int, asyncio.subprocess.Process] = {}
        self._exit_codes: dict[int, int] = {}
        self._restart_times: deque[float] = deque()
        self._stop_signals: list[int] = []
        self._stopped: asyncio.Event | None = None
        self._failure_code: int | None = None

    @property
    def pids(self) -> dict[int, int]:
        """The pid of each running child, by its slot number (0 to ``processes`` - 1)."""
        return {slot: child.pid for slot, child in self._children.items() if child.returncode is None}

    @property
    def stopping(self) -> bool:
        """Whether a stop was requested by a signal, `stop` or a fatal child exit."""
        return bool(self._stop_signals)

    async def run(self) -> int:
        """Run the children until they stop, and return the exit code for the supervisor.

        Returns 0 when every child exited 0 (or died of the stop signal it was
        sent), the code of a child that exited with 2 or 57, and 1 otherwise.
        """
        self._stopped = asyncio.Event()
        self._install_signal_handlers()
        logger.info(
            "supervisor (pid %d) starting %d worker process(es)%s",
            os.getpid(),
            self.processes,
            " that run until no runnable job is left" if self.once else "",
        )
        try:
            slots = [asyncio.create_task(self._run_slot(slot)) for slot in range(self.processes)]
            try:
                await asyncio.gather(*slots)
            finally:
                for task in slots:
                    task.cancel()
                await asyncio.gather(*slots, return_exceptions=True)
                await self._kill_remaining()
        finally:
            self._remove_signal_handlers()

        code = self._exit_code()
        logger.info("supervisor (pid %d) stopped with exit code %d", os.getpid(), code)
        return code

    def stop(self, signum: int = signal.SIGTERM) -> None:
        """Forward ``signum`` to every running child and restart none of them.

        Calling it again forwards the signal again, which makes the children
        stop at once. Safe to call from a signal handler on the supervisor's loop.
        """
        self._stop_signals.append(signum)
        if self._stopped is not None:
            self._stopped.set()
        for slot, child in list(self._children.items()):
            self._send(slot, child, signum)

    # -- one child slot ------------------------------------------------------

    async def _run_slot(self, slot: int) -> None:
        """Start the child of ``slot``, and restart it after unexpected exits until a stop."""
        loop = asyncio.get_running_loop()
        delay = self.policy.initial_delay
        while not self.stopping:
            child = await self._start(slot)
            started = loop.time()
            code = await child.wait()
            del self._children[slot]
            runtime = loop.time() - started

            if self.stopping:
                self._exit_codes[slot] = self._code_after_stop(slot, child.pid, code)
                return
            if code == EXIT_OK and self.once:
                logger.info("worker process %d (pid %d) finished: no runnable job is left", slot, child.pid)
                self._exit_codes[slot] = code
                return
            if code in FATAL_EXIT_CODES:
                logger.error(
                    "worker process %d (pid %d) exited with %d, which a restart cannot fix; "
                    "stopping the other worker processes",
                    slot,
                    child.pid,
                    code,
                )
                self._fail(slot, code)
                return

            if runtime >= self.policy.reset_after:
                delay = self.policy.initial_delay
            if not self._allow_restart(loop.time()):
                logger.error(
                    "worker process %d (pid %d) %s; more than %d restarts within %.0f s, so the "
                    "supervisor stops the other worker processes",
                    slot,
                    child.pid,
                    describe_exit(code),
                    self.policy.max_restarts,
                    self.policy.window,
                )
                self._fail(slot, EXIT_ERROR)
                return
            logger.warning(
                "worker process %d (pid %d) %s after %.1f s; restarting it in %.1f s",
                slot,
                child.pid,
                describe_exit(code),
                runtime,
                delay,
            )
            if await self._wait_for_stop(delay):
                self._exit_codes[slot] = EXIT_OK
                return
            delay = min(delay * 2, self.policy.max_delay)

    async def _start(self, slot: int) -> asyncio.subprocess.Process:
        child = await asyncio.create_subprocess_exec(
            *self.command,
            stdin=asyncio.subprocess.DEVNULL,
            env=self.env,
            # A process group of its own keeps a terminal's Ctrl-C from reaching the child
            # directly, so that it gets SIGINT only once, from the supervisor.
            process_group=0,
        )
        self._children[slot] = child
        logger.info("started worker process %d (pid %d)", slot, child.pid)
        if self.stopping:
            # The stop arrived while the child was being started, so it missed the forwarded signal.
            self._send(slot, child, self._stop_signals[0])
        return child

    def _send(self, slot: int, child: asyncio.subprocess.Process, signum: int) -> None:
        if child.returncode is not None:
            return
        try:
            child.send_signal(signum)
        except ProcessLookupError:
            return  # it exited after the returncode check; its exit is handled in _run_slot
        logger.info("sent %s to worker process %d (pid %d)", signal.Signals(signum).name, slot, child.pid)

    def _code_after_stop(self, slot: int, pid: int, code: int) -> int:
        """Return the exit code of a child that exited after a stop, treating death by that signal as 0.

        A child installs its signal handlers before it fetches its first job,
        so a child that the forwarded signal killed held no job.
        """
        died_of_stop_signal = -code in self._stop_signals or (
            code == 130 and signal.SIGINT in self._stop_signals
        )
        if code == EXIT_OK or died_of_stop_signal:
            logger.info("worker process %d (pid %d) stopped", slot, pid)
            return EXIT_OK
        logger.warning("worker process %d (pid %d) %s during the stop", slot, pid, describe_exit(code))
        return code

    def _allow_restart(self, now: float) -> bool:
        """Record a restart at ``now`` and return whether it stays within the policy's rate limit."""
        self._restart_times.append(now)
        while self._restart_times and now - self._restart_times[0] > self.policy.window:
            self._restart_times.popleft()
        return len(self._restart_times) <= self.policy.max_restarts

    def _fail(self, slot: int, code: int) -> None:
        self._exit_codes[slot] = code
        if self._failure_code is None:
            self._failure_code = code
        if not self.stopping:
            self.stop(signal.SIGTERM)

    async def _wait_for_stop(self, seconds: float) -> bool:
        """Wait up to ``seconds`` and return whether a stop was requested meanwhile."""
        assert self._stopped is not None
        try:
            await asyncio.wait_for(self._stopped.wait(), seconds)
        except TimeoutError:
            return False
        return True

    async def _kill_remaining(self) -> None:
        """Kill children still running after the supervisor was cancelled, so that none outlives it."""
        for slot, child in list(self._children.items()):
            if child.returncode is None:
                logger.error("killing worker process %d (pid %d)", slot, child.pid)
                child.kill()
                await child.wait()

    def _exit_code(self) -> int:
        if self._failure_code is not None:
            return self._failure_code
        if all(self._exit_codes.get(slot) == EXIT_OK for slot in range(self.processes)):
            return EXIT_OK
        return EXIT_ERROR

    # -- signals -------------------------------------------------------------

    def _install_signal_handlers(self) -> None:
        if not self._handle_signals or threading.current_thread() is not threading.main_thread():
            return
        loop = asyncio.get_running_loop()
        for signum in STOP_SIGNALS:
            loop.add_signal_handler(signum, self._on_signal, signum)

    def _remove_signal_handlers(self) -> None:
        if not self._handle_signals or threading.current_thread() is not threading.main_thread():
            return
        loop = asyncio.get_running_loop()
        for signum in STOP_SIGNALS:
            loop.remove_signal_handler(signum)

    def _on_signal(self, signum: int) -> None:
        name = signal.Signals(signum).name
        if self.stopping:
            logger.warning("received %s again: forwarding it, so the worker processes stop at once", name)
        else:
            logger.info(
                "received %s: forwarding it to %d worker process(es); send it again to stop them at once",
                name,
                len(self.pids),
            )
        self.stop(signum)


def describe_exit(code: int) -> str:
    """Describe a child's return code: ``exited with 1`` or ``was killed by SIGKILL``."""
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"was killed by {name}"
    return f"exited with {code}"


def child_command(argv: Sequence[str]) -> list[str]:
    """Return the command that runs ``gw ARGV`` as one worker process of a supervisor.

    ``--processes 1`` goes last because argparse keeps the last value of a flag.
    """
    return [sys.executable, "-m", "gwcore.cli", *argv, "--processes", "1"]


def supervisor_pid(environ: Mapping[str, str]) -> int | None:
    """Return the supervisor's pid when this process is a supervised child, else None."""
    value = environ.get(SUPERVISED_ENV, "")
    return int(value) if value.isdigit() else None


async def stop_when_orphaned(parent_pid: int, stop: Callable[[], None]) -> None:
    """Call ``stop`` once this process's parent is no longer ``parent_pid``.

    A supervisor that is killed with SIGKILL cannot forward a signal, and its
    children are then adopted by another process, which changes their parent pid.
    """
    while os.getppid() == parent_pid:  # noqa: ASYNC110 - no event is set when a parent process exits
        await asyncio.sleep(PARENT_CHECK_INTERVAL)
    logger.warning("the supervisor (pid %d) is gone; this worker process stops", parent_pid)
    stop()


def worker_supervisor(
    argv: Sequence[str], processes: int, *, once: bool, embedded_url: str | None
) -> Supervisor:
    """Return the supervisor of ``processes`` children that each run ``gw ARGV --processes 1``.

    ``embedded_url`` is the URL of the embedded PostgreSQL that this process
    started, if any. The children get it in ``GW_CONNECTION`` so that they use
    that server instead of each starting (and, at exit, stopping) their own.
    """
    env = dict(os.environ)
    env[SUPERVISED_ENV] = str(os.getpid())
    if embedded_url is not None:
        env["GW_CONNECTION"] = embedded_url
    return Supervisor(child_command(argv), processes, once=once, env=env)
