"""The recipe space `mcompress tune` searches, and how a point of it becomes a recipe.

A space is a base recipe and a set of parameters, each a dotted recipe key (``prune.keep_layers``,
``distill.alpha``, ``quantize.mode``) with a domain: ``choice`` (a list of values), ``uniform`` or
``loguniform`` (floats in [lo, hi]) or ``randint`` (integers in [lo, hi], both included). A trial's
recipe is the base recipe with the point's values applied as overrides (``Recipe.with_overrides``,
the same path as ``mcompress run``'s flags), then one normalisation: a point that prunes nothing
(every layer, head and FFN neuron kept) has no ``prune`` and no ``distill`` section, since there is
nothing to recover, so it is a plain post-training quantization.

The default space (``default_space``) is derived from the checkpoint's shape (L layers, H heads
per layer, FFN width F) on top of ``recipes/prune-distill-int8.yaml``:

    prune.keep_layers            choice  ceil(L/2) .. L
    prune.heads_per_layer        choice  H/4, H/2, 3H/4, H   (rounded down, at least 1, distinct)
    prune.ffn_neurons_per_layer  choice  F/4, F/2, 3F/4, F
    distill.epochs               choice  1, 2, 3
    distill.alpha                uniform 0.3 .. 0.9
    distill.hidden_weight        choice  0.0, 1.0
    quantize.mode                choice  auto, dynamic, static
    optimize.fusion              choice  auto, fused, unfused
    fallback.enabled             choice  false, true

and starts with the front's anchors, points measured in full whatever ASHA says of them
(tune/ray_parts.py), so that the front spans the latency range instead of clustering where the
model-based search first finds the budget met:

    unpruned   every layer, head and FFN neuron, dynamic INT8 on the fused graph (cheap, so a
               short budget still returns a build)
    base       the base recipe's own values where they lie in the space
    ladder     the smallest shape the space allows (fewest layers, heads and FFN neurons), then
               LADDER_RUNGS (4) shapes between it and the base's, evenly spaced in cost, fastest
               first; each dynamic INT8 on the fused graph, as the unpruned anchor
    larger     ceil(3L/4) layers, 3H/4 heads, 3F/4 FFN neurons (between the base and the unpruned)

(each value where its domain holds it, else the base point's; duplicates dropped). The ladder's
shapes keep at most the base's layers, heads and FFN neurons each; a shape's cost is its blocks'
multiply-adds per token, per hidden unit (``block_cost``):

    cost(L, h, f) = L x (4 h d + 2 f)        d = hidden size / heads: the head dimension

(four attention projections of hidden x h d and two FFN matrices of hidden x f per layer; the
attention scores, 2 x sequence x h d, are about 5% of it at sequence 128 and left out). The k-th
rung is the shape nearest to cost(smallest) + k/5 of the way to cost(base), ties to the deeper
shape. On MiniLM-L6 (d = 32) that is 3/3/384, 4/3/384, 3/3/768, 3/6/768 and 4/3/768 below the base's
4/6/768 (costs 3,456 to 7,680 against 9,216). Why a ladder: a student faster than the base
recipe's is nearly always more than the budget below the reference after a trial's distillation,
so ASHA stops the searcher's ones early (ray_parts.HopelessOnlyASHA) and only anchors reach the
front's fast end; the ladder tells the user what each step in speed costs in accuracy. In a
60-minute tune on 2 cores the searcher's own points were all dominated or stopped, and every
anchor at or below the base's cost was on the front (benchmarks/RESULTS.md). Why the rungs'
quantization is pinned: ``quantize.mode: auto`` keeps the most accurate candidate when none is
within the budget, and a rung's student nearly always is past it already, so auto gave rungs
static INT8 on the unfused graph, 15-25% slower than the dynamic graph timed in the same
selection (RESULTS.md, ninth session): the front would show the shape at its slowest.
Its trials distil on length-grouped batches (``distill.length_grouped``), as the default build's
prune-distill plan does (pipeline/budget.py): more steps in the same time.

Distillation time per trial (``with_trial_time``): a search is worth its front, so the budget is
shared out before the search, not spent on whichever trials come first. Every distilling trial
gets ``distill.time_limit_s`` (the distill pass trains the steps that fit, passes/distill/kd.py):

    distill_s = DISTILL_SHARE x search_s / min(trials, MEASURED_POINTS)

the search time shared among MEASURED_POINTS trials (6), of which distillation takes
DISTILL_SHARE (one half; pruning, export, quantization, the gates' evaluations and the latency
timing take the rest), and never under MIN_DISTILL_S. On 2 cores, 60 minutes gives each
distillation 275 s instead of the ~10 minutes of the base recipe's 3 epochs. The base recipe's own
point is the exception: it distils as its recipe says, up to BASE_SHARE (a third) of the search
time, so that within a budget that holds it, the front includes the build `run --recipe` would
make (on length-grouped batches), and when that build passes its gates tune keeps none slower
than it (a 60-minute tune on 2 cores gives it up to 1,100 s). A base recipe or space that sets
``distill.time_limit_s`` itself keeps it.

A YAML space has the same shape (``docs/distributed.md``)::

    base_recipe: prune-distill-int8.yaml   # a shipped recipe, or a path relative to this file
    parameters:
      prune.keep_layers: {choice: [2, 3, 4]}
      distill.alpha: {uniform: [0.3, 0.9]}
    start_with:                            # points tried first (optional)
      - {prune.keep_layers: 4, distill.alpha: 0.5}

Every value a domain can give is checked against the recipe schema and the checkpoint before any
work (an unknown key or an impossible value is one line, exit 2).
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Any, Optional, Union

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from mcompress.core.errors import InputError
from mcompress.core.limits import brief
from mcompress.core.recipe import Recipe, load_recipe, read_yaml_mapping, recipes_dir, validate_against_checkpoint
from mcompress.pipeline.budget import MIN_DISTILL_S  # the least distillation the default build plans, too

DEFAULT_BASE_RECIPE = "prune-distill-int8.yaml"
MEASURED_POINTS = 6  # the trials a search's time is shared among (module docstring)
DISTILL_SHARE = 0.5
BASE_SHARE = 1 / 3  # the most of the search time the base recipe's own point may distil for
TIME_LIMIT_KEY = "distill.time_limit_s"
Value = Union[bool, int, float, str, None]
PRUNE_KEYS = ("keep_layers", "heads_per_layer", "ffn_neurons_per_layer")
PRUNE_PARAMETERS = tuple(f"prune.{k}" for k in PRUNE_KEYS)
LADDER_RUNGS = 4  # the default space's anchors between its smallest shape and the base's (module docstring)
RUNG_BUILD = {"quantize.mode": "dynamic", "optimize.fusion": "fused"}  # every rung's, whatever its accuracy


class Domain(BaseModel):
    """Exactly one of: ``choice`` (values), ``uniform``/``loguniform`` ([lo, hi] floats), ``randint`` ([lo, hi] ints)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    choice: Optional[list[Value]] = None
    uniform: Optional[tuple[float, float]] = None
    loguniform: Optional[tuple[float, float]] = None
    randint: Optional[tuple[int, int]] = None

    @model_validator(mode="after")
    def _one_kind(self):
        given = [k for k in ("choice", "uniform", "loguniform", "randint") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of choice, uniform, loguniform, randint")
        if self.choice is not None and not self.choice:
            raise ValueError("choice needs at least one value")
        bounds = self.bounds()
        if bounds is not None and not bounds[0] <= bounds[1]:
            raise ValueError(f"needs lo <= hi (got {list(bounds)})")
        if self.loguniform is not None and self.loguniform[0] <= 0:
            raise ValueError("loguniform needs lo > 0")
        return self

    def bounds(self) -> Optional[tuple]:
        return self.uniform or self.loguniform or self.randint

    def extremes(self) -> list[Value]:
        """The values that bound what the domain can give (every choice; lo and hi)."""
        return list(self.choice) if self.choice is not None else list(self.bounds())

    def contains(self, value: Value) -> bool:
        if self.choice is not None:
            return value in self.choice
        lo, hi = self.bounds()
        return isinstance(value, (int, float)) and not isinstance(value, bool) and lo <= value <= hi \
            and (self.randint is None or float(value).is_integer())

    def default(self) -> Value:
        """A value inside the domain: the first choice, or the middle of the range."""
        if self.choice is not None:
            return self.choice[0]
        lo, hi = self.bounds()
        if self.randint is not None:
            return (lo + hi) // 2
        return math.sqrt(lo * hi) if self.loguniform is not None else (lo + hi) / 2

    def to_ray(self):
        from ray import tune

        if self.choice is not None:
            return tune.choice(list(self.choice))
        if self.uniform is not None:
            return tune.uniform(*self.uniform)
        if self.loguniform is not None:
            return tune.loguniform(*self.loguniform)
        return tune.randint(self.randint[0], self.randint[1] + 1)  # Ray's upper bound is exclusive


class SpaceFile(BaseModel):
    """The YAML a user gives with --space."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    base_recipe: Optional[str] = None
    parameters: dict[str, Domain]
    start_with: list[dict[str, Value]] = []


class SearchSpace(BaseModel):
    """A validated space: the base recipe, the parameters and the points tried first."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)
    base: Recipe
    base_source: str
    parameters: dict[str, Domain]
    start_with: list[dict[str, Value]]
    model_shape: dict[str, int]  # layers, heads, ffn of the checkpoint (the "prunes nothing" test)
    distill_time_limit_s: Optional[float] = None  # given to every distilling trial (with_trial_time)
    base_distill_time_limit_s: Optional[float] = None  # the base recipe's own point's instead

    def to_ray(self) -> dict:
        return {key: domain.to_ray() for key, domain in self.parameters.items()}

    def recipe_for(self, point: dict[str, Any]) -> Recipe:
        """The trial's recipe: the base with the point's values, normalised (module docstring)."""
        recipe = self.base.with_overrides(**{k: as_python(v) for k, v in point.items()})
        if recipe.prune is not None and _prunes_nothing(recipe, self.model_shape):
            data = recipe.model_dump()
            data.update(prune=None, distill=None)
            recipe = Recipe.model_validate(data)
        if self.distill_time_limit_s is not None and recipe.distill is not None and recipe.distill.time_limit_s is None:
            is_base = {k: as_python(v) for k, v in point.items()} == _base_point(self.base, self.parameters)
            limit = self.base_distill_time_limit_s if is_base and self.base_distill_time_limit_s else self.distill_time_limit_s
            recipe = recipe.with_overrides(**{TIME_LIMIT_KEY: limit})
        return recipe

    def describe(self) -> dict:
        """The space as tune.json records it."""
        return {"base_recipe": self.base_source,
                "parameters": {k: d.model_dump(exclude_none=True) for k, d in self.parameters.items()},
                "start_with": self.start_with, "model_shape": self.model_shape,
                "distill_time_limit_s": self.distill_time_limit_s,
                "base_distill_time_limit_s": self.base_distill_time_limit_s}


def with_trial_time(space: SearchSpace, search_s: float, trials: int) -> SearchSpace:
    """The space with each distilling trial's share of ``search_s``, and the base recipe's point's
    larger one (module docstring); unchanged when the base recipe does not distil or already sets
    its time limit, or the space searches it."""
    distill = space.base.distill
    if distill is None or distill.time_limit_s is not None or TIME_LIMIT_KEY in space.parameters:
        return space
    limit = max(MIN_DISTILL_S, DISTILL_SHARE * search_s / max(1, min(trials, MEASURED_POINTS)))
    base_limit = max(limit, BASE_SHARE * search_s)
    return space.model_copy(update={"distill_time_limit_s": round(limit, 1),
                                    "base_distill_time_limit_s": round(base_limit, 1)})


def as_python(value):
    """numpy scalars (Ray and Optuna hand them out) as Python values."""
    return value.item() if hasattr(value, "item") else value


def _prunes_nothing(recipe: Recipe, shape: dict[str, int]) -> bool:
    prune = recipe.prune
    if prune.keep_ratio not in (None, 1.0) or prune.semi_structured_2_4 or prune.vocabulary is not None:
        return False
    full = _unpruned_values(shape)
    return all(getattr(prune, k) in (None, full[k]) for k in PRUNE_KEYS)


def _unpruned_values(shape: dict[str, int]) -> dict[str, int]:
    """Each prune key's value that keeps the whole checkpoint (every layer, head and FFN neuron)."""
    return dict(zip(PRUNE_KEYS, (shape["layers"], shape["heads"], shape["ffn"])))


def _fractions(full: int) -> list[int]:
    return sorted({max(1, full * q // 4) for q in (1, 2, 3, 4)})


def default_parameters(shape: dict[str, int]) -> dict[str, Domain]:
    layers = shape["layers"]
    return {
        "prune.keep_layers": Domain(choice=list(range(max(1, math.ceil(layers / 2)), layers + 1))),
        "prune.heads_per_layer": Domain(choice=_fractions(shape["heads"])),
        "prune.ffn_neurons_per_layer": Domain(choice=_fractions(shape["ffn"])),
        "distill.epochs": Domain(choice=[1, 2, 3]),
        "distill.alpha": Domain(uniform=(0.3, 0.9)),
        "distill.hidden_weight": Domain(choice=[0.0, 1.0]),
        # "auto" (measure both, keep the faster: what the shipped recipes do) is in both domains, so
        # the base recipe's start point quantizes and fuses exactly as that recipe does
        "quantize.mode": Domain(choice=["auto", "dynamic", "static"]),
        "optimize.fusion": Domain(choice=["auto", "fused", "unfused"]),
        "fallback.enabled": Domain(choice=[False, True]),
    }


def _base_point(base: Recipe, parameters: dict[str, Domain]) -> dict[str, Value]:
    """The base recipe's own value of every parameter, or the domain's default where it lies outside."""
    point = {}
    dumped = base.model_dump(mode="json")
    for key, domain in parameters.items():
        node: Any = dumped
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        point[key] = node if domain.contains(node) else domain.default()
    return point


def block_cost(kept: tuple[int, int, int], head_dim: int) -> int:
    """Multiply-adds per token of the kept blocks' matrix products, per hidden unit (module
    docstring): (layers, heads, FFN neurons) kept, ``head_dim`` the checkpoint's head dimension."""
    layers, heads, ffn = kept
    return layers * (4 * heads * head_dim + 2 * ffn)


def _ladder(parameters: dict[str, Domain], base_point: dict, head_dim: int) -> list[tuple[int, int, int]]:
    """The smallest kept shape the space allows, then LADDER_RUNGS shapes between it and the base's,
    evenly spaced in block_cost, fastest first (module docstring); none when the space does not
    choose among values for all three prune keys."""
    if not all(k in parameters and parameters[k].choice is not None for k in PRUNE_PARAMETERS):
        return []
    base = tuple(base_point[k] for k in PRUNE_PARAMETERS)
    below = [shape for shape in itertools.product(*(parameters[k].choice for k in PRUNE_PARAMETERS))
             if shape != base and all(v <= b for v, b in zip(shape, base))]
    if not below:
        return []

    def cost(shape):
        return block_cost(shape, head_dim)

    smallest = min(below, key=lambda shape: (cost(shape), -shape[0]))
    lo, hi = cost(smallest), cost(base)
    rungs = [smallest]
    for k in range(1, LADDER_RUNGS + 1):
        left = [shape for shape in below if shape not in rungs]
        if not left:
            break
        target = lo + k * (hi - lo) / (LADDER_RUNGS + 1)
        rungs.append(min(left, key=lambda shape: (abs(cost(shape) - target), -shape[0])))  # ties: the deeper
    return sorted(rungs, key=cost)


def _anchor_points(shape: dict[str, int], parameters: dict[str, Domain], base_point: dict,
                   head_dim: int) -> list[dict[str, Value]]:
    """The default space's start points (module docstring), in the order they are tried."""
    def at(**wanted) -> dict[str, Value]:
        return {k: wanted[k] if k in wanted and parameters[k].contains(wanted[k]) else v for k, v in base_point.items()}

    points = [
        at(**{f"prune.{k}": v for k, v in _unpruned_values(shape).items()},
           **{"quantize.mode": "dynamic", "optimize.fusion": "fused", "fallback.enabled": False}),
        base_point,
        *(at(**dict(zip(PRUNE_PARAMETERS, kept)), **RUNG_BUILD) for kept in _ladder(parameters, base_point, head_dim)),
        at(**{"prune.keep_layers": math.ceil(3 * shape["layers"] / 4),
              "prune.heads_per_layer": max(1, 3 * shape["heads"] // 4),
              "prune.ffn_neurons_per_layer": max(1, 3 * shape["ffn"] // 4)}),
    ]
    return [p for i, p in enumerate(points) if p not in points[:i]]


def _resolve_base(name: Optional[str], relative_to: Optional[Path]) -> Path:
    if name is None:
        return recipes_dir() / DEFAULT_BASE_RECIPE
    path = Path(name)
    if not path.is_absolute() and relative_to is not None and (relative_to / path).is_file():
        return relative_to / path
    if not path.is_absolute() and (recipes_dir() / path).is_file():
        return recipes_dir() / path
    return path


def _check(space: SearchSpace, ckpt, origin: str) -> None:
    """Every value a domain can give (with the other parameters at the base recipe's point), and
    every start point, make a recipe valid for this checkpoint."""
    base_point = _base_point(space.base, space.parameters)
    for key, domain in space.parameters.items():
        for value in domain.extremes():
            _check_point(space, {**base_point, key: value}, ckpt, f"{origin}: parameter '{key}' value {value!r}")
    for i, point in enumerate(space.start_with):
        unknown = sorted(set(point) - set(space.parameters))
        if unknown:
            raise InputError(f"{origin}: start_with[{i}] sets '{unknown[0]}', which is not a parameter.",
                             "Start points may only set keys listed under parameters.")
        outside = next((k for k, v in point.items() if not space.parameters[k].contains(v)), None)
        if outside:
            raise InputError(f"{origin}: start_with[{i}] gives {outside} = {point[outside]!r}, outside its domain.")
        _check_point(space, point, ckpt, f"{origin}: start_with[{i}]")


def _check_point(space: SearchSpace, point: dict, ckpt, where: str) -> None:
    try:
        validate_against_checkpoint(space.recipe_for(point), ckpt)
    except InputError as err:
        raise InputError(f"{where}: {err.message}", err.hint) from None


def build_space(ckpt, space_path: Optional[Path] = None) -> SearchSpace:
    """The default space for ``ckpt``, or the one in ``space_path``; validated (InputError)."""
    shape = ckpt.block_shape
    spec = _read_space_file(space_path) if space_path is not None else None
    parameters = spec.parameters if spec else default_parameters(shape)
    base_path = _resolve_base(spec.base_recipe if spec else None, space_path.parent if space_path else None)
    origin = f"space {space_path}" if space_path else "default space"
    if not base_path.is_file():
        raise InputError(f"{origin}: base_recipe {base_path} does not exist.",
                         f"Name a shipped recipe ({', '.join(sorted(p.name for p in recipes_dir().glob('*.yaml')))}) "
                         "or a path relative to the space file.")
    base = load_recipe(base_path)
    if spec is None:  # the default space distils as the default build does (module docstring)
        base = base.with_overrides(**{"distill.length_grouped": True})
    space = SearchSpace(base=base, base_source=str(base_path), parameters=parameters, start_with=[], model_shape=shape)
    if spec and spec.start_with:
        start = [dict(p) for p in spec.start_with]
    else:
        start = _anchor_points(shape, parameters, _base_point(base, parameters),
                               ckpt.head_dim or 1)
    space = space.model_copy(update={"start_with": start})
    _check(space, ckpt, origin)
    return space


def _read_space_file(path: Path) -> SpaceFile:
    if not path.is_file():
        raise InputError(f"space file {path} does not exist.", "Pass --space with a YAML file (docs/distributed.md).")
    data = read_yaml_mapping(path, "space", "'parameters' (and optionally 'base_recipe', 'start_with')")
    try:
        return SpaceFile.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(top level)"
        raise InputError(f"space {path}: '{brief(where, 120)}': {first['msg']}.", "See docs/distributed.md.") from None
