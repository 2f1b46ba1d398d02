"""Step 1 of every run: validate everything a user can get wrong, before any heavy work.

One preamble for a single-target run and for cpu-auto: the recipe against every target it will
be built for, the checkpoint (inspected once: inspection hashes the weights), the recipe against
the checkpoint, the data splits, ``--out`` and the cache directory.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Callable

from mcompress.calibration.datasets import is_split_dir, split_file
from mcompress.core.checkpoint import Checkpoint, inspect_checkpoint
from mcompress.core.errors import InputError
from mcompress.core.recipe import Recipe, load_recipe, validate_against_checkpoint, validate_training_data
from mcompress.core.task import Task, get_task
from mcompress.pipeline.cache import DEFAULT_MAX_GB, PassCache, default_cache_dir
from mcompress.pipeline.outputs import check_output_dir
from mcompress.pipeline.pass_gates import check_gate_passes
from mcompress.targets import get_target

# A UI hook: progress(description, total) returns an advance(n) callable. The CLI draws rich bars.
ProgressFactory = Callable[[str, int], Callable[[int], None]]


def no_progress(description: str, total: int) -> Callable[[int], None]:
    return lambda n: None


@dataclass
class RunRequest:
    model_dir: Path
    target: str = "onnx-cpu"
    out: Path | None = None
    recipe_path: Path | None = None
    eval_data: Path | None = None
    calib_data: Path | None = None
    text_column: str | None = None  # None: the task's default (text/label; tokens/tags for a tagger)
    label_column: str | None = None
    force: bool = False
    allow_pickle: bool = False
    overrides: dict = field(default_factory=dict)  # dotted recipe keys, e.g. {"gates.max_drop": 0.5}
    cache_dir: Path | None = None  # pass cache (pipeline/cache.py); None = $MCOMPRESS_CACHE_DIR or ~/.cache/mcompress
    use_cache: bool = True
    cache_max_gb: float = DEFAULT_MAX_GB
    # Called with (pass name, figures) while a pass runs (core.pass_base.PassContext.on_progress).
    on_pass_progress: Callable[[str, dict], None] | None = None
    # --time-budget: wall seconds the default CPU build plans its work in (pipeline/budget.py);
    # None = its default there. Only a CPU choice with the default recipe takes one.
    time_budget_s: float | None = None

    @property
    def default_out(self) -> Path:
        return Path("build") / f"{self.model_dir.resolve().name}-{self.target}"

    @property
    def input_paths(self) -> list[Path]:
        """What the user gave: never written to, never inside --out."""
        return [self.model_dir] + [p for p in (self.eval_data, self.calib_data, self.recipe_path) if p]


@dataclass
class DataSplits:
    eval: object  # the task's data type (LabelledTexts, TaggedSentences)
    calibration: object
    selection: object
    notes: list[str]
    calibration_is_eval: bool = False


@dataclass
class Prepared:
    """A validated run: everything the later steps read, nothing computed yet."""

    request: RunRequest
    recipe: Recipe
    targets: dict  # name -> Target, in build order
    checkpoint: Checkpoint
    task: Task
    metric: str
    data: DataSplits
    out: Path
    cache_root: Path | None
    cache: PassCache | None

    @cached_property
    def eval_data(self):
        return self.data.eval.head(self.recipe.eval.max_examples)

    @cached_property
    def selection_data(self):
        return self.data.selection.head(self.recipe.quantize.selection_examples)


def resolve_data(req: RunRequest, label2id: dict[str, int], task: Task) -> DataSplits:
    """Eval data is required; calibration and selection default to the example's splits.

    With a split dir (``MODEL_DIR/splits`` by default), eval = test, selection = validation and
    calibration = train. Without one, selection falls back to the eval data and calibration to
    the eval texts, and the report says so.
    """
    notes = []
    default_splits = req.model_dir / "splits"
    eval_path = req.eval_data or (default_splits if is_split_dir(default_splits) else None)
    if eval_path is None:
        raise InputError("no evaluation data: the model dir has no splits/ directory.",
                         "Pass --eval-data FILE (CSV or JSONL with text and label columns; CoNLL or JSONL with "
                         "tokens and tags for a tagger).")
    load = lambda p, split, labels=True: task.load_data(p, label2id, req.text_column, req.label_column, split, labels)
    eval_data = load(eval_path, "test")
    split_dir = Path(eval_path) if Path(eval_path).is_dir() else None
    if split_dir is not None and split_file(split_dir, "validation"):
        selection = load(split_dir, "validation")
    else:
        selection = eval_data
        notes.append("no validation split: quantization candidates were scored on the eval data")
    if req.calib_data is not None:
        calibration = load(req.calib_data, "train", labels=False)
    elif split_dir is not None and split_file(split_dir, "train"):
        calibration = load(split_dir, "train", labels=False)
    else:
        calibration = eval_data.without_labels()
        notes.append("no calibration data given: calibrated on the eval texts (pass --calib-data)")
        return DataSplits(eval_data, calibration, selection, notes, calibration_is_eval=True)
    return DataSplits(eval_data, calibration, selection, notes)


def _validate_targets(recipe: Recipe, names: tuple[str, ...]) -> dict:
    targets = {name: get_target(name) for name in names}
    for target in targets.values():
        target.check_available()
        target.validate_recipe(recipe)
        check_gate_passes(recipe, [p.name for p in target.pipeline(recipe)])
    return targets


def _task_for(recipe: Recipe, ckpt: Checkpoint, targets: dict) -> tuple[Task, str]:
    """The checkpoint's task as ``recipe`` configures it, and its gated metric, once the recipe
    is checked against the task, the targets and the checkpoint (InputError otherwise)."""
    task = get_task(ckpt.task).for_recipe(recipe)
    task.check_recipe(recipe)
    for target in targets.values():
        target.check_task(task)
    metric = task.gated_metric(recipe.gates.metric)
    validate_against_checkpoint(recipe, ckpt)
    _check_max_length(recipe, ckpt)
    return task, metric


def _check_max_length(recipe: Recipe, ckpt: Checkpoint) -> None:
    from mcompress.core.checkpoint import POSITIONS_KEYS, config_value

    max_positions = config_value(ckpt.config, POSITIONS_KEYS)
    if max_positions and recipe.max_length > max_positions:
        raise InputError(f"recipe max_length {recipe.max_length} exceeds the model's max_position_embeddings {max_positions}.",
                         f"Set max_length <= {max_positions}.")


def _open_cache(req: RunRequest, out: Path) -> tuple[Path | None, PassCache | None]:
    cache_root = Path(req.cache_dir or default_cache_dir()).expanduser() if req.use_cache else None
    if cache_root and out.resolve() in (cache_root.resolve(), *cache_root.resolve().parents):
        raise InputError(f"the cache directory {cache_root} lies inside --out {out}: replacing the build would delete it.",
                         "Choose another --cache-dir or --out.")
    return cache_root, PassCache.open(cache_root, req.cache_max_gb) if cache_root else None


def request_recipe(req: RunRequest) -> Recipe:
    """The recipe a run uses: the file (or the default), with the command line's overrides."""
    return load_recipe(req.recipe_path).with_overrides(**req.overrides)


