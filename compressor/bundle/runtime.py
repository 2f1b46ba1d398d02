"""Load and run a ``.mcpkg`` bundle with only onnxruntime, tokenizers and numpy installed (or,
for a bundle of an openvino-cpu build, ``model_format: openvino-ir``, only openvino, tokenizers
and numpy).

    from mcompress.runtime import load
    bundle = load("sentiment.mcpkg")
    bundle.predict(["a gripping, funny film"])  # [{"label": "fresh", "score": 0.97, "scores": {...}}]

``load`` reads the zip in memory (nothing is extracted to disk) and refuses, with a one-line
``BundleError``, anything that is not exactly what ``mcompress package`` writes: unsafe member names
(``..``, absolute paths, backslashes, drive letters), symlinks or other non-regular members,
encrypted or oddly compressed members, archives over the size limits, a missing or unreadable
manifest, members the manifest does not list, listed files that are missing, and any size or
sha256 mismatch. Those checks prove integrity against the manifest, not who made the bundle. With
``trusted_keys`` (PEM EC public keys), the bundle's signature (``signature.sigstore.json``, made by
``mcompress package --sign-key`` or ``mcompress sign``) is checked first, and every member's
sha256 against the signed digests (bundle/signing.py, OpenSSF model-signing, imported only then);
without them a signature is carried but not checked, as before.

This module must stay importable without torch, transformers, pydantic, typer or rich.
"""

from __future__ import annotations

import hashlib
import io
import math
import re
import stat
import struct
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from mcompress.core.errors import InputError
from mcompress.core.limits import brief, brief_repr, json_loads_bounded
from mcompress.core.formats import ONNX, OPENVINO_IR
from mcompress.core.task import TASKS, UNRECORDED_TASK, runtime_decoder

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
SIGNATURE = "signature.sigstore.json"  # the one member the manifest does not list (it signs the manifest)
MAX_SIGNATURE_BYTES = 1024 ** 2  # a key-signed Sigstore bundle is ~1.5 kB plus ~100 bytes a member
MAX_TOTAL_BYTES = 2 * 1024 ** 3  # uncompressed, all members together
MAX_MEMBERS = 10_000
MAX_MANIFEST_BYTES = 16 * 1024 ** 2
MAX_CENTRAL_DIRECTORY_BYTES = 16 * 1024 ** 2  # the zip's directory, read from its end record before zipfile parses it
MAX_NAME_CHARS = 255  # one member name
# Uncompressed over compressed size of a deflated member over 1 MiB (package writes stored
# members, ratio 1; real ONNX/IR weights deflate by < 2x, tokenizer files by < 5x).
MAX_COMPRESSION_RATIO = 100
MAX_SEQUENCE_LENGTH = 1 << 20
_DRIVE = re.compile(r"^[A-Za-z]:")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_ZIP_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, ValueError, NotImplementedError,
               RuntimeError, struct.error, zlib.error, KeyError)


class BundleError(InputError):
    """A bundle is missing, corrupt, unsafe or not what its manifest says. Exit code 2 (BAD_INPUT)."""


def _check_name(name: str) -> None:
    if not name:
        raise BundleError("bundle has a member with an empty name; refusing it.")
    if "\\" in name:
        raise BundleError(f"bundle member {name!r} contains a backslash; refusing a possible path traversal.")
    if name.startswith("/") or _DRIVE.match(name):
        raise BundleError(f"bundle member {name!r} is an absolute path; refusing a possible path traversal.")
    parts = name.split("/")
    if ".." in parts:
        raise BundleError(f"bundle member {name!r} contains '..'; refusing a possible path traversal.")
    if any(p in ("", ".") for p in parts) or _CONTROL.search(name) or len(name) > MAX_NAME_CHARS:
        raise BundleError(f"bundle member {brief_repr(name)} is not a plain file name; refusing it.")


def _check_info(info: zipfile.ZipInfo) -> None:
    _check_name(info.filename)
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        raise BundleError(f"bundle member {info.filename!r} is a symlink; refusing it.")
    if info.is_dir() or (stat.S_IFMT(mode) and not stat.S_ISREG(mode)):
        raise BundleError(f"bundle member {info.filename!r} is not a regular file; refusing it.")
    if info.flag_bits & 0x1:
        raise BundleError(f"bundle member {info.filename!r} is encrypted; refusing it.")
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise BundleError(f"bundle member {info.filename!r} uses unsupported compression {info.compress_type}.")
    if info.compress_type == zipfile.ZIP_STORED and info.compress_size != info.file_size:
        raise BundleError(f"bundle member {info.filename!r} is stored uncompressed, but the zip directory gives it "
                          f"{info.compress_size} bytes stored and {info.file_size} unpacked.")
    if info.file_size > (1 << 20) and info.file_size > MAX_COMPRESSION_RATIO * max(info.compress_size, 1):
        raise BundleError(f"bundle member {info.filename!r} unpacks {info.compress_size:,} bytes into "
                          f"{info.file_size:,}, over {MAX_COMPRESSION_RATIO}x; refusing a possible zip bomb.")


def _read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, expected: dict | None = None) -> bytes:
    name = info.filename
    try:
        data = zf.read(info)
    except zipfile.BadZipFile as err:
        sha = f" (manifest sha256 {expected.get('sha256', '?')[:16]}…)" if expected else ""
        raise BundleError(f"bundle member {name!r} is corrupt or was modified: {brief(str(err), 200)}; its content cannot match "
                          f"the manifest's sha256{sha}.") from None
    except _ZIP_ERRORS as err:
        raise BundleError(f"bundle member {name!r} cannot be read ({type(err).__name__}: {brief(str(err), 200)}); "
                          "the bundle is truncated or corrupt.") from None
    if len(data) != info.file_size:
        raise BundleError(f"bundle member {name!r} is {len(data)} bytes, the zip directory says {info.file_size}.")
    return data


