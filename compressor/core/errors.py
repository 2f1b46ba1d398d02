"""Errors a user can act on, and the process exit codes they map to.

Every error raised for bad input carries one line that names what is wrong and how to fix it;
the CLI prints that line (no traceback unless --debug) and exits with the error's code.
"""

from __future__ import annotations

import re
from enum import IntEnum

# C0/C1 controls, DEL and the Unicode line/paragraph separators: anything a terminal may break a line on.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


class ExitCode(IntEnum):
    OK = 0
    INTERNAL = 1  # a bug or an unexpected library failure; rerun with --debug for the traceback
    BAD_INPUT = 2  # model dir, data, recipe or command line is wrong; nothing was written
    GATE_FAILED = 3  # the build was made but broke an accuracy or latency budget
    TARGET_UNAVAILABLE = 4  # the target's runtime or hardware is missing on this machine
    INTERRUPTED = 130  # SIGINT/SIGTERM; no partial output is left in --out


class McompressError(Exception):
    exit_code: ExitCode = ExitCode.INTERNAL

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def one_line(self) -> str:
        """The message and hint as exactly one line: line breaks and other control characters a
        message quotes from the input (a path, a column name, a label) are shown escaped."""
        text = f"{self.message} {self.hint}".strip() if self.hint else self.message
        return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


class InputError(McompressError):
    """The user's model, data, recipe or command line is wrong."""

    exit_code = ExitCode.BAD_INPUT


class GateFailure(McompressError):
    exit_code = ExitCode.GATE_FAILED


class TargetUnavailable(McompressError):
    exit_code = ExitCode.TARGET_UNAVAILABLE


class NumericalFault(McompressError):
    """NaN/Inf where a finite number is needed: logits during evaluation, calibration ranges.
    (NaN/Inf in a checkpoint's weights is an InputError: the input is wrong.)"""

    exit_code = ExitCode.INTERNAL


class PassFailure(McompressError):
    """A pass could not produce a valid model (e.g. export parity broken)."""

    exit_code = ExitCode.INTERNAL

    def __init__(self, pass_name: str, message: str, passes_before: list[str] | None = None):
        before = ", ".join(passes_before or []) or "none"
        super().__init__(f"pass '{pass_name}' failed: {message} (passes that ran before it: {before})")
        self.pass_name = pass_name
