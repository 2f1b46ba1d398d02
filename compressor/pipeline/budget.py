"""The time budget of the default CPU build (``mcompress run MODEL_DIR [--time-budget 15m]``): do
structured pruning and distillation fit, and with how many distillation steps.

The default build starts with one build of the post-training plan (the default recipe,
``ptq.yaml``): its first candidate, the recipe's precision on the first CPU target. The second plan,
prune-distill, is the shipped ``prune-distill-int8.yaml`` scaled to the checkpoint's shape (keep
ceil(2L/3) of its L layers, half the heads and half the FFN width of each; for MiniLM-L6 these are
the recipe's own 4 layers, 6 heads and 768 neurons) and trained on length-grouped batches, built
for the same targets, each at the recipe's precision (a target's first precision variant). After
that first build, from the times measured so far:

    left     = budget - elapsed
    builds   = n x (seconds of that build and its gates)
    reserve  = RESERVE_SHARE x budget      (the prune pass, the race of every build, the files)
    distill  = (left - builds - reserve) / d

where n is the number of prune-distill builds and d the number of distillations they run (1 with
the pass cache, which shares the pruned and distilled model between targets; n without it). The
plan is built when distill >= MIN_DISTILL_S, with ``distill.time_limit_s = distill``: the distill
pass times its own steps and trains the steps that fit (passes/distill/kd.py). Otherwise it is
skipped, and the report says why with these figures. A checkpoint the plan does not apply to (a
task or architecture structured pruning does not know) is skipped with the validation's one line.

The other post-training candidates (the FP32 floor, the other targets and precisions) come last,
each while one more build and the reserve still fit (``fits_another_build``), and whatever the
time until some build has passed its gates, so a run never ends without a passing build that the
floor would have given. Those left out are listed in the report with the time that was left.

The decision depends on this machine's speed; the report records it (and the distill pass's
``planned_steps``), so ``--recipe`` with ``distill.steps`` set to that count rebuilds the same model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from mcompress.core.errors import InputError, TargetUnavailable
from mcompress.core.recipe import load_recipe, recipes_dir
from mcompress.pipeline.prepare import Prepared, RunRequest, prepare_recipe
from mcompress.targets import CPU_CHOICES

DEFAULT_TIME_BUDGET_S = 15 * 60.0
PRUNE_DISTILL_RECIPE = "prune-distill-int8.yaml"
PRUNE_DISTILL = "prune-distill"
RESERVE_SHARE = 0.15
MIN_DISTILL_S = 60.0


def time_budget_of(req: RunRequest) -> float | None:
    """The budget a run plans with: ``--time-budget``, or DEFAULT_TIME_BUDGET_S, for a CPU choice
    (cpu, cpu-auto) with the default recipe; None otherwise (a recipe states its own work).
    InputError for a budget given where it cannot apply."""
    planned = req.target in CPU_CHOICES and req.recipe_path is None
    if req.time_budget_s is not None and not planned:
        given = "--recipe" if req.recipe_path is not None else f"--target {req.target}"
        raise InputError(f"--time-budget plans the default CPU build (--target cpu or cpu-auto, no --recipe); this run gives {given}.",
                         "Drop --time-budget, or " + given.split()[0] + ".")
    if req.time_budget_s is not None and req.time_budget_s <= 0:
        raise InputError(f"--time-budget must be positive (got {req.time_budget_s:g} s).")
    return (req.time_budget_s or DEFAULT_TIME_BUDGET_S) if planned else None


@dataclass(frozen=True)
class BudgetPlan:
    """The prune-distill plan's decision: its run (None when skipped) and the figures behind it."""

    run: Prepared | None
    figures: dict


def prune_distill_run(prepared: Prepared) -> Prepared:
    """The run with the prune-distill recipe (InputError when it does not apply to this checkpoint
    or target): the shipped recipe scaled to the checkpoint's shape, with the command line's
    overrides (--max-drop and the like) and the default recipe's gates."""
    shape = prepared.checkpoint.block_shape
    if not all(shape.values()):
        raise InputError(f"structured pruning needs the checkpoint's layers, heads and FFN width (config gives {shape}).")
    recipe = load_recipe(recipes_dir() / PRUNE_DISTILL_RECIPE).with_overrides(**{
        "prune.keep_layers": max(1, math.ceil(2 * shape["layers"] / 3)),
        "prune.heads_per_layer": max(1, shape["heads"] // 2),
        "prune.ffn_neurons_per_layer": max(1, shape["ffn"] // 2),
        "distill.length_grouped": True,  # batches of similar length: more steps in the same time
        **prepared.request.overrides,
    })
    # the default recipe's gates (gates.metric auto: a tagger is gated on entity F1), with the overrides
    return prepare_recipe(prepared, recipe.model_copy(update={"gates": prepared.recipe.gates}))


def fits_another_build(budget_s: float, elapsed_s: float, build_s: list[float]) -> bool:
    """Whether one more candidate (as long as the mean of ``build_s``) and the reserve fit in what is left."""
    return budget_s - elapsed_s - RESERVE_SHARE * budget_s >= sum(build_s) / max(1, len(build_s))


def plan_prune_distill(prepared: Prepared, budget_s: float, elapsed_s: float, build_s: list[float]) -> BudgetPlan:
    """Whether the prune-distill plan fits in what is left of ``budget_s`` after ``elapsed_s``,
    given the seconds each post-training build took (module docstring)."""
    figures = {"budget_s": round(budget_s, 1), "elapsed_s": round(elapsed_s, 1)}
    try:
        run = prune_distill_run(prepared)
    except (InputError, TargetUnavailable) as err:
        return BudgetPlan(None, {**figures, "built": False, "reason": f"does not apply: {err.one_line()}"})
    each = sum(build_s) / max(1, len(build_s))
    reserve = RESERVE_SHARE * budget_s
    builds = len(run.targets)  # one build per target, at the recipe's precision
    distillations = 1 if prepared.cache is not None else builds
    distill_s = (budget_s - elapsed_s - builds * each - reserve) / distillations
    figures.update({"build_s_each": round(each, 1), "builds": builds, "reserve_s": round(reserve, 1),
                    "distill_s": round(distill_s, 1), "distillations": distillations})
    if distill_s < MIN_DISTILL_S:
        why = (f"skipped: {budget_s - elapsed_s:.0f} s of the {budget_s:.0f} s budget were left after the "
               f"first build; {builds} more builds (~{each:.0f} s each) and the {reserve:.0f} s "
               f"reserve leave {max(0.0, distill_s):.0f} s for distillation, under the {MIN_DISTILL_S:.0f} s "
               "it needs. Give a longer --time-budget to include it.")
        return BudgetPlan(None, {**figures, "built": False, "reason": why})
    recipe = run.recipe.with_overrides(**{"distill.time_limit_s": round(distill_s, 1)})
    return BudgetPlan(replace(run, recipe=recipe), {**figures, "built": True,
                               "reason": f"built: distillation capped at {distill_s:.0f} s (distill.time_limit_s)"})
