"""Bounded reading of user input: the helpers every reader uses to refuse an oversized or
overly nested file before it allocates for it.

Each reader names its own limits as module constants (all of them are listed in docs/limits.md);
what they share lives here:

- ``read_text_bounded``: the file's size is checked with ``stat`` before a byte is read, and at
  most ``max_bytes + 1`` bytes are read (a file that grows while it is read is still caught); the
  text is decoded as UTF-8 with an optional leading BOM dropped (``utf-8-sig``).
- ``json_loads_bounded``: ``json.loads`` whose every failure is a ``ValueError`` with a one-line
  message: invalid JSON, an integer longer than Python's digit limit (``sys.get_int_max_str_digits``),
  or nesting deeper than ``max_depth``. The depth is measured after parsing (the document is
  already within its byte limit, so parsing is bounded); documents so deep that the C parser hits
  the interpreter's recursion limit are refused the same way.
- ``brief``: a user-supplied value shortened for an error line.
- ``parse_duration``: a wall-time option (``90s``, ``20m``, ``1.5h``) in seconds.
"""

from __future__ import annotations

import json
import re
import reprlib
import stat
from pathlib import Path

from mcompress.core.errors import InputError

MAX_JSON_DEPTH = 64  # objects/arrays inside each other; every JSON file mcompress reads needs < 10
_BRIEF = reprlib.Repr()  # keyword arguments to Repr() need Python 3.12
_BRIEF.maxstring, _BRIEF.maxother, _BRIEF.maxlist, _BRIEF.maxdict, _BRIEF.maxlevel = 80, 80, 4, 4, 2
_BRIEF.maxtuple = _BRIEF.maxset = 4
MAX_SHOWN_CHARS = 160  # of a repr in an error line


def brief(value, limit: int = 80) -> str:
    """``value`` for an error message: a string as itself cut at ``limit`` characters, anything
    else as a shortened repr."""
    if isinstance(value, str):
        return value if len(value) <= limit else value[:limit] + "…"
    return brief_repr(value)


def brief_repr(value) -> str:
    """repr(value) shortened for an error message (strings quoted, containers cut after a few items)."""
    try:
        text = _BRIEF.repr(value)
    except ValueError:  # an int too long for str()
        return f"<{type(value).__name__}>"
    return text if len(text) <= MAX_SHOWN_CHARS else text[:MAX_SHOWN_CHARS] + "…"


def file_size_within(path: Path, max_bytes: int, what: str, hint: str | None = None) -> int:
    """The size of ``path``; InputError when it is over ``max_bytes`` or not a regular file (a
    FIFO or device would block or never end), before anything is read."""
    try:
        info = path.stat()
    except OSError as err:
        raise InputError(f"cannot read {what} {path}: {err.strerror}.") from None
    if not stat.S_ISREG(info.st_mode):
        raise InputError(f"{what} {path} is not a regular file.", "Pass a file, not a pipe, device or directory.")
    size = info.st_size
    if size > max_bytes:
        raise InputError(f"{what} {path} is {size:,} bytes, over the limit of {max_bytes:,} bytes.",
                         hint or "See docs/limits.md.")
    return size


def read_bytes_bounded(path: Path, max_bytes: int, what: str, hint: str | None = None) -> bytes:
    file_size_within(path, max_bytes, what, hint)
    try:
        with open(path, "rb") as f:
            data = f.read(max_bytes + 1)
    except OSError as err:
        raise InputError(f"cannot read {what} {path}: {err.strerror}.") from None
    if len(data) > max_bytes:
        raise InputError(f"{what} {path} grew over the limit of {max_bytes:,} bytes while it was read.",
                         hint or "See docs/limits.md.")
    return data


def read_text_bounded(path: Path, max_bytes: int, what: str, hint: str | None = None) -> str:
    """The UTF-8 text of ``path`` (a leading BOM dropped), refused before reading when over ``max_bytes``."""
    data = read_bytes_bounded(path, max_bytes, what, hint)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise InputError(f"{what} {path} is not UTF-8 text (byte {err.start}).", "Re-encode it as UTF-8.") from None


def json_depth(value) -> int:
    """Nesting depth of parsed JSON (a scalar is 0, ``[]`` is 1), without recursion."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            node = list(node.values())
        if isinstance(node, list):
            depth += 1
            deepest = max(deepest, depth)
            stack.extend((child, depth) for child in node if isinstance(child, (dict, list)))
    return deepest


def json_loads_bounded(text: str | bytes, max_depth: int = MAX_JSON_DEPTH):
    """``json.loads`` with every failure a one-line ValueError (see the module docstring)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{err.msg} at line {err.lineno} column {err.colno}") from None
    except RecursionError:
        raise ValueError(f"nested deeper than {max_depth} levels") from None
    except (ValueError, TypeError) as err:  # an integer over the digit limit; bytes that are not UTF-8
        raise ValueError(str(err).splitlines()[0] if str(err) else type(err).__name__) from None
    if json_depth(value) > max_depth:
        raise ValueError(f"nested deeper than {max_depth} levels")
    return value


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h)?\s*$")


def parse_duration(text: str, option: str = "--time-budget") -> float:
    """Seconds of ``90s``, ``20m``, ``1.5h`` or a plain number of seconds (InputError otherwise)."""
    match = _DURATION.match(str(text).lower())
    if not match or float(match.group(1)) <= 0:
        raise InputError(f"{option} {text!r} is not a duration.", "Give e.g. 90s, 20m or 1.5h.")
    return float(match.group(1)) * {"s": 1, "m": 60, "h": 3600}[match.group(2) or "s"]

