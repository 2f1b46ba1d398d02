"""The header of a ``.safetensors`` file, read and checked before any library maps the file.

Format (https://huggingface.co/docs/safetensors): 8 bytes little-endian u64 ``N``, then ``N`` bytes
of UTF-8 JSON, then the data. The JSON maps each tensor name to ``{"dtype", "shape",
"data_offsets": [begin, end]}`` (offsets relative to the data's start) and may hold
``"__metadata__"``, a map of strings to strings. A valid file's tensors tile the data exactly:
sorted by ``begin`` they start at 0, each ends where the next begins, the last ends at the file's
end, and each spans ``prod(shape) * bits(dtype) / 8`` bytes. A header that lies about any of this
(a shape bigger than its bytes, offsets past the end or overlapping) is refused here with one
line, so neither safetensors, torch nor transformers allocates for what it claims.

Limits: the header is at most MAX_HEADER_BYTES (safetensors' own limit, 100 MB) and names at
most MAX_TENSORS tensors of at most MAX_RANK dimensions.
"""

from __future__ import annotations

import math
import struct
from pathlib import Path

from mcompress.core.errors import InputError
from mcompress.core.limits import brief_repr, json_loads_bounded

MAX_HEADER_BYTES = 100_000_000
MAX_TENSORS = 100_000
MAX_RANK = 8
# Bits per element of every dtype safetensors defines.
DTYPE_BITS = {"BOOL": 8, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8, "I16": 16, "U16": 16,
              "F16": 16, "BF16": 16, "I32": 32, "U32": 32, "F32": 32, "I64": 64, "U64": 64, "F64": 64,
              "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6, "C64": 64}
_HINT = "The file is damaged or was not written by safetensors; save the checkpoint again with save_pretrained()."


def _fail(path: Path, what: str):
    raise InputError(f"weights file {path} is corrupt or truncated (its safetensors header does not hold: {what}).", _HINT)


def _whole(value) -> bool:
    return type(value) is int and value >= 0


def _tensor_bytes(path: Path, name: str, entry) -> tuple[int, int]:
    """(begin, end) of one tensor, once its dtype, shape and offsets agree."""
    if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
        _fail(path, f"tensor {brief_repr(name)} is not {{dtype, shape, data_offsets}}")
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if not isinstance(dtype, str) or dtype not in DTYPE_BITS:
        _fail(path, f"tensor {brief_repr(name)} has an unknown dtype {brief_repr(dtype)}")
    if not isinstance(shape, list) or len(shape) > MAX_RANK or not all(_whole(d) for d in shape):
        _fail(path, f"tensor {brief_repr(name)} has shape {brief_repr(shape)}, not a list of at most {MAX_RANK} sizes")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_whole(o) for o in offsets) and offsets[0] <= offsets[1]):
        _fail(path, f"tensor {brief_repr(name)} has data_offsets {brief_repr(offsets)}, not [begin, end]")
    bits = math.prod(shape) * DTYPE_BITS[dtype]
    if bits != 8 * (offsets[1] - offsets[0]):
        _fail(path, f"tensor {brief_repr(name)} of shape {brief_repr(shape)} {dtype} needs {bits / 8:,.0f} bytes, "
                    f"its offsets span {offsets[1] - offsets[0]:,}")
    return offsets[0], offsets[1]


def read_safetensors_header(path: Path) -> dict:
    """The tensor entries of ``path``'s header ({name: entry}, ``__metadata__`` left out), checked
    against the file's size; InputError naming the first lie."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            _fail(path, f"the file is {size} bytes, shorter than the 8-byte header length")
        (length,) = struct.unpack("<Q", prefix)
        if length > MAX_HEADER_BYTES or 8 + length > size:
            _fail(path, f"it declares a {length:,}-byte header in a {size:,}-byte file (limit {MAX_HEADER_BYTES:,})")
        raw = f.read(length)
    try:
        header = json_loads_bounded(raw, max_depth=4)
    except ValueError as err:
        _fail(path, f"the header is not JSON ({err})")
    if not isinstance(header, dict):
        _fail(path, "the header is not a JSON object")
    metadata = header.pop("__metadata__", {})
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        _fail(path, "__metadata__ is not a map of strings")
    if len(header) > MAX_TENSORS:
        _fail(path, f"it lists {len(header):,} tensors, over the limit of {MAX_TENSORS:,}")
    spans = sorted((_tensor_bytes(path, name, entry), name) for name, entry in header.items())
    position = 0
    for (begin, end), name in spans:
        if begin != position:
            _fail(path, f"tensor {brief_repr(name)} starts at byte {begin:,} of the data, not {position:,} "
                        "(tensors overlap or leave a gap)")
        position = end
    if position != size - 8 - length:
        _fail(path, f"its tensors end at byte {position:,} of the data, but the file holds {size - 8 - length:,} "
                    "(truncated or padded)")
    return header


def check_header_matches_config(path: Path, header: dict, config: dict, num_labels: int) -> None:
    """The checkpoint's embedding and classifier shapes agree with config.json: the vocabulary
    and width the model will be built with, and one logit per label of the label map."""
    for suffix, expected, keys in (("embeddings.word_embeddings.weight",
                                    [config.get("vocab_size"), config.get("hidden_size", config.get("dim"))],
                                    "vocab_size, hidden_size"),
                                   ("embeddings.position_embeddings.weight",
                                    [config.get("max_position_embeddings"), config.get("hidden_size", config.get("dim"))],
                                    "max_position_embeddings, hidden_size")):
        shape = next((e["shape"] for n, e in header.items() if n.endswith(suffix)), None)
        if shape is not None and None not in expected and shape != expected:
            raise InputError(f"{path}: {suffix} has shape {shape}, config.json says [{keys}] = {expected}.",
                             "The weights and config.json come from different models; save them together.")
    # The task head: roberta's classification head ends in out_proj, the others' in classifier.
    head = header.get("classifier.out_proj.weight") or header.get("classifier.weight")
    if head is not None and head["shape"] and head["shape"][0] != num_labels:
        raise InputError(f"{path}: the classifier has {head['shape'][0]} outputs, but config.json's id2label has "
                         f"{num_labels} labels.", "Save the checkpoint with the label map it was trained with.")
