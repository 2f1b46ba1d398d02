"""The pass interface: a pass takes a ModelState and returns a PassResult. Nothing goes back."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mcompress.state import ModelKind, ModelState

if TYPE_CHECKING:
    from mcompress.calibration.datasets import LabelledTexts
    from mcompress.recipe import Recipe


@dataclass
class PassResult:
    state: ModelState
    modified: bool
    metrics: dict = field(default_factory=dict)


@dataclass
class PassContext:
    """Everything a pass may read besides the model. Passed explicitly, never global."""

    recipe: "Recipe"
    target: Any  # the Target: passes read its capabilities, never its name
    work_dir: Path  # scratch space for intermediate files, removed after the run
    calibration: "LabelledTexts"  # calibration text (labels unused)
    selection: "LabelledTexts"  # labelled data for choosing between candidates (validation split)
    reference_selection_accuracy: float  # the FP32 original's accuracy on `selection`

    @property
    def seed(self) -> int:
        return self.recipe.seed


class Pass(ABC):
    name: str
    accepts: tuple[ModelKind, ...]
    produces: ModelKind

    @abstractmethod
    def call(self, state: ModelState, ctx: PassContext) -> PassResult: ...

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"