def _check_end_record(f, path: Path) -> None:
    """The zip's end-of-central-directory record (zipfile's reader of it) says the directory is
    within MAX_MEMBERS entries and MAX_CENTRAL_DIRECTORY_BYTES, before zipfile builds a ZipInfo for
    every entry; a bundle with no record at all is left to zipfile's own error."""
    try:
        record = zipfile._EndRecData(f)  # noqa: SLF001 - stdlib's own parser, stable since Python 2
    except _ZIP_ERRORS:
        return
    if not record:
        return
    entries, size = record[zipfile._ECD_ENTRIES_TOTAL], record[zipfile._ECD_SIZE]
    if entries > MAX_MEMBERS or size > MAX_CENTRAL_DIRECTORY_BYTES:
        raise BundleError(f"bundle {path} declares {entries:,} members in a {size:,}-byte directory, over the limits "
                          f"of {MAX_MEMBERS:,} members and {MAX_CENTRAL_DIRECTORY_BYTES:,} bytes.")


def _open_zip(path: Path, data: bytes | None = None) -> zipfile.ZipFile:
    """The bundle's zip, its end record checked first (_check_end_record). ``data``: a bundle
    assembled in memory (mcompress serve BUILD_DIR); ``path`` then only names it."""
    if data is None:
        if not path.exists():
            raise BundleError(f"bundle {path} does not exist.")
        if not path.is_file():
            raise BundleError(f"bundle {path} is not a file.")
        with open(path, "rb") as f:
            _check_end_record(f, path)
        source = path
    else:
        _check_end_record(io.BytesIO(data), path)
        source = io.BytesIO(data)
    try:
        return zipfile.ZipFile(source, "r")
    except _ZIP_ERRORS as err:
        raise BundleError(f"bundle {path} is not a readable zip ({type(err).__name__}: {brief(str(err), 200)}); "
                          "it is truncated, corrupt or not a .mcpkg.") from None


def _checked_members(zf: zipfile.ZipFile, path: Path, max_bytes: int, max_members: int,
                     archive_bytes: int) -> dict[str, zipfile.ZipInfo]:
    """Name -> zip entry, once every entry is a safe, plain, unique file and the whole is within the
    limits; ``archive_bytes``: the size of the zip itself (a file's, or the in-memory bytes')."""
    infos = zf.infolist()
    if len(infos) > max_members:
        raise BundleError(f"bundle {path} has {len(infos)} members, over the limit of {max_members}.")
    seen = set()
    for info in infos:
        _check_info(info)
        if info.filename in seen:
            raise BundleError(f"bundle {path} has the member {info.filename!r} twice; refusing it.")
        seen.add(info.filename)
    total = sum(i.file_size for i in infos)
    if total > max_bytes:
        raise BundleError(f"bundle {path} unpacks to {total} bytes, over the limit of {max_bytes}.")
    stored = sum(i.compress_size for i in infos)
    if stored > archive_bytes:
        raise BundleError(f"bundle {path}: its members claim {stored:,} stored bytes in a {archive_bytes:,}-byte "
                          "file; refusing overlapping members (a zip bomb).")
    return {i.filename: i for i in infos}


def _number(value) -> bool:
    return type(value) in (int, float) and math.isfinite(value)


def _optional(check):
    return lambda value: value is None or check(value)


def _list_of(check):
    return lambda value: isinstance(value, list) and all(check(v) for v in value)


def _fields(required: tuple[str, ...] = (), **checks):
    """A dict that has the ``required`` keys and whose listed keys, where present, pass their
    checks (other keys are free)."""
    return lambda value: isinstance(value, dict) and all(key in value for key in required) and \
        all(key not in value or check(value[key]) for key, check in checks.items())


_TEXT = lambda value: isinstance(value, str)  # noqa: E731
_WHOLE = lambda value: type(value) is int and value >= 0  # noqa: E731
_SIDE = lambda value: value in ("left", "right")  # noqa: E731
_TOKEN_ID = lambda value: type(value) is int and 0 <= value < 2 ** 32  # noqa: E731 - tokenizers takes u32
_LATENCY_ROW = _fields(("batch_size", "sequence_length", "p50_ms"), batch_size=_WHOLE, sequence_length=_WHOLE,
                       p50_ms=lambda v: _number(v) and v > 0, p95_ms=lambda v: _number(v) and v > 0)
