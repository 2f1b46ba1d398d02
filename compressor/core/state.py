"""What flows between passes: one model, its kind, and where it came from."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from mcompress.core.checkpoint import Checkpoint


class ModelKind(str, Enum):
    TORCH = "torch"
    ONNX = "onnx"
    ENGINE = "engine"
    OPENVINO = "openvino"  # OpenVINO IR: model.xml (graph) + model.bin (weights)


@dataclass(frozen=True)
class ModelState:
    kind: ModelKind
    source: Checkpoint  # the original checkpoint: hash, task, label map, tokenizer files
    tokenizer: Any
    torch_model: Any = None  # set when kind is TORCH
    onnx_path: Path | None = None  # set when kind is ONNX
    ir_path: Path | None = None  # set when kind is OPENVINO: the .xml; its weights are the .bin beside it
    # Facts a pass records for later passes and the report, e.g. {"quantization": "dynamic"}.
    annotations: dict = field(default_factory=dict)

    @property
    def model_file(self) -> Path | None:
        """The file a target's runner loads: the ONNX graph or the OpenVINO IR's .xml."""
        return self.ir_path if self.kind is ModelKind.OPENVINO else self.onnx_path

    def size_bytes(self) -> int:
        if self.kind is ModelKind.TORCH:
            return sum(t.numel() * t.element_size() for t in self.torch_model.state_dict().values())
        if self.kind is ModelKind.OPENVINO:
            xml = Path(self.ir_path)
            return xml.stat().st_size + xml.with_suffix(".bin").stat().st_size
        path = Path(self.onnx_path)
        extra = path.with_name(path.name + ".data")
        return path.stat().st_size + (extra.stat().st_size if extra.exists() else 0)

    def as_onnx(self, path: Path, **annotations) -> "ModelState":
        return dataclasses.replace(self, kind=ModelKind.ONNX, torch_model=None, onnx_path=Path(path),
                                   annotations={**self.annotations, **annotations})

    def as_openvino(self, xml_path: Path, **annotations) -> "ModelState":
        return dataclasses.replace(self, kind=ModelKind.OPENVINO, torch_model=None, onnx_path=None,
                                   ir_path=Path(xml_path), annotations={**self.annotations, **annotations})
