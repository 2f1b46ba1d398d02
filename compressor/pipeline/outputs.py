"""Atomic build directories: written beside the destination, renamed into place when complete."""

from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from pathlib import Path

from mcompress.core.errors import InputError


def check_output_dir(out: Path, force: bool, inputs: list[Path]) -> None:
    """Refuse, before any work, an --out that exists (without --force), that holds an input, or
    that lies inside an input directory (--out MODEL_DIR/splits --force would replace the eval data)."""
    out = out.resolve()
    for path in inputs:
        path = path.resolve()
        if out == path or out in path.parents or path in out.parents:
            raise InputError(f"--out {out} would overwrite the input {path}.", "Choose an output directory outside the inputs.")
    if out.exists() and not force:
        raise InputError(f"output directory {out} already exists.", "Pass --force to replace it, or choose another --out.")
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} exists and is not a directory.")
    # Missing parents are created when the build is written (after every check has passed); the
    # nearest existing ancestor must be a writable directory.
    parent = next(p for p in out.parents if p.exists())
    if not parent.is_dir():
        raise InputError(f"--out {out} lies under {parent}, which is not a directory.", "Choose another --out.")
    if not os.access(parent, os.W_OK):
        raise InputError(f"cannot write into {parent}.", "Choose a writable --out.")


class _Interrupts:
    deferring = 0
    pending = False


def on_interrupt_signal(signum, frame) -> None:
    """SIGINT/SIGTERM handler (installed by the CLI): KeyboardInterrupt now, or, while a build is
    being renamed into place, right after it, so ``out`` is never left half replaced."""
    if _Interrupts.deferring:
        _Interrupts.pending = True
        return
    raise KeyboardInterrupt


@contextmanager
def interrupts_deferred():
    _Interrupts.deferring += 1
    try:
        yield
    finally:
        _Interrupts.deferring -= 1
        if not _Interrupts.deferring and _Interrupts.pending:
            _Interrupts.pending = False
            raise KeyboardInterrupt


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _sweep_stale(out: Path) -> None:
    """Leftovers of runs that were killed (SIGKILL, power loss) and could not clean up."""
    for path in out.parent.iterdir():
        for kind in ("partial", "previous"):
            prefix = f".{out.name}.{kind}-"
            if not path.name.startswith(prefix) or not path.name[len(prefix):].isdigit():
                continue
            if pid_alive(int(path.name[len(prefix):])):
                continue
            if kind == "previous" and not out.exists():
                continue  # killed between the two renames: this is the only copy of the previous build
            shutil.rmtree(path, ignore_errors=True)


@contextmanager
def staged_dir(out: Path):
    """Yield a fresh staging dir on the same filesystem as ``out``; on normal exit it replaces
    ``out`` by rename, on any exception (SIGINT included) it is removed and ``out`` is untouched."""
    out = out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    _sweep_stale(out)
    staging = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    with interrupts_deferred():  # a signal here would leave neither the old nor the new build in place
        previous = out.parent / f".{out.name}.previous-{os.getpid()}"
        if out.exists():
            out.rename(previous)
        staging.rename(out)
        shutil.rmtree(previous, ignore_errors=True)