# Types of the manifest fields the runtime and `mcompress inspect` read (keys not listed are not
# checked): a well-formed manifest that lies about a type is refused here, not mid-load.
MANIFEST_FIELDS = {
    "task": _TEXT, "target": _optional(_TEXT), "model_file": _TEXT, "model_format": _TEXT, "weights_file": _TEXT,
    "labels_file": _TEXT, "num_labels": _WHOLE, "quantization": _optional(_TEXT), "passed": lambda v: type(v) is bool,
    "max_sequence_length": lambda v: type(v) is int and 2 <= v <= MAX_SEQUENCE_LENGTH,
    "inputs": _list_of(_fields(name=_TEXT, dtype=_TEXT, shape=_list_of(lambda d: _TEXT(d) or _WHOLE(d)))),
    "outputs": _list_of(lambda v: isinstance(v, dict)),
    "preprocessing": _fields(tokenizer_file=_TEXT, truncation=lambda v: type(v) is bool, padding=_TEXT,
                             max_length=_optional(_WHOLE), feeds=_fields(), pad_id=_optional(_TOKEN_ID),
                             pad_token=_optional(_TEXT), pad_type_id=_TOKEN_ID, padding_side=_SIDE, truncation_side=_SIDE),
    "runtime": _fields(), "source": _fields(), "recipe": _fields(),
    "generation": _fields(("context_length", "stop_token_ids"), context_length=lambda v: type(v) is int and 2 <= v <= MAX_SEQUENCE_LENGTH,
                          stop_token_ids=_list_of(_TOKEN_ID), bos_token_id=_optional(_TOKEN_ID),
                          kv_heads=_optional(lambda v: type(v) is int and v >= 1), head_dim=_optional(lambda v: type(v) is int and v >= 1),
                          max_new_tokens=lambda v: type(v) is int and v >= 1),
    "gates": _list_of(_fields(("name", "value", "passed"), name=_TEXT, value=_number, unit=_optional(_TEXT), threshold=_optional(_number),
                              passed=lambda v: type(v) is bool, detail=_optional(_TEXT),
                              ci95=_optional(lambda v: isinstance(v, list) and len(v) == 2 and all(map(_number, v))))),
    "metrics": _fields(eval_examples=_optional(_WHOLE), reference_accuracy=_optional(_number),
                       build_accuracy=_optional(_number),
                       latency=_optional(_fields(reference=_list_of(_LATENCY_ROW), build=_list_of(_LATENCY_ROW)))),
}


def _check_manifest_fields(manifest: dict, path: Path) -> None:
    bad = next((key for key, check in MANIFEST_FIELDS.items() if key in manifest and not check(manifest[key])), None)
    if bad is not None:
        raise BundleError(f"bundle {path}: {MANIFEST} field {bad!r} has the wrong type or value "
                          f"({brief_repr(manifest[bad])}); it was not written by `mcompress package`.")
    feeds = (manifest.get("preprocessing") or {}).get("feeds") or {}
    if not all(isinstance(v, str) for v in feeds.values()):
        raise BundleError(f"bundle {path}: {MANIFEST} preprocessing.feeds must map input names to tokenizer fields.")


def _read_manifest(zf: zipfile.ZipFile, by_name: dict[str, zipfile.ZipInfo], path: Path) -> dict:
    """The manifest, checked to be a JSON object of this schema version listing every file's sha256 and size."""
    if MANIFEST not in by_name:
        raise BundleError(f"bundle {path} has no {MANIFEST}; it was not written by `mcompress package`.")
    if by_name[MANIFEST].file_size > MAX_MANIFEST_BYTES:
        raise BundleError(f"bundle {path}: {MANIFEST} is over {MAX_MANIFEST_BYTES} bytes.")
    try:
        manifest = json_loads_bounded(_read_member(zf, by_name[MANIFEST]).decode("utf-8"))
    except ValueError as err:  # UnicodeDecodeError is one
        raise BundleError(f"bundle {path}: {MANIFEST} is not valid JSON ({err}).") from None
    if not isinstance(manifest, dict):
        raise BundleError(f"bundle {path}: {MANIFEST} is not a JSON object.")
    if manifest.get("schema_version") != SCHEMA_VERSION:
        raise BundleError(f"bundle {path} has manifest schema_version {manifest.get('schema_version')!r}; "
                          f"this runtime reads {SCHEMA_VERSION}.", "Repackage it with this mcompress version.")
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        raise BundleError(f"bundle {path}: {MANIFEST} lists no files.")
    for name, entry in files.items():
        if not (isinstance(entry, dict) and isinstance(entry.get("sha256"), str) and _SHA256.fullmatch(entry["sha256"])
                and type(entry.get("bytes")) is int and entry["bytes"] >= 0):
            raise BundleError(f"bundle {path}: {MANIFEST} entry for {brief_repr(name)} lacks sha256/bytes.")
    _check_manifest_fields(manifest, path)
    return manifest


def _check_listing(files: dict, by_name: dict[str, zipfile.ZipInfo], path: Path) -> None:
    """The zip holds exactly the files the manifest lists (and the manifest)."""
    unlisted = sorted(set(by_name) - set(files) - {MANIFEST, SIGNATURE})
    if unlisted:
        raise BundleError(f"bundle {path} has members its manifest does not list: {brief(', '.join(unlisted), 200)}.")
    missing = sorted(set(files) - set(by_name))
    if missing:
        raise BundleError(f"bundle {path} lacks files its manifest lists: {brief(', '.join(missing), 200)}.")


def _verified_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, expected: dict) -> bytes:
    """A member's bytes, once their size and sha256 match the manifest's entry."""
    name = info.filename
    if info.file_size != expected["bytes"]:
        raise BundleError(f"bundle member {name!r} is {info.file_size} bytes, the manifest says "
                          f"{expected['bytes']}; the bundle was modified.")
    data = _read_member(zf, info, expected)
    digest = hashlib.sha256(data).hexdigest()
    if digest != expected["sha256"]:
        raise BundleError(f"bundle member {name!r} fails its sha256 check (manifest {expected['sha256'][:16]}…, "
                          f"content {digest[:16]}…); the bundle was modified.")
    return data


