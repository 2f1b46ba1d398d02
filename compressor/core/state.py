"""What flows between passes: one model (in memory, or a model file in a known format), and where
it came from."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mcompress.core.checkpoint import Checkpoint
from mcompress.core.formats import ModelFormat, ModelKind, format_for_kind

__all__ = ["ModelKind", "ModelState", "TOKENIZER_DIR"]

# Annotation: a directory of tokenizer files (core.formats.TOKENIZER_FILES) that replaced the
# source checkpoint's, e.g. after vocabulary pruning. Builds ship those files; every later pass,
# evaluation and latency measurement of this state tokenizes with them.
TOKENIZER_DIR = "tokenizer_dir"


@dataclass(frozen=True)
class ModelState:
    kind: ModelKind
    source: Checkpoint  # the original checkpoint: hash, task, label map, tokenizer files
    tokenizer: Any
    torch_model: Any = None  # set when kind is TORCH
    # Set when the model lives in files: the file a runner loads (the ONNX graph, the IR's .xml);
    # the format (from kind) knows the files beside it.
    model_file: Path | None = None
    # Facts a pass records for later passes and the report, e.g. {"quantization": "dynamic"}.
    annotations: dict = field(default_factory=dict)

    @property
    def format(self) -> ModelFormat | None:
        """The model file's format; None for a model in memory."""
        return format_for_kind(self.kind)

    def _file_if(self, kind: ModelKind) -> Path | None:
        return self.model_file if self.kind is kind else None

    # Read-only views for passes that handle one format: the model file when it is in that format.
    onnx_path = property(lambda self: self._file_if(ModelKind.ONNX))
    ir_path = property(lambda self: self._file_if(ModelKind.OPENVINO))

    @property
    def tokenizer_files_dir(self) -> Path:
        """Where this model's tokenizer files are: the source checkpoint, unless a pass replaced them."""
        return Path(self.annotations.get(TOKENIZER_DIR) or self.source.path)

    def with_tokenizer_reloaded(self) -> "ModelState":
        """This state with its tokenizer loaded from its TOKENIZER_DIR annotation, if it has one (a
        cache hit restores files, not the tokenizer object)."""
        if TOKENIZER_DIR not in self.annotations:
            return self
        from transformers import AutoTokenizer

        return dataclasses.replace(self, tokenizer=AutoTokenizer.from_pretrained(self.tokenizer_files_dir,
                                                                                 local_files_only=True))

    def size_bytes(self) -> int:
        if self.format is None:
            # tied weights (a decoder's embedding and LM head) share storage and are saved once
            unique = {(t.data_ptr(), t.numel(), t.dtype): t.numel() * t.element_size()
                      for t in self.torch_model.state_dict().values()}
            return sum(unique.values())
        return self.format.size(Path(self.model_file))

    def with_model_file(self, kind: ModelKind, path: Path, **annotations) -> "ModelState":
        """This model, now in the file ``path`` of ``kind``'s format, with more annotations."""
        return dataclasses.replace(self, kind=kind, torch_model=None, model_file=Path(path),
                                   annotations={**self.annotations, **annotations})

    def as_onnx(self, path: Path, **annotations) -> "ModelState":
        return self.with_model_file(ModelKind.ONNX, path, **annotations)

    def as_openvino(self, xml_path: Path, **annotations) -> "ModelState":
        return self.with_model_file(ModelKind.OPENVINO, xml_path, **annotations)
