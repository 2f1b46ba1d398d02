"""The pass interface: a pass takes a ModelState and returns a PassResult. Nothing goes back."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

from mcompress.core.state import ModelKind, ModelState

if TYPE_CHECKING:
    from mcompress.calibration.datasets import LabelledTexts
    from mcompress.core.recipe import Recipe
    from mcompress.core.task import Task


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
    calibration: "LabelledTexts"  # calibration/train text; prune and distill use its labels when present
    selection: "LabelledTexts"  # labelled data for choosing between candidates (validation split)
    # The FP32 original's score on `selection` in the gated metric (accuracy; entity F1 for a tagger).
    reference_selection_score: float
    # A UI hook, like pipeline.prepare.ProgressFactory: progress(description, total) returns an advance(n) callable.
    progress: Optional[Callable[[str, int], Callable[[int], None]]] = None
    # Persistent dir for checkpoints that let a long pass resume after an interruption (the pass
    # cache's dir when caching is on); None = scratch space inside work_dir.
    resume_dir: Optional[Path] = None
    # The model's task (core/task.py): passes call its hooks, never test for its name. None: the
    # task of the calibration data.
    task: Optional["Task"] = None
    # An observer hook: on_progress(pass name, figures) while a pass runs, e.g. distill's
    # {"step", "selection_score"} after each validation evaluation (mcompress tune hands them to
    # Ray Tune's early-stopping scheduler). None: nobody listens.
    on_progress: Optional[Callable[[str, dict], None]] = None

    def __post_init__(self):
        if self.task is None:
            from mcompress.core.task import get_task

            self.task = get_task(self.calibration.task)

    @property
    def seed(self) -> int:
        return self.recipe.seed


class Pass(ABC):
    name: str
    accepts: tuple[ModelKind, ...]
    produces: ModelKind
    # True: the output depends on nothing of the target (not even its capabilities), so the pass
    # cache shares it between targets (a CPU choice distills once for onnx-cpu and openvino-cpu).
    target_independent: bool = False

    @abstractmethod
    def call(self, state: ModelState, ctx: PassContext) -> PassResult: ...

    def cache_key_parts(self, ctx: PassContext) -> dict:
        """Everything besides the input model that this pass's output depends on (JSON-able); the
        pass cache (compressor/pipeline/cache.py) keys its output by it. Override with exactly what the pass
        reads. The default is conservative: the whole recipe except what only describes the run
        (name, evaluation, latency measurement), the data hashes and the target's capabilities.
        Annotations that name files must hold them as ``pathlib.Path`` so the cache carries them."""
        import dataclasses

        return {"recipe": ctx.recipe.model_dump(mode="json", exclude={"name", "eval", "latency"}),
                "calibration": ctx.calibration.content_hash(), "selection": ctx.selection.content_hash(),
                "capabilities": dataclasses.asdict(ctx.target.capabilities)}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"