def _member_digest(zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> str:
    """sha256 of a member, streamed (the zip's CRC is checked at the end of the stream)."""
    digest = hashlib.sha256()
    try:
        with zf.open(info) as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    except zipfile.BadZipFile as err:
        raise BundleError(f"bundle member {info.filename!r} is corrupt or was modified: {err}.") from None
    except _ZIP_ERRORS as err:
        raise BundleError(f"bundle member {info.filename!r} cannot be read ({type(err).__name__}: {err}); "
                          "the bundle is truncated or corrupt.") from None
    return digest.hexdigest()


def _named_model_files(zf: zipfile.ZipFile, by_name: dict[str, zipfile.ZipInfo]) -> list[str]:
    """The model files the manifest names, read leniently (before it is checked): a signature check
    runs first and names a changed model as such; [] when the manifest is unreadable."""
    info = by_name.get(MANIFEST)
    if info is None or info.file_size > MAX_MANIFEST_BYTES:
        return []
    try:
        manifest = json_loads_bounded(zf.read(info).decode("utf-8"))
    except (*_ZIP_ERRORS, UnicodeDecodeError):  # ValueError (bad or too deep JSON) is among _ZIP_ERRORS
        return []
    if not isinstance(manifest, dict):
        return []
    return [manifest[k] for k in ("model_file", "weights_file") if isinstance(manifest.get(k), str)]


def _verify_signature(zf: zipfile.ZipFile, by_name: dict[str, zipfile.ZipInfo], path: Path, trusted_keys):
    """The trusted key that signed exactly these members (bundle/signing.py); a BundleError otherwise."""
    from mcompress.bundle import signing

    keys = signing.load_trusted_keys(trusted_keys)
    if SIGNATURE not in by_name:
        raise BundleError(f"bundle {path} is unsigned (no {SIGNATURE}) and trusted keys are required; refusing it.",
                          "Sign it with `mcompress sign BUNDLE --key KEY.pem`.")
    if by_name[SIGNATURE].file_size > MAX_SIGNATURE_BYTES:
        raise BundleError(f"bundle {path}: {SIGNATURE} is over {MAX_SIGNATURE_BYTES} bytes; bad signature.")
    signed, key = signing.signed_digests(_read_member(zf, by_name[SIGNATURE]), keys, f"bundle {path}")
    actual = {name: _member_digest(zf, info) for name, info in by_name.items() if name != SIGNATURE}
    signing.check_members(signed, actual, _named_model_files(zf, by_name), f"bundle {path}")
    return key


@dataclass(frozen=True)
class BundleContents:
    manifest: dict
    members: dict[str, bytes]  # every member the manifest lists, verified against it
    signature: bytes | None  # signature.sigstore.json, if the bundle has one
    signer: object | None  # the signing.TrustedKey that verified it; None when no keys were given


def open_bundle(path: str | Path, max_bytes: int = MAX_TOTAL_BYTES, max_members: int = MAX_MEMBERS,
                trusted_keys=None, data: bytes | None = None) -> BundleContents:
    """Verify a bundle: its signature first when ``trusted_keys`` (paths of PEM EC public keys, or
    signing.TrustedKey) are given, then every member against the manifest. ``data``: the bundle's
    bytes, already in memory (``path`` then only names it in errors)."""
    path = Path(path)
    zf = _open_zip(path, data)
    with zf:
        archive_bytes = len(data) if data is not None else path.stat().st_size
        by_name = _checked_members(zf, path, max_bytes, max_members, archive_bytes)
        # the signature first: a member changed after signing is named as such, whatever it broke
        signer = _verify_signature(zf, by_name, path, trusted_keys) if trusted_keys is not None else None
        manifest = _read_manifest(zf, by_name, path)
        files = manifest["files"]
        _check_listing(files, by_name, path)
        members = {name: _verified_member(zf, by_name[name], files[name]) for name in sorted(files)}
        signature = _read_member(zf, by_name[SIGNATURE]) if SIGNATURE in by_name and SIGNATURE not in files else None
    return BundleContents(manifest, members, signature, signer)


def read_bundle(path: str | Path, max_bytes: int = MAX_TOTAL_BYTES, max_members: int = MAX_MEMBERS,
                trusted_keys=None, data: bytes | None = None) -> tuple[dict, dict[str, bytes]]:
    """Verify a bundle (see open_bundle) and return (manifest, {member name: bytes}) for every
    member the manifest lists."""
    contents = open_bundle(path, max_bytes, max_members, trusted_keys, data)
    return contents.manifest, contents.members


@dataclass(frozen=True)
class Prediction:
    """Bundle.run's answer: per text, in input order, the task's prediction, its token count (after
    truncation, special tokens included) and whether max_sequence_length truncated it."""

    results: list[dict]
    token_lengths: list[int]
    truncated: list[bool]


class _TextStream:
    """Per-token callback of Bundle.generate: decodes the new tokens so far and passes on the text
    they add, holding back a text that ends inside a character (U+FFFD from a split UTF-8 sequence)."""

    def __init__(self, tokenizer, on_text):
        self.tokenizer, self.on_text, self.ids, self.sent = tokenizer, on_text, [], ""

    def __call__(self, token: int) -> None:
        self.ids.append(token)
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        complete = not text.endswith("\ufffd") and text.startswith(self.sent)
        self.on_text(token, text[len(self.sent):] if complete else "")
        if complete:
            self.sent = text

    def flush(self) -> None:
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if text.startswith(self.sent) and len(text) > len(self.sent):
            self.on_text(None, text[len(self.sent):])


@dataclass
class Bundle:
    path: Path
    manifest: dict
    labels: list[str]
    session: object = field(repr=False)
    tokenizer: object = field(repr=False)
    input_dtypes: dict = field(default_factory=dict)  # model input name -> numpy dtype name
    feeds: dict = field(default_factory=dict)  # model input name -> Encoding attribute
    signer: object | None = None  # the trusted key (signing.TrustedKey) that verified it, if keys were given
    decoder: object = field(default=None, repr=False)  # the task's tasks.decoding.RuntimeDecoder
    stepper: object = field(default=None, repr=False)  # a generating task's engines.generation.OnnxDecoder

    def __post_init__(self):
        if self.decoder is None:
            self.decoder = runtime_decoder(self.manifest.get("task", UNRECORDED_TASK))

    @property
    def max_sequence_length(self) -> int:
        return int(self.manifest["max_sequence_length"])

    @property
    def largest_gated_batch(self) -> int:
        """The largest batch size the build's accuracy gate judged it at: the recipe's eval.batching,
        or [1, eval.batch_size] when that is null (core/recipe.py EvalConfig.deployed_batchings). It
        is what predict/run/logits batch at by default, and what `mcompress serve` forms."""
        return largest_gated_batch(self.manifest)

    @property
    def input_names(self) -> list[str]:
        return list(self.feeds)

    def _batches(self, texts: list[str], batch_size: int | None):
        """(indices, encoded batch, logits) per batch.

        Texts are batched in order of character length (stable), exactly as `mcompress run`
        batched the eval data it gated the build on, so the bundle reproduces the gated
        predictions even for dynamically quantized models, whose activation scales depend on
        the padded batch."""
        import numpy as np

        from mcompress.calibration.datasets import length_batches

        texts = _checked_texts(texts)
        batch_size = self.largest_gated_batch if batch_size is None else batch_size
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        for idx in length_batches(texts, batch_size):
            encoded = self.decoder.encode(self.tokenizer, [texts[i] for i in idx])
            feed = {name: np.array([getattr(e, attr) for e in encoded.encodings], dtype=self.input_dtypes[name])
                    for name, attr in self.feeds.items()}
            yield idx, encoded, self.session.run(["logits"], feed)[0]

    def logits(self, texts: list[str], batch_size: int | None = None):
        """The model's logits for every text, in input order: an array with one row per text when
        every text's logits have one shape (text classification), else a list of arrays (a
        tagger's per-token logits, padded per batch)."""
        import numpy as np

        rows: list = [None] * len(texts)
        for idx, _, logits in self._batches(texts, batch_size):
            for row, i in enumerate(idx):
                rows[i] = logits[row]
        if not rows:
            return np.empty((0, len(self.labels)), dtype=np.float32)
        return np.stack(rows) if len({r.shape for r in rows}) == 1 else rows

    def generate(self, prompt: str, sampling=None, on_text=None) -> dict:
        """The continuation of ``prompt`` (a generating task's bundle: decoder.generates), with the
        KV cache (compressor/engines/generation.py): {"text", "tokens" (new ids), "prompt_tokens",
        "stopped" ("stop token", "max new tokens", "context"), "prefill_ms", "decode_tokens_per_s"}.
        ``sampling``: an engines.generation.Sampling; None = greedy, the bundle's max_new_tokens.
        ``on_text(token_id, text)``: called per new token with the text it adds (streaming); text
        that ends inside a character (a byte-level token split a UTF-8 sequence) is held back until
        the character is complete, and what is still held at the end comes in a last call with
        token_id None, so the pieces join to ``text`` (where decoding rewrote text already sent,
        which WordPiece-style cleanup can, ``text`` is the one to keep).
        A prompt that does not fit the context is an InputError (exit 2)."""
        from mcompress.engines.generation import Sampling, generate

        if not self.decoder.generates:
            raise BundleError(f"bundle {self.path} is a {self.manifest.get('task')} model; it does not generate text.",
                              "Use predict() for its predictions.")
        if not isinstance(prompt, str):
            raise TypeError(f"prompt is {type(prompt).__name__}, not str")
        settings = self.manifest["generation"]
        sampling = sampling or Sampling(max_new_tokens=settings["max_new_tokens"])
        ids = self.decoder.encode(self.tokenizer, [prompt]).encodings[0].ids
        stream = None if on_text is None else _TextStream(self.tokenizer, on_text)
        result = generate(self.stepper, list(ids), sampling, frozenset(settings["stop_token_ids"]),
                          settings["context_length"], stream)
        if stream is not None:
            stream.flush()
        steps = sum(result.step_s)
        return {"text": self.tokenizer.decode(result.new_ids, skip_special_tokens=True), "tokens": result.new_ids,
                "prompt_tokens": len(ids), "stopped": result.stopped, "prefill_ms": round(result.prefill_s * 1e3, 3),
                "decode_tokens_per_s": round(len(result.step_s) / steps, 2) if steps > 0 else None}

    def warm_up(self, batch_size: int) -> None:
        """Real calls before serving: one text (ONNX Runtime tunes on its first run), then the
        largest batch a server forms (``batch_size`` texts cut at max_sequence_length), so the
        session's memory arena holds its peak before traffic and RSS stays flat under it. A
        generating bundle generates a few tokens from a short prompt instead (a prompt is never
        truncated, so the longest one would not fit)."""
        if self.decoder.generates:
            from mcompress.engines.generation import Sampling

            self.generate("warm-up", Sampling(max_new_tokens=2))
            return
        self.run(["warm-up"], 1)
        self.run(["warm " * self.max_sequence_length] * batch_size, batch_size)

    def run(self, texts: list[str], batch_size: int | None = None) -> Prediction:
        """Predictions with the token count and truncation of every text (what the server monitors)."""
        if self.decoder.generates:
            results = [self.generate(text) for text in _checked_texts(texts)]
            return Prediction(results, [r["prompt_tokens"] for r in results], [False] * len(results))
        results: list = [None] * len(texts)
        lengths, truncated = [0] * len(texts), [False] * len(texts)
        for idx, encoded, logits in self._batches(texts, batch_size):
            batch_texts = [texts[i] for i in idx]
            decoded = self.decoder.decode(logits, encoded, batch_texts, self.labels)
            for i, result, length, cut in zip(idx, decoded, encoded.token_lengths, encoded.truncated):
                results[i], lengths[i], truncated[i] = result, length, cut
        return Prediction(results, lengths, truncated)

    def predict(self, texts: list[str], batch_size: int | None = None) -> list[dict]:
        """For each text, the task's prediction (its runtime decoder, compressor/tasks/decoding.py):
        text classification: {"label": name, "score": its softmax probability, "scores": {label: prob}};
        token classification: {"entities": [{"type", "start", "end", "text", "score"}]}."""
        return self.run(texts, batch_size).results


def _checked_texts(texts) -> list[str]:
    if isinstance(texts, str):
        raise TypeError("texts must be a list of strings, not one string")
    texts = list(texts)
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"texts[{i}] is {type(text).__name__}, not str")
    return texts


