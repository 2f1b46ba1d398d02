"""A content-addressed cache of pass outputs, so an interrupted or repeated run resumes where it
stopped instead of starting over.

Keys form a chain: the first pass's input key is the source checkpoint's content hash (config,
weights and tokenizer files); each pass's key is the sha256 of its input key, its name and code,
``Pass.cache_key_parts(ctx)`` (exactly the settings and data it reads), the library versions and
the target's name, except for a pass that reads nothing of the target (``Pass.target_independent``:
prune, distill), whose output every target shares. Equal keys mean equal inputs, so a hit is
reused as the pass's result.

An entry is a directory ``ROOT/entries/KEY/``: ``entry.json`` (kind, metrics, annotations with paths
made relative, ``modified``, and the size and sha256 of every file) plus the model: ``files/N/`` for
each model file (the state's model and every ``Path`` inside its annotations, e.g. graph variants)
with the files its format keeps beside it (core/formats.py), or a directory an annotation names
(a pass's tokenizer files, reloaded on a hit), or ``torch/`` (``save_pretrained``, safetensors). Entries are written into ``ROOT/tmp/`` and renamed
into place, so a crash or a kill never leaves half an entry; an entry that fails verification on
load is removed and the pass runs again. Least recently used entries (directory mtime, touched on
every hit) are evicted when the cache grows past its size limit.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import logging
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

from mcompress.core.errors import InputError
from mcompress.pipeline.outputs import pid_alive
from mcompress.core.hashing import file_digest, json_digest
from mcompress.core.formats import TOKENIZER_FILES, ModelFormat, format_of
from mcompress.core.state import ModelKind, ModelState

if TYPE_CHECKING:
    from mcompress.core.checkpoint import Checkpoint
    from mcompress.core.pass_base import Pass, PassContext, PassResult

logger = logging.getLogger(__name__)

ENTRY_FORMAT = 2  # 2: one model_file for every file-backed kind (1 had onnx_path / ir_path)
DEFAULT_MAX_GB = 10.0
_PATH = "__path__"  # marks a file path inside entry.json, relative to the entry


def default_cache_dir() -> Path:
    env = os.environ.get("MCOMPRESS_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "mcompress"


def source_key(ckpt: "Checkpoint") -> str:
    """The chain's root: the checkpoint's content hash and its tokenizer files (contents, not paths)."""
    tokenizer = {n: file_digest(ckpt.path / n) for n in TOKENIZER_FILES if (ckpt.path / n).is_file()}
    return json_digest("source", ckpt.content_hash, tokenizer)


def _code_hash(p: "Pass") -> str:
    """The pass's own module: a changed pass does not reuse outputs of its older code."""
    try:
        return file_digest(Path(inspect.getsourcefile(type(p))))
    except (TypeError, OSError):
        return type(p).__qualname__


    return True


class _NotCacheable(Exception):
    pass


