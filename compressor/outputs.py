"""Atomic build directories: written beside the destination, renamed into place when complete."""

from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from pathlib import Path

from mcompress.errors import InputError


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
    parent = out.parent
    if not parent.exists():
        raise InputError(f"the parent of --out ({parent}) does not exist.", "Create it first.")
    if not os.access(parent, os.W_OK):
        raise InputError(f"cannot write into {parent}.", "Choose a writable --out.")


@contextmanager
def staged_dir(out: Path):
    """Yield a fresh staging dir on the same filesystem as ``out``; on normal exit it replaces
    ``out`` by rename, on any exception (SIGINT included) it is removed and ``out`` is untouched."""
    out = out.resolve()
    staging = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    previous = out.parent / f".{out.name}.previous-{os.getpid()}"
    if out.exists():
        out.rename(previous)
    staging.rename(out)
    shutil.rmtree(previous, ignore_errors=True)