def _manifest_field(manifest: dict, *keys, kind=None):
    value = manifest
    for key in keys:
        value = value.get(key) if isinstance(value, dict) else None
    if value is None or (kind is not None and not isinstance(value, kind)):
        raise BundleError(f"bundle manifest lacks a valid {'.'.join(keys)}.")
    return value


def _tokenizer(manifest: dict, members: dict[str, bytes], padded: bool = True):
    """The bundle's tokenizer, truncating as the manifest says, and padding to the longest text of
    a batch when the task pads (``padded``; a generating task feeds one prompt unpadded)."""
    from tokenizers import Tokenizer

    pre = _manifest_field(manifest, "preprocessing", kind=dict)
    name = _manifest_field(manifest, "preprocessing", "tokenizer_file", kind=str)
    if name not in members:
        raise BundleError(f"bundle manifest names tokenizer file {name!r}, which it does not contain.")
    max_length = _manifest_field(manifest, "max_sequence_length", kind=int)
    try:
        tokenizer = Tokenizer.from_str(members[name].decode("utf-8"))
    except Exception as err:  # tokenizers raises plain Exception on a bad file
        raise BundleError(f"bundle tokenizer {name!r} cannot be loaded: {brief(str(err), 200)}.") from None
    if pre.get("truncation", True):
        tokenizer.enable_truncation(max_length=max_length, strategy="longest_first",
                                    direction=pre.get("truncation_side", "right"))
    else:
        tokenizer.no_truncation()
    if not padded:
        tokenizer.no_padding()
        return tokenizer
    existing = tokenizer.padding or {}
    pad_token = pre.get("pad_token", existing.get("pad_token"))
    pad_id = pre.get("pad_id")
    if pad_id is None and pad_token is not None:
        pad_id = tokenizer.token_to_id(pad_token)
    if pad_id is None:
        pad_id = existing.get("pad_id")
    if pad_id is None or pad_token is None:
        raise BundleError("bundle tokenizer has no pad token; batches cannot be padded.")
    if not _TOKEN_ID(pad_id) or pad_id >= tokenizer.get_vocab_size():
        raise BundleError(f"bundle pad id {brief_repr(pad_id)} is not a token of its tokenizer "
                          f"({tokenizer.get_vocab_size()} tokens).")
    if pre.get("padding", "longest") != "longest":
        raise BundleError(f"bundle asks for padding {pre.get('padding')!r}; this runtime supports 'longest'.")
    tokenizer.enable_padding(direction=pre.get("padding_side", "right"), pad_id=int(pad_id),
                             pad_type_id=int(pre.get("pad_type_id", existing.get("pad_type_id", 0))),
                             pad_token=pad_token, length=None)
    return tokenizer