class PassCache:
    def __init__(self, root: Path, max_bytes: int, versions: dict | None = None):
        from mcompress.metrics.machine import library_versions

        self.root = Path(root)
        self.max_bytes = max_bytes
        self.versions = versions if versions is not None else library_versions()
        self.entries = self.root / "entries"
        self.tmp = self.root / "tmp"
        self._used: set[str] = set()  # keys this process read or wrote: never evicted under it

    @classmethod
    def open(cls, root: Path, max_gb: float = DEFAULT_MAX_GB) -> "PassCache":
        """Create the cache dirs (an InputError, before any work, when that is impossible)."""
        root = Path(root).expanduser()
        try:
            for sub in ("entries", "tmp"):
                (root / sub).mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise InputError(f"cannot create the cache directory {root} ({err.strerror}).",
                             "Pass --cache-dir with a writable directory, or --no-cache.") from None
        if not os.access(root / "entries", os.W_OK) or not os.access(root / "tmp", os.W_OK):
            raise InputError(f"cache directory {root} is not writable.", "Pass --cache-dir with a writable directory, or --no-cache.")
        cache = cls(root, int(max_gb * 1e9))
        cache._sweep_tmp()
        return cache

    # --- keys ----------------------------------------------------------------------------------

    def root_key(self, ckpt: "Checkpoint") -> str:
        """The key chain's root for a run on ``ckpt`` (see source_key)."""
        return source_key(ckpt)

    def key(self, parent: str, p: "Pass", ctx: "PassContext") -> str:
        target = None if p.target_independent else ctx.target.name
        return json_digest("pass", parent, p.name, type(p).__qualname__, _code_hash(p), p.cache_key_parts(ctx),
                           self.versions, target)

    # --- load ----------------------------------------------------------------------------------

    def load(self, key: str, state: ModelState) -> "PassResult | None":
        """The cached result of the pass with this key, applied to its input ``state``; None on a
        miss. An entry that fails verification is removed (the caller reruns the pass)."""
        from mcompress.core.pass_base import PassResult

        entry = self.entries / key
        if not entry.is_dir():
            return None
        try:
            meta = json.loads((entry / "entry.json").read_text(encoding="utf-8"))
            if meta.get("format") != ENTRY_FORMAT or meta.get("key") != key:
                raise ValueError("unknown entry format")
            for rel, info in meta["files"].items():
                path = entry / rel
                if path.stat().st_size != info["bytes"] or file_digest(path) != info["sha256"]:
                    raise ValueError(f"{rel} does not match its recorded size/sha256")
            kind = ModelKind(meta["kind"])
            annotations = _restore_paths(meta["annotations"], entry)
            if "model_file" in meta:
                restored = dataclasses.replace(state, kind=kind, torch_model=None, annotations=annotations,
                                               model_file=_restore_paths(meta["model_file"], entry))
            else:  # a model in memory
                restored = dataclasses.replace(state, kind=kind, torch_model=_load_torch(entry / "torch"),
                                               model_file=None, annotations=annotations)
            restored = restored.with_tokenizer_reloaded()
        except Exception as err:  # a corrupt, partial or foreign entry: rebuild it
            logger.warning("cache entry %s is unusable (%s); rebuilding it", entry, err)
            self._remove(entry)
            return None
        self._used.add(key)
        os.utime(entry)  # least recently used = oldest mtime
        return PassResult(restored, bool(meta["modified"]), meta["metrics"])

    # --- store ---------------------------------------------------------------------------------

    def store(self, key: str, pass_name: str, result: "PassResult") -> bool:
        """Write ``result`` as the entry for ``key``, atomically. Returns whether it was stored."""
        entry = self.entries / key
        if entry.is_dir():
            return True
        tmp = self.tmp / f"{key[:16]}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
        try:
            tmp.mkdir(parents=True)
            meta = self._write(tmp, key, pass_name, result)
            size = sum(f["bytes"] for f in meta["files"].values())
            if size > self.max_bytes:
                raise _NotCacheable(f"{size / 1e9:.2f} GB is more than the cache's limit of {self.max_bytes / 1e9:.2f} GB")
            (tmp / "entry.json").write_text(json.dumps(meta, indent=1, sort_keys=True), encoding="utf-8")
            try:
                tmp.rename(entry)
            except OSError:  # another process stored the same key first: equal content
                if not entry.is_dir():
                    raise
        except _NotCacheable as why:
            logger.info("pass %s: output not cached: %s", pass_name, why)
            return False
        except Exception as why:  # e.g. a full disk: the cache must not fail the build
            logger.warning("pass %s: output not cached: %s: %s", pass_name, type(why).__name__, why)
            return False
        finally:  # also on KeyboardInterrupt: no temp dir is left behind
            shutil.rmtree(tmp, ignore_errors=True)
        self._used.add(key)
        self.evict()
        return True

    def _write(self, tmp: Path, key: str, pass_name: str, result: "PassResult") -> dict:
        state = result.state
        copies: dict[Path, str] = {}  # resolved source file -> path relative to the entry

        def carry(path: Path, model_format: ModelFormat | None = None) -> dict:
            src = Path(path).resolve()
            if not (src.is_file() or src.is_dir()):
                raise _NotCacheable(f"annotated path {path} is not a file or a directory")
            if src not in copies:
                rel = f"files/{len(copies)}/{src.name}"
                (tmp / rel).parent.mkdir(parents=True)
                model_format = None if src.is_dir() else model_format or format_of(src)  # a model file brings its format's files along
                if src.is_dir():  # e.g. a pass's tokenizer files (core.state.TOKENIZER_DIR)
                    shutil.copytree(src, tmp / rel, symlinks=False)
                elif model_format is not None:
                    model_format.copy(src, (tmp / rel).parent)
                else:
                    shutil.copyfile(src, tmp / rel)
                copies[src] = rel
            return {_PATH: copies[src]}

        annotations = _replace_paths(state.annotations, carry)
        if json.loads(json.dumps(annotations)) != annotations:
            raise _NotCacheable("its annotations do not round-trip through JSON")
        meta = {"format": ENTRY_FORMAT, "key": key, "pass": pass_name, "kind": state.kind.value,
                "created": time.time(), "modified": bool(result.modified),
                "metrics": json.loads(json.dumps(result.metrics, default=_json_default)),
                "annotations": annotations, "versions": self.versions}
        if state.format is not None:
            meta["model_file"] = carry(state.model_file, state.format)
        elif state.torch_model is not None:
            _save_torch(state.torch_model, tmp / "torch")
        else:
            raise _NotCacheable(f"{state.kind.value} models are not cached")
        meta["files"] = {str(p.relative_to(tmp)): {"bytes": p.stat().st_size, "sha256": file_digest(p)}
                         for p in sorted(tmp.rglob("*")) if p.is_file()}
        return meta

    # --- housekeeping --------------------------------------------------------------------------

    def _remove(self, entry: Path) -> None:
        """Rename away first, so no reader ever sees a half-deleted entry."""
        trash = self.tmp / f"trash-{entry.name[:16]}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
        try:
            entry.rename(trash)
        except OSError:
            return
        shutil.rmtree(trash, ignore_errors=True)

    def _sweep_tmp(self) -> None:
        """Temp dirs of processes that died (SIGKILL, power loss) before renaming them."""
        for path in self.tmp.iterdir():
            try:
                pid = int(path.name.split(".")[1])
            except (IndexError, ValueError):
                continue
            if not pid_alive(pid):
                shutil.rmtree(path, ignore_errors=True)

    def size_bytes(self) -> int:
        return sum(size for _, _, size in self._entries())

    def _entries(self) -> list[tuple[float, Path, int]]:
        found = []
        for entry in self.entries.iterdir():
            try:
                mtime = entry.stat().st_mtime
                size = sum(p.stat().st_size for p in entry.rglob("*") if p.is_file())
            except OSError:  # removed meanwhile by another process
                continue
            found.append((mtime, entry, size))
        return found

    def evict(self) -> list[str]:
        """Remove least recently used entries until the cache fits its limit; entries this process
        uses are kept. Returns the evicted keys."""
        entries = sorted(self._entries())
        total = sum(size for _, _, size in entries)
        evicted = []
        for _, entry, size in entries:
            if total <= self.max_bytes:
                break
            if entry.name in self._used:
                continue
            self._remove(entry)
            total -= size
            evicted.append(entry.name)
        if evicted:
            logger.info("cache: evicted %d least recently used entries to stay under %.1f GB", len(evicted), self.max_bytes / 1e9)
        return evicted


