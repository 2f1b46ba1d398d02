"""What every fuzz test of tests/fuzz checks, and its budget.

Each target is driven through its real entry point; an input must either be accepted or raise an
InputError (exit code 2 in the CLI) whose one_line() is exactly one printable line. Any other
exception (an internal error, exit 1), a RecursionError, or a call that runs past the deadline
(a hang) fails the test, and hypothesis shrinks the input.

Budget: in CI every property runs a fixed number of examples with a fixed seed
(``derandomize=True``), about 10-30 s per target on a 2-core machine. A longer campaign multiplies
the examples and draws new random ones:

    MCOMPRESS_FUZZ_SCALE=50 MCOMPRESS_FUZZ_RANDOM=1 pytest tests/fuzz --hypothesis-show-statistics

(MCOMPRESS_FUZZ_PHASES=generate,shrink skips the @example regressions and runs generated inputs only.)

Inputs that found a bug are kept in tests/fuzz/corpus/<target>/ and replayed by test_fuzz_corpus.py.
"""

from __future__ import annotations

import os
import re
from datetime import timedelta

from hypothesis import HealthCheck, Phase, currently_in_test_context, event, settings

from mcompress.core.errors import InputError, McompressError

SCALE = int(os.environ.get("MCOMPRESS_FUZZ_SCALE", "1"))
RANDOM = os.environ.get("MCOMPRESS_FUZZ_RANDOM") == "1"
# Which hypothesis phases run, e.g. "generate,shrink" (generated inputs only: how many bugs the
# generators find on their own, on an older commit) or "explicit" (the kept @example regressions only).
_PHASES = os.environ.get("MCOMPRESS_FUZZ_PHASES")
PHASES = [Phase[name.strip()] for name in _PHASES.split(",")] if _PHASES else list(Phase)
DEADLINE = timedelta(seconds=10)  # per example; the slowest real input takes well under 1 s
MAX_MESSAGE = 1500
_LINE_BREAKING = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def budget(examples: int):
    return settings(max_examples=examples * SCALE, derandomize=not RANDOM, deadline=DEADLINE, database=None, phases=PHASES,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much, HealthCheck.function_scoped_fixture],
                    print_blob=True)


def check_one_line(err: McompressError) -> str:
    line = err.one_line()
    assert line and "\n" not in line and "\r" not in line, repr(line)
    assert not _LINE_BREAKING.search(line), repr(line)
    assert len(line) < MAX_MESSAGE, f"{len(line)} characters: {line[:200]}…"
    return line


def accepted_or_input_error(call, *args, **kwargs):
    """call(*args) or the InputError it raised (checked to be one line); anything else propagates."""
    try:
        result = call(*args, **kwargs)
    except InputError as err:
        check_one_line(err)
        _event(f"{call.__name__}: refused")
        return err
    _event(f"{call.__name__}: accepted")
    return result


def _event(what: str) -> None:
    """Counted in --hypothesis-show-statistics (how many inputs each reader accepted)."""
    if currently_in_test_context():
        event(what)