def _labels(manifest: dict, members: dict[str, bytes]) -> list[str]:
    name = manifest.get("labels_file", "labels.json")
    if name not in members:
        raise BundleError(f"bundle lacks its label file {name!r}.")
    try:
        id2label = json_loads_bounded(members[name].decode("utf-8"))
        labels = [id2label[str(i)] for i in range(len(id2label))]
        if not all(isinstance(label, str) for label in labels):
            raise TypeError
    except (ValueError, KeyError, TypeError, AttributeError):  # UnicodeDecodeError is a ValueError
        raise BundleError(f"bundle label file {name!r} is not a map of ids 0..N-1 to label names.") from None
    if not labels:
        raise BundleError(f"bundle label file {name!r} is empty.")
    return labels


def _tokenizer_feeds(manifest: dict) -> tuple[dict, dict]:
    """(model input -> numpy dtype name, model input -> tokenizer Encoding attribute) of a task
    whose inputs all come from the tokenizer."""
    inputs = _manifest_field(manifest, "inputs", kind=list)
    feeds_map = _manifest_field(manifest, "preprocessing", "feeds", kind=dict)
    input_dtypes, feeds = {}, {}
    for spec in inputs:
        name = spec.get("name") if isinstance(spec, dict) else None
        attr = feeds_map.get(name)
        if attr not in ("ids", "attention_mask", "type_ids"):
            raise BundleError(f"bundle model input {name!r} has no tokenizer feed this runtime knows.")
        if spec.get("dtype") not in ("int64", "int32"):
            raise BundleError(f"bundle model input {name!r} has dtype {spec.get('dtype')!r}; expected int64 or int32.")
        input_dtypes[name], feeds[name] = spec["dtype"], attr
    return input_dtypes, feeds


def _session(manifest: dict, members: dict[str, bytes], model_name: str, threads: int | None, sessions: dict,
             server: bool = False):
    format_name = manifest.get("model_format", ONNX.name)
    if format_name not in sessions:
        raise BundleError(f"bundle model format {format_name!r} is not supported for a {manifest.get('task')} bundle; "
                          f"this runtime runs {' and '.join(sessions)}.")
    return sessions[format_name](manifest, members, model_name, threads, server)