def _json_default(value):
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


def _replace_paths(value, carry):
    if isinstance(value, Path):
        return carry(value)
    if isinstance(value, dict):
        return {k: _replace_paths(v, carry) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_replace_paths(v, carry) for v in value)
    return value


def _restore_paths(value, entry: Path):
    if isinstance(value, dict):
        if set(value) == {_PATH}:
            path = entry / value[_PATH]
            if not path.exists():
                raise ValueError(f"{value[_PATH]} is missing")
            return path
        return {k: _restore_paths(v, entry) for k, v in value.items()}
    if isinstance(value, list):
        return [_restore_paths(v, entry) for v in value]
    return value


def _save_torch(model, path: Path) -> None:
    """save_pretrained (safetensors), then reload to prove the entry gives back the same model
    (e.g. non-uniformly pruned FFNs have no config that from_pretrained can rebuild)."""
    import torch

    model.save_pretrained(path, safe_serialization=True)
    try:
        reloaded = _load_torch(path)
    except Exception as err:
        raise _NotCacheable(f"from_pretrained cannot reload it ({type(err).__name__}: {str(err).splitlines()[0]})") from None
    ours, theirs = model.state_dict(), reloaded.state_dict()
    if ours.keys() != theirs.keys() or not all(torch.equal(ours[k], theirs[k]) for k in ours):
        raise _NotCacheable("from_pretrained reloads different weights")


def _load_torch(path: Path):
    import json

    import torch
    import transformers

    from mcompress.core.task import task_for_architecture

    architectures = json.loads((Path(path) / "config.json").read_text()).get("architectures") or [""]
    task = task_for_architecture(architectures[0])
    if task is None:
        raise ValueError(f"{path}/config.json names no architecture with a task head ({architectures})")
    model = getattr(transformers, task.auto_model).from_pretrained(path, local_files_only=True, dtype=torch.float32,
                                                                   use_safetensors=True)
    return model.eval()
