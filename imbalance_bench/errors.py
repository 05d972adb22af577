"""User errors and the exit codes of every command.

A user error is an `ImbenchError`: the command prints its message as one line and exits with
EXIT_USER_ERROR. The exit codes of all three commands (imbench, imbench-report, reproduce) are
in one table here, so that one value never means two things.
"""

import argparse
import re
import sys
from typing import NoReturn

# Exit codes (0: done). Each name says which commands use it:
#
#   code  name                    command(s)                          meaning
#   1     EXIT_TABLE_RUN_FAILED   reproduce                           a run of the table failed, or no report was written
#   2     EXIT_USER_ERROR         imbench, imbench-report, reproduce  a mistake the user can fix; the one line says which
#   75    EXIT_STOPPED            imbench                             stopped by a signal with what was done saved
#                                                                     (EX_TEMPFAIL: run the same command again)
#   130   EXIT_TABLE_INTERRUPTED  reproduce                           stopped by Ctrl-C (128 + SIGINT, as a shell reports it)
EXIT_TABLE_RUN_FAILED = 1
EXIT_USER_ERROR = 2
EXIT_STOPPED = 75
EXIT_TABLE_INTERRUPTED = 130

_CLASS_PREFIX = re.compile(r"^(?:[\w.]+\.)?\w+(?:Error|Diverged): ")


class ImbenchError(Exception):
    """A problem the user can fix (bad config value, missing dataset, missing weights)."""


class ConfigError(ImbenchError):
    """A config key holds a value that is not allowed; the message names the key."""


class DataError(ImbenchError):
    """A dataset file is missing or unreadable; the message names the file."""


class ProcessError(DataError):
    """A failure of one process of a DDP run only (the others do not meet it): that process prints
    it, where errors every process meets are printed by rank 0 alone."""


def user_message(exc: BaseException) -> str:
    """The one line to show for a user error.

    An error raised in a DataLoader worker comes back with the worker's traceback in its
    message ("Caught DataError in DataLoader worker process 0. Original Traceback ..."); its
    last line is the original message, behind the exception's class name.
    """
    text = str(exc).strip()
    if "Original Traceback" in text:
        last = [line for line in text.splitlines() if line.strip()][-1].strip()
        return _CLASS_PREFIX.sub("", last)
    return text.splitlines()[0] if text else type(exc).__name__


def print_user_error(prog: str, message: str) -> None:
    """Print `PROG: error: MESSAGE` as one line to stderr."""
    sys.stderr.write(f"{prog}: error: {message}\n")
    sys.stderr.flush()


def exit_user_error(prog: str, message: str) -> NoReturn:
    """Print `PROG: error: MESSAGE` as one line to stderr and exit with the user-error code 2."""
    print_user_error(prog, message)
    raise SystemExit(EXIT_USER_ERROR)


class OneLineArgumentParser(argparse.ArgumentParser):
    """argparse whose usage errors are one line and exit 2, like every other user error here."""

    def error(self, message: str) -> None:
        exit_user_error(self.prog, message)