def _stepper(manifest: dict, session, model_name: str):
    """The generation loop's view of the session (engines.generation.OnnxDecoder)."""
    from mcompress.engines.generation import OnnxDecoder

    generation = _manifest_field(manifest, "generation", kind=dict)
    kv = (generation.get("kv_heads"), generation.get("head_dim"))
    try:
        return OnnxDecoder(session, kv if None not in kv else None, f"bundle model {model_name!r}")
    except InputError as err:
        raise BundleError(err.message, err.hint) from None


def load(path: str | Path, threads: int | None = None, max_bytes: int = MAX_TOTAL_BYTES,
         max_members: int = MAX_MEMBERS, trusted_keys=None, data: bytes | None = None,
         server: bool = False) -> Bundle:
    """Verify ``path`` and return a ready-to-run Bundle (an ONNX Runtime CPU session built from the
    model's bytes, and the bundle's tokenizer with truncation at max_sequence_length and padding
    to the longest text in a batch; a generating task's bundle: its tokenizer unpadded and
    untruncated, and the generation loop on the session). With ``trusted_keys`` (paths of PEM EC
    public keys), a bundle not signed by one of them is refused (open_bundle). ``data``: the
    bundle's bytes when it is already in memory. ``server``: tune the session for a long-running
    server that sees many batch shapes (_onnx_session, _OpenVINOSession)."""
    contents = open_bundle(path, max_bytes, max_members, trusted_keys, data)
    manifest, members = contents.manifest, contents.members
    decoder = runtime_decoder(manifest.get("task", UNRECORDED_TASK))
    if decoder is None:
        raise BundleError(f"bundle task {manifest.get('task')!r} is not supported; this runtime runs "
                          f"{', '.join(n for n, entry in TASKS.items() if entry.runtime_decoder)}.")
    labels = _labels(manifest, members) if decoder.labelled else []
    tokenizer = _tokenizer(manifest, members, decoder.padded)
    model_name = _manifest_field(manifest, "model_file", kind=str)
    if model_name not in members:
        raise BundleError(f"bundle manifest names model file {model_name!r}, which it does not contain.")
    if decoder.generates:
        session, _, _ = _session(manifest, members, model_name, threads, GENERATING_SESSIONS, server)
        return Bundle(Path(path), manifest, labels, session, tokenizer, signer=contents.signer, decoder=decoder,
                      stepper=_stepper(manifest, session, model_name))
    input_dtypes, feeds = _tokenizer_feeds(manifest)
    session, session_inputs, num_logits = _session(manifest, members, model_name, threads, SESSIONS, server)
    if set(session_inputs) != set(feeds):
        raise BundleError(f"bundle model inputs {sorted(session_inputs)} differ from the manifest's {sorted(feeds)}.")
    if num_logits is not None and num_logits != len(labels):
        raise BundleError(f"bundle model has {num_logits} logits but {len(labels)} labels.")
    return Bundle(Path(path), manifest, labels, session, tokenizer, input_dtypes, feeds, contents.signer, decoder)


def _check_input_dtypes(manifest: dict, model_dtypes: dict[str, str]) -> None:
    """The manifest's input dtypes are the model's: a mismatch would load and then fail at the
    first prediction."""
    for spec in manifest.get("inputs", []):
        name, dtype = spec.get("name"), spec.get("dtype")
        if name in model_dtypes and model_dtypes[name] != dtype:
            raise BundleError(f"bundle model input {name!r} is {model_dtypes[name]}, but the manifest says {dtype}.")


def _numpy_dtype_name(ort_type: str) -> str:
    """numpy's name of an ONNX Runtime tensor type ("tensor(float)" -> "float32"), as the manifest records it."""
    import numpy as np

    from mcompress.engines.generation import ORT_DTYPES

    return np.dtype(ORT_DTYPES[ort_type]).name if ort_type in ORT_DTYPES else ort_type.removeprefix("tensor(").removesuffix(")")


def _onnx_session(manifest: dict, members: dict[str, bytes], model_name: str, threads: int | None,
                  server: bool = False):
    """An ONNX Runtime CPU session built from the model's bytes; its input names and logit count.

    ``server``: ORT's memory-pattern planner caches one allocation plan per distinct input shape,
    so a server's RSS grows with every new (batch, length) it sees; without it memory stays flat
    once the arena has held the largest batch (measured in benchmarks/RESULTS.md, Serving). Idle
    intra-op threads do not spin-wait either: between requests they would take CPU from the event
    loop that parses the next one."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    if server:
        options.enable_mem_pattern = False
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        session = ort.InferenceSession(members.pop(model_name), options, providers=["CPUExecutionProvider"])
    except Exception as err:  # ORT raises its own pybind exception types
        raise BundleError(f"bundle model {model_name!r} cannot be loaded by onnxruntime {ort.__version__}: "
                          f"{str(err).splitlines()[0] if str(err) else type(err).__name__}.") from None
    _check_input_dtypes(manifest, {i.name: _numpy_dtype_name(i.type) for i in session.get_inputs()})
    outputs = {o.name: o for o in session.get_outputs()}
    if "logits" not in outputs:
        raise BundleError(f"bundle model {model_name!r} has no 'logits' output.")
    width = outputs["logits"].shape[-1]
    return session, [i.name for i in session.get_inputs()], width if isinstance(width, int) else None


# A server's OpenVINO session pads every batch's length up to a multiple of this (within the
# bundle's max_sequence_length): see _OpenVINOSession.
SERVER_LENGTH_MULTIPLE = 16
FALLBACK_BATCH_SIZE = 16  # a manifest without its recipe's eval settings: core/recipe.py EvalConfig's default


def largest_gated_batch(manifest: dict) -> int:
    """The largest of the recipe's eval.batching (null: [1, eval.batch_size]) in a bundle manifest."""
    settings = (manifest.get("recipe") or {}).get("eval") or {}
    batching = settings.get("batching") or [1, settings.get("batch_size") or FALLBACK_BATCH_SIZE]
    return max(int(size) for size in batching)


