"""One trial of `mcompress tune`, run by Ray Tune on a worker: an ordinary `mcompress run`.

The point Ray Tune's searcher proposes becomes a recipe (``SearchSpace.recipe_for``), written to
``<out>/trials/<trial id>/recipe.yaml``, and the trial calls the pipeline's ``run`` (the API the
`run` command calls) with the shared pass cache, so trials with the same prefix (the same pruning,
the same export) reuse its outputs. The build goes to ``<out>/trials/<trial id>/build``, exactly as
`run --out` writes it.

What the trial reports to Ray Tune (``ray.tune.report``):

- while distilling, after every validation evaluation: ``val_shortfall``, how far the student's
  validation score is below the accuracy budget, min(0, max_drop - drop) in the drop's points (0
  while within it). The ASHA scheduler (ray_parts.HopelessOnlyASHA) stops trials whose shortfall
  is worse than their peers' at the same point of training and below minus the budget: hopeless
  ones. Within-budget trials all sit at 0 and tie, so ASHA does not favour big (accurate, slow)
  students over small ones that meet the budget.
- at the end (``final`` true): the build's gated score on the test split, its drop and gate
  verdict, batch-1 p50 latency on this worker, model bytes and size ratio: the two objectives the
  searcher optimizes are ``score`` (max) and ``latency_ms`` (min).

A build that fails its gates is still a measured point (``passed`` false); any other error fails
the trial, which Ray Tune records with its error while the search goes on.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

FINAL = "final"
SHORTFALL = "val_shortfall"  # the scheduler's metric (mode max)
OBJECTIVES = ("score", "latency_ms")  # the searcher's metrics
OBJECTIVE_MODES = ("max", "min")


@dataclass(frozen=True)
class TrialSettings:
    """What every trial shares; sent to the workers once (``tune.with_parameters``)."""

    model_dir: str
    target: str
    space: Any  # mcompress.tune.space.SearchSpace
    trials_dir: str
    cache_dir: str
    overrides: dict = field(default_factory=dict)  # dotted recipe keys applied after the point's values
    eval_data: Optional[str] = None
    calib_data: Optional[str] = None


class TrialError(RuntimeError):
    """A trial's failure as one line: Ray Tune copies and pickles a trial's exception, which the
    McompressError subclasses (several constructor arguments) do not survive."""


def trial_recipe(settings: TrialSettings, point: dict):
    return settings.space.recipe_for(point).with_overrides(**settings.overrides)


def write_recipe(recipe, path: Path) -> None:
    import yaml

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False), encoding="utf-8")


def _intermediate(figures: dict, recipe) -> dict:
    """A distillation evaluation as a result for the scheduler; the searcher's keys present but empty."""
    from mcompress.metrics.gates import metric_drop

    drop = metric_drop(figures["reference_selection_score"], figures["selection_score"], recipe.gates.drop_type)
    return {SHORTFALL: min(0.0, recipe.gates.max_drop - drop), "val_score": figures["selection_score"],
            "val_step": figures["step"], FINAL: False, **{k: None for k in OBJECTIVES}}


def final_result(report, build_dir: Path, validation: dict) -> dict:
    """The figures a finished trial reports: from its report.json, as `run` wrote it, and the last
    validation figures of its distillation (``validation``: val_shortfall, val_score)."""
    gate = report.metric_gate()
    b1 = next(b for _, b in report.latency.pairs() if b.batch_size == 1)
    if validation.get("val_score") is None:  # a pass reused from the cache reports no evaluations: its record has them
        recorded = [p.metrics["selection_accuracy"] for p in report.passes if "selection_accuracy" in p.metrics]
        validation = {**validation, "val_score": recorded[-1] if recorded else None}
    return {FINAL: True, **validation, "score": report.build.gated_score, "metric": report.metric,
            "drop": gate.value, "passed": report.passed, "failed_gates": [g.name for g in report.gates if not g.passed],
            "latency_ms": b1.p50_ms, "latency_shape": [b1.batch_size, b1.sequence_length],
            "model_bytes": report.artifact.model_bytes, "size_ratio": report.artifact.size_ratio,
            "quantization": report.artifact.quantization, "build_dir": str(build_dir), "wall_s": report.wall_s}


def run_trial(config: dict, settings: TrialSettings) -> None:
    """Ray Tune's function trainable (module-level, so workers import it by name)."""
    from ray import tune

    from mcompress.core.errors import GateFailure, McompressError
    from mcompress.pipeline.job import RunRequest, run
    from mcompress.report.schema import Report

    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # as the CLI sets it: mcompress never fetches from a hub
    trial_dir = Path(settings.trials_dir) / tune.get_context().get_trial_id()
    recipe = trial_recipe(settings, config)
    recipe_path = trial_dir / "recipe.yaml"
    write_recipe(recipe, recipe_path)
    last = {SHORTFALL: 0.0, "val_score": None}  # the last validation figures distillation reported

    def on_progress(pass_name: str, figures: dict) -> None:
        if "selection_score" in figures and "reference_selection_score" in figures:
            result = _intermediate(figures, recipe)
            last.update({k: result[k] for k in last})
            tune.report(result)

    build_dir = trial_dir / "build"
    request = RunRequest(Path(settings.model_dir), settings.target, build_dir, recipe_path,
                         Path(settings.eval_data) if settings.eval_data else None,
                         Path(settings.calib_data) if settings.calib_data else None,
                         force=True, cache_dir=Path(settings.cache_dir), on_pass_progress=on_progress)
    try:
        report = run(request)
    except GateFailure as err:
        if not (build_dir / "report.json").is_file():  # a gate after a pass: no build, nothing measured
            raise TrialError(err.one_line()) from None
        report = Report.load(build_dir / "report.json")
    except McompressError as err:
        raise TrialError(f"{type(err).__name__}: {err.one_line()}") from None
    tune.report(final_result(report, build_dir, last))
