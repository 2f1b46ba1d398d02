"""Model formats: which files one model is made of, so that sizing, caching, building and
packaging never test a file suffix.

A model lives either in memory (a PyTorch module, ``ModelKind.TORCH``) or in files. A file-backed
model is named by one *model file*; the format knows the files that travel with it:

- ONNX: ``<name>.onnx``, plus ``<name>.onnx.data`` when the weights are stored as external data
  (models over protobuf's 2 GB limit). The graph records the data file's name, so copying under a
  new name rewrites that reference (with onnx, imported only then).
- OpenVINO IR: ``<name>.xml`` (the graph) and ``<name>.bin`` (its weights), always together.
- TensorRT engine: one serialized file (``.engine``, ``.plan`` or ``.trt``).

This module imports nothing heavy at import time (the torch-free bundle runtime uses it).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from mcompress.core.hashing import file_digest, json_digest

# Files of a Hugging Face tokenizer, copied and hashed with every model that uses it (the union of
# what fast, WordPiece, BPE and SentencePiece tokenizers save). transformers' AutoTokenizer reads
# them from a build or a bundle; the cache hashes them because they decide every pass's inputs.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt", "vocab.json",
                   "merges.txt", "added_tokens.json", "spiece.model", "sentencepiece.bpe.model")
# Configuration beside config.json that a build carries when the source has it (a decoder's
# generation defaults: ORTModelForCausalLM and transformers read them).
CONFIG_SIDE_FILES = ("generation_config.json",)
# A checkpoint has a tokenizer when it holds at least one of these vocabularies.
VOCABULARY_FILES = ("tokenizer.json", "vocab.txt", "vocab.json")


class ModelKind(str, Enum):
    TORCH = "torch"
    ONNX = "onnx"
    ENGINE = "engine"
    OPENVINO = "openvino"  # OpenVINO IR: model.xml (graph) + model.bin (weights)


@dataclass(frozen=True)
class ModelFormat:
    """A file-backed model format. ``name`` is what a bundle manifest records as model_format."""

    name: str
    kind: ModelKind
    model_file: str  # the model file's name in a build directory
    suffixes: tuple[str, ...]  # model files of this format end in one of these

    def companions(self, path: Path) -> list[Path]:
        """Files beside the model file that belong to it and must exist."""
        return []

    def optional_companions(self, path: Path) -> list[Path]:
        """Files beside the model file that belong to it when present."""
        return []

    def recognises(self, path: Path) -> bool:
        return Path(path).name.lower().endswith(self.suffixes)

    def files(self, path: Path) -> list[Path]:
        """The model file, its required companions, and the optional ones that exist."""
        path = Path(path)
        return [path, *self.companions(path), *(p for p in self.optional_companions(path) if p.is_file())]

    def size(self, path: Path) -> int:
        return sum(p.stat().st_size for p in self.files(path))

    def digest(self, path: Path) -> str:
        """sha256 over the contents of every file of the model (not their names)."""
        return json_digest(self.name, [file_digest(p) for p in self.files(path)])

    def copy(self, src: Path, dst_dir: Path, name: str | None = None) -> Path:
        """Copy the model's files into ``dst_dir``, the model file as ``name`` (default: its own
        name) and each companion named to match; return the new model file."""
        src = Path(src)
        dst = Path(dst_dir) / (name or src.name)
        dst.parent.mkdir(parents=True, exist_ok=True)
        pairs = [(src, dst), *zip(self.companions(src), self.companions(dst))]
        pairs += [(s, d) for s, d in zip(self.optional_companions(src), self.optional_companions(dst)) if s.is_file()]
        for source, target in pairs:
            shutil.copyfile(source, target)
        return dst


@dataclass(frozen=True)
class OnnxFormat(ModelFormat):
    def optional_companions(self, path: Path) -> list[Path]:
        return [path.with_name(path.name + ".data")]  # external data, as the export writes it

    def copy(self, src: Path, dst_dir: Path, name: str | None = None) -> Path:
        src = Path(src)
        dst = Path(dst_dir) / (name or src.name)
        if dst.name == src.name or len(self.files(src)) == 1:
            return super().copy(src, dst_dir, name)
        # The graph names its external data file: save again under the new name.
        import onnx

        dst.parent.mkdir(parents=True, exist_ok=True)
        model = onnx.load(str(src), load_external_data=True)
        onnx.save_model(model, str(dst), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=self.optional_companions(dst)[0].name, size_threshold=0)
        return dst


@dataclass(frozen=True)
class OpenVINOFormat(ModelFormat):
    def companions(self, path: Path) -> list[Path]:
        return [path.with_suffix(".bin")]  # the IR's weights; the .xml refers to them by position


ONNX = OnnxFormat("onnx", ModelKind.ONNX, "model.onnx", (".onnx",))
OPENVINO_IR = OpenVINOFormat("openvino-ir", ModelKind.OPENVINO, "model.xml", (".xml",))
TENSORRT_ENGINE = ModelFormat("tensorrt-engine", ModelKind.ENGINE, "model.engine", (".engine", ".plan", ".trt"))
FORMATS = (ONNX, OPENVINO_IR, TENSORRT_ENGINE)


def format_for_kind(kind: ModelKind) -> ModelFormat | None:
    """The format of a file-backed kind; None for an in-memory (torch) model."""
    return next((f for f in FORMATS if f.kind is kind), None)


def format_of(path: Path) -> ModelFormat | None:
    """The format a model file is in, recognised by its name; None for any other file."""
    return next((f for f in FORMATS if f.recognises(path)), None)


def format_named(name: str) -> ModelFormat | None:
    """The format a bundle manifest or report names (``model_format``)."""
    return next((f for f in FORMATS if f.name == name), None)