class _OpenVINOSession:
    """An OpenVINO CPU compiled model behind the one call Bundle.logits makes: run(["logits"], feed).

    ``length_multiple`` (a server's session): the CPU plugin keeps compiled kernels for every input
    shape it has run (its runtime cache holds 5,000 shapes by default), so a server whose
    micro-batches come in every (texts, length) up to 32 x 128 grew from 1.1 to 2.4 GB over 10,000
    requests (benchmarks/RESULTS.md, Serving on AMX).
    Padding the length axis up to a multiple of 16, and the rows up to a power of two up to 8 and a
    multiple of 8 above (_padded_rows), bounds the shapes at 7 x 8 = 56 for 32 x 128. Rows go up in
    steps of 8, not powers of two, because a padded row costs what a real one does: 17 texts padded
    to 32 rows took 12.8 ms against 7.3 ms for 16 (AMX Xeon, sentiment build). The added positions
    and rows have attention mask 0; the outputs are cut back to the batch's rows and, where they
    have one, its length."""

    def __init__(self, compiled, length_multiple: int | None = None, max_length: int | None = None):
        self.length_multiple, self.max_length = length_multiple, max_length
        self.compiled = compiled
        self.request = compiled.create_infer_request()
        self.input_names = [i.get_any_name() for i in compiled.inputs]
        self._outputs = {name: port for port in compiled.outputs for name in port.get_names()}
        if "logits" not in self._outputs:
            raise BundleError("bundle model has no 'logits' output.")
        width = self._outputs["logits"].get_partial_shape()[-1]
        self.num_logits = width.get_length() if width.is_static else None

    def run(self, output_names: list[str], feed: dict):
        import numpy as np

        rows, length = next(iter(feed.values())).shape
        padded_rows, padded = rows, length
        if self.length_multiple:
            padded_rows = _padded_rows(rows)
            padded = -(-length // self.length_multiple) * self.length_multiple
            padded = max(length, min(padded, self.max_length or padded))
        if (padded_rows, padded) != (rows, length):  # zeros: pad ids and token types, attention mask 0
            feed = {name: np.pad(x, ((0, padded_rows - rows), (0, padded - length))) for name, x in feed.items()}
        self.request.infer(feed)
        outputs = [np.array(self.request.get_tensor(self._outputs[n]).data, copy=True)[:rows] for n in output_names]
        return [y[:, :length] if padded != length and y.ndim > 2 and y.shape[1] == padded else y for y in outputs]


def _padded_rows(rows: int, step: int = 8) -> int:
    """The row count a server's batch of ``rows`` texts is padded to: 1, 2, 4, 8, then 16, 24, 32, ..."""
    return 1 << (rows - 1).bit_length() if rows <= step else -(-rows // step) * step


def _openvino_session(manifest: dict, members: dict[str, bytes], model_name: str, threads: int | None,
                      server: bool = False):
    """Compile the bundle's IR from memory on the OpenVINO CPU plugin, with the inference precision
    the build was gated with (``server``: lengths padded to SERVER_LENGTH_MULTIPLE, _OpenVINOSession)."""
    weights_name = _manifest_field(manifest, "weights_file", kind=str)
    if weights_name not in members:
        raise BundleError(f"bundle manifest names weights file {weights_name!r}, which it does not contain.")
    precision = (manifest.get("runtime") or {}).get("inference_precision", "f32")
    try:
        import openvino as ov
    except ImportError:
        raise BundleError("this bundle holds an OpenVINO IR and needs the openvino package.",
                          "pip install openvino (with tokenizers and numpy).") from None
    from mcompress.engines.openvino_cpu import PRECISIONS, compile_config

    if precision not in PRECISIONS:
        raise BundleError(f"bundle asks for OpenVINO inference precision {precision!r}; expected one of {', '.join(PRECISIONS)}.")
    try:
        core = ov.Core()
        model = core.read_model(members.pop(model_name), members.pop(weights_name))
        compiled = core.compile_model(model, "CPU", compile_config(threads, precision))
    except Exception as err:  # openvino raises RuntimeError with multi-line messages
        raise BundleError(f"bundle model {model_name!r} cannot be loaded by openvino {ov.__version__}: "
                          f"{str(err).splitlines()[0] if str(err) else type(err).__name__}.") from None
    session = _OpenVINOSession(compiled, SERVER_LENGTH_MULTIPLE if server else None, manifest.get("max_sequence_length"))
    _check_input_dtypes(manifest, {port.get_any_name(): port.get_element_type().to_dtype().name for port in compiled.inputs})
    return session, session.input_names, session.num_logits


# model_format (core/formats.py) -> (manifest, members, model file name, threads, server) -> (session, input
# names, logit count or None); a session answers run(["logits"], feed).
SESSIONS = {ONNX.name: _onnx_session, OPENVINO_IR.name: _openvino_session}
# The formats a generating task's bundle may hold: the generation loop steps ONNX Runtime sessions.
GENERATING_SESSIONS = {ONNX.name: _onnx_session}
