"""Stop signals: how SIGTERM, SIGINT and SIGUSR2 end an `imbench` command.

A signal is handled in one of two ways, whatever moment it arrives:
- inside the training loop, `StopRequest` defers it to the end of the current step, where the
  loop writes `last.pt` (with its place inside the epoch) and raises `Interrupted`;
- anywhere else (start-up and its imports, reading the data, the final writes), `stop_at_once`
  raises `Interrupted` where the program is: an atomic write deletes its temporary file on the way
  out, and the lock on the run directory is released.
Either way the command prints one line saying what stopped it and exits with EXIT_STOPPED (errors.py).
`Interrupted` is a BaseException, like KeyboardInterrupt, so that Hydra's own error reporting (which
prints a traceback for any Exception) lets it through to the CLI.

Only the standard library is imported here: `imbench` installs these handlers before its heavy imports.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from contextlib import contextmanager
from typing import Any, Iterator

from imbalance_bench.errors import EXIT_STOPPED

SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR2)


class Interrupted(BaseException):
    """The command stopped on SIGTERM / SIGINT / SIGUSR2; the message says where and how to go on,
    `signum` which signal it was."""

    def __init__(self, message: str, signum: int | None = None):
        super().__init__(message)
        self.signum = signum


#: what the process is doing, for the line printed when a signal stops it outside the training loop
_stage = ["start-up"]
#: the stop signal `stop_at_once` received (an exception raised inside an import or a finaliser can be
#: swallowed or turned into another error: the CLI then still reports the stop)
_received: list[int] = []


def set_stage(description: str) -> None:
    """Name what the process does from now on ("reading the data", "writing the results")."""
    _stage[0] = description


def signal_name(signum: int) -> str:
    return signal.Signals(signum).name


def _stop_now(signum: int, frame: Any) -> None:
    _received[:] = [signum]
    raise stopped_now(signum)


def stopped_now(signum: int) -> Interrupted:
    return Interrupted(f"stopped by {signal_name(signum)} during {_stage[0]}; run the same command again "
                       "to start or resume the run", signum)


def received() -> int | None:
    """The signal that stopped the command outside the training loop, if one did."""
    return _received[0] if _received else None


def _install(handler) -> dict[int, Any]:
    """Set `handler` for every stop signal; returns the handlers it replaced (none off the main thread,
    where Python cannot set handlers)."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    return {signum: signal.signal(signum, handler) for signum in SIGNALS}


def _restore(previous: dict[int, Any]) -> None:
    for signum, handler in previous.items():
        signal.signal(signum, handler)


@contextmanager
def stop_at_once() -> Iterator[None]:
    """Within the block a stop signal raises `Interrupted` at once; the handlers before are put back after."""
    previous = _install(_stop_now)
    if _stop_now not in previous.values():  # the outermost block: a command starts
        set_stage("start-up")
        _received.clear()
    try:
        yield
    finally:
        _restore(previous)


def report_stop(prog: str, exc: Interrupted) -> int:
    """Print the one line of a stopped command (`PROG: stopped by ...`, not an error; in a torchrun
    run from rank 0 alone) and return its exit code."""
    if os.environ.get("RANK", "0") == "0":
        sys.stderr.write(f"{prog}: {exc}\n")
        sys.stderr.flush()
    return EXIT_STOPPED


class StopRequest:
    """Inside the training loop: SIGTERM and SIGINT (what SLURM sends before pre-emption, and Ctrl-C)
    and SIGUSR2 (what SLURM sends ahead of a time limit when asked, as submitit does) become a request
    that the loop reads after each step. A second signal stops at once, unless `escalate` is false (a
    DDP run, where one SIGTERM may reach a process twice: from SLURM and again from torchrun). On exit
    the handlers in place before are put back (stop_at_once's, or submitit's SIGUSR2 handler, which
    requeues the job); a request the loop did not act on (it came during the last evaluation) then
    stops the command, as a signal anywhere else does."""

    def __init__(self, escalate: bool = True):
        self.signal: int | None = None
        self.escalate = escalate
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "StopRequest":
        self._previous = _install(self._handle)
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        _restore(self._previous)
        if exc_type is None and self.signal is not None:
            raise Interrupted(f"stopped by {self.name} at the end of training; run the same command again "
                              "to write the results", self.signal)

    def _handle(self, signum, frame) -> None:
        if self.signal is not None and self.escalate:
            raise Interrupted(f"stopped at once by a second {signal_name(signum)}; run the same command again "
                              "to resume from the last checkpoint", signum)
        self.signal = self.signal or signum

    def adopt(self, signum: int) -> None:
        """Take `signum` (another process's signal, agreed across a DDP run) as this process's request."""
        if signum and self.signal is None:
            self.signal = signum

    @property
    def requested(self) -> bool:
        return self.signal is not None

    @property
    def name(self) -> str:
        return signal_name(self.signal) if self.signal is not None else ""