def prepare(req: RunRequest, target_names: tuple[str, ...]) -> Prepared:
    """Validate a run that builds ``target_names`` (one target, or the CPU targets of a CPU choice)."""
    recipe = request_recipe(req)
    targets = _validate_targets(recipe, target_names)
    ckpt = inspect_checkpoint(req.model_dir, allow_pickle=req.allow_pickle)
    task, metric = _task_for(recipe, ckpt, targets)
    out = req.out or req.default_out
    data = resolve_data(req, ckpt.label2id, task)
    validate_training_data(recipe, len(data.calibration), data.calibration_is_eval)
    check_output_dir(out, req.force, req.input_paths)
    cache_root, cache = _open_cache(req, out)
    return Prepared(req, recipe, targets, ckpt, task, metric, data, out, cache_root, cache)


def prepare_recipe(prepared: Prepared, recipe: Recipe) -> Prepared:
    """The same run (checkpoint, data, targets, output) with another recipe, validated as
    ``prepare`` validates one (InputError or TargetUnavailable before any work)."""
    for target in prepared.targets.values():
        target.validate_recipe(recipe)
    task, metric = _task_for(recipe, prepared.checkpoint, prepared.targets)
    validate_training_data(recipe, len(prepared.data.calibration), prepared.data.calibration_is_eval)
    return replace(prepared, recipe=recipe, task=task, metric=metric)

