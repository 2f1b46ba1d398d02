"""`mcompress tune`: search the recipe space on Ray Tune, race the builds here, keep the
fastest build within the accuracy budget.

Steps, in order:

1. The extra: without ray[tune] and optuna (``mcompress[distributed]``) the command stops with
   exit 4 before any work.
2. Validation, as `run` validates (pipeline.prepare on the base recipe: checkpoint, data, target,
   cache) plus the space (tune/space.py) and ``--out``: a fresh directory, or one holding an
   unfinished tune of the same request, which is resumed (``Tuner.restore``).
3. Ray: without ``--ray-address`` a local cluster on this machine (``ray.init(address="local",
   num_cpus=...)``); with one, this process joins that cluster. Each trial gets
   ``--cpus-per-trial`` CPUs (default: min(4, the largest node's CPUs)) and a GPU when the cluster
   has any; ``latency.threads`` follows the trial's CPUs unless the base recipe fixes it.
4. The search (``Tuner.fit``): Optuna's TPE on two objectives (test-split score up, batch-1
   latency down) through ``ray.tune.search.optuna.OptunaSearch``, the space's start points first;
   ASHA stops hopeless trials on the validation shortfall distillation reports (tune/trial.py,
   ray_parts.HopelessOnlyASHA); ``TuneConfig.time_budget_s`` ends the search at the budget less a
   reserve for the steps below (10%, at most 5 minutes), and each distilling trial gets its share
   of that search time as ``distill.time_limit_s``, the base recipe's own point up to a third of
   it (tune/space.py, ``with_trial_time``). A failed
   trial is recorded with its error and the search goes on.
   SIGINT/SIGTERM ask Ray Tune to stop and save the experiment (its SIGUSR1 path); the command then
   exits 130 and the same command line resumes it.
5. Every completed build raced from one process here (tune/race.py), the front drawn on those
   latencies (tune/results.py), and the choice by
   metrics.selection.fastest_within_budget (the rule quantize, fallback and cpu-auto use): among
   the front's builds that passed their gates, the lowest raced batch-1 p50, ties within
   ``quantize.latency_tie_tolerance`` to the more accurate. When none passed, the most accurate is
   kept and the command exits 3, as `run` does.
6. Outputs in ``--out``: ``build/`` (the chosen trial's `run` build, copied atomically),
   ``recipe.yaml`` (its recipe: `mcompress run --recipe` rebuilds it), ``tune.json``, ``tune.html``,
   ``trials/<id>/`` (every trial's recipe and build) and ``experiment/`` (Ray Tune's state).
"""

from __future__ import annotations

import importlib.util
import dataclasses
import json
import logging
import os
import shutil
import signal
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from mcompress.core.checkpoint import inspect_checkpoint
from mcompress.core.errors import ExitCode, GateFailure, InputError, McompressError, TargetUnavailable
from mcompress.metrics.selection import fastest_within_budget
from mcompress.pipeline.cpu_auto import targets_to_build
from mcompress.pipeline.cache import default_cache_dir
from mcompress.pipeline.outputs import check_output_dir, staged_dir
from mcompress.pipeline.prepare import Prepared, ProgressFactory, RunRequest, no_progress, prepare
from mcompress.report.schema import Report
from mcompress.report.write import write_report
from mcompress.tune.results import TUNE_JSON, TrialRecord, pareto_front, record_of, write_tune_json
from mcompress.tune.space import SearchSpace, build_space, with_trial_time
from mcompress.tune.trial import OBJECTIVE_MODES, OBJECTIVES, SHORTFALL, TrialSettings, run_trial, trial_recipe

logger = logging.getLogger(__name__)

EXTRA = "distributed"
EXTRA_MODULES = ("ray", "ray.tune", "optuna")
EXPERIMENT = "experiment"
REQUEST_FILE = "tune-request.json"
TUNE_HTML = "tune.html"
MAX_RESERVE_S = 300.0


class TuneInterrupted(McompressError):
    exit_code = ExitCode.INTERRUPTED


@dataclass(frozen=True)
class TuneRequest:
    model_dir: Path
    target: str = "onnx-cpu"
    max_drop: Optional[float] = None  # None: the base recipe's gates.max_drop
    time_budget_s: float = 3600.0
    trials: int = 50
    ray_address: Optional[str] = None
    out: Optional[Path] = None
    space_path: Optional[Path] = None
    cache_dir: Optional[Path] = None
    num_cpus: Optional[int] = None  # the local cluster's CPUs (None: all); ignored with ray_address
    cpus_per_trial: Optional[float] = None
    gpus_per_trial: Optional[float] = None
    eval_data: Optional[Path] = None
    calib_data: Optional[Path] = None
    force: bool = False
    seed: int = 0

    @property
    def out_dir(self) -> Path:
        return (self.out or Path("build") / f"{self.model_dir.resolve().name}-tune").resolve()


def search_seconds(budget_s: float) -> float:
    """The search's share of the time budget: the rest is the reserve for the race and the writes."""
    return budget_s - min(0.1 * budget_s, MAX_RESERVE_S)


def require_extra() -> None:
    """Exit 4 (TargetUnavailable) naming the extra when ray[tune] or optuna is not installed."""
    for name in EXTRA_MODULES:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            raise TargetUnavailable(f"mcompress tune needs the '{EXTRA}' extra ({name} is not installed).",
                                    f"Install it: pip install 'mcompress[{EXTRA}]' (ray[tune], optuna).")


@dataclass
class Validated:
    request: TuneRequest
    prepared: Prepared  # the base recipe's run, validated (its data, checkpoint, target)
    space: SearchSpace
    settings: TrialSettings
    out: Path
    resume: bool


def _identity(req: TuneRequest, prepared: Prepared, space: SearchSpace) -> dict:
    """What a resumed tune must share with the one that started in --out."""
    return {"model": prepared.checkpoint.content_hash, "target": req.target, "space": space.describe(),
            "max_drop": req.max_drop, "trials": req.trials, "seed": req.seed,
            "eval_data": str(req.eval_data) if req.eval_data else None,
            "calib_data": str(req.calib_data) if req.calib_data else None}


def _out_state(out: Path, identity: dict, force: bool) -> bool:
    """Whether --out holds an unfinished tune of this request to resume; InputError when it holds
    anything else. ``force`` starts over in a tune directory (never deletes anything else)."""
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        return False
    marker = out / REQUEST_FILE
    if not out.is_dir() or not marker.is_file():
        raise InputError(f"--out {out} exists and is not a tune directory.", "Choose another --out.")
    if force:
        shutil.rmtree(out)
        return False
    if (out / TUNE_JSON).is_file():
        raise InputError(f"--out {out} holds a finished tune.", "Pass --force to start over, or choose another --out.")
    try:
        saved = json.loads(marker.read_text(encoding="utf-8"))
    except ValueError:
        saved = None
    if saved != json.loads(json.dumps(identity)):
        raise InputError(f"--out {out} holds an unfinished tune of another request (model, target, space, budget or trials differ).",
                         "Rerun it with its own arguments to resume it, or pass --force to start over.")
    from ray.tune import Tuner

    return Tuner.can_restore(str(out / EXPERIMENT))


def validate(req: TuneRequest) -> Validated:
    """Everything a user can get wrong, before Ray starts (InputError, exit 2)."""
    if req.time_budget_s <= 0 or req.trials < 1:
        raise InputError("--time-budget must be positive and --trials at least 1.")
    out = req.out_dir
    check_output_dir(out, True, [req.model_dir] + [p for p in (req.space_path, req.eval_data, req.calib_data) if p])
    space = with_trial_time(build_space(inspect_checkpoint(req.model_dir), req.space_path),
                            search_seconds(req.time_budget_s), req.trials)
    cache_dir = Path(req.cache_dir or default_cache_dir()).expanduser().resolve()
    run_request = RunRequest(req.model_dir, req.target, out / "build", Path(space.base_source), req.eval_data,
                             req.calib_data, force=True, overrides={"gates.max_drop": req.max_drop}, cache_dir=cache_dir)
    prepared = prepare(run_request, targets_to_build(run_request))
    resume = _out_state(out, _identity(req, prepared, space), req.force)
    overrides = {"gates.max_drop": req.max_drop}
    settings = TrialSettings(str(req.model_dir.resolve()), req.target, space, str(out / "trials"), str(cache_dir),
                             overrides, str(req.eval_data.resolve()) if req.eval_data else None,
                             str(req.calib_data.resolve()) if req.calib_data else None)
    return Validated(req, prepared, space, settings, out, resume)


@contextmanager
def ray_session(address: Optional[str], num_cpus: Optional[int]):
    """A local Ray cluster (``address`` None) or a connection to ``address``; shut down on exit."""
    import optuna
    import ray

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if address:
        ray.init(address=address, log_to_driver=False, logging_level=logging.ERROR)
    else:
        ray.init(address="local", num_cpus=num_cpus or os.cpu_count(), include_dashboard=False, log_to_driver=False,
                 logging_level=logging.ERROR)
    try:
        yield ray
    finally:
        ray.shutdown()


def trial_resources(ray, cpus_per_trial: Optional[float], gpus_per_trial: Optional[float]) -> dict:
    """A trial's CPUs and GPUs, from the cluster's resources (InputError when no node has them)."""
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    node_cpus = max((n["Resources"].get("CPU", 0) for n in nodes), default=0)
    node_gpus = max((n["Resources"].get("GPU", 0) for n in nodes), default=0)
    cpus = cpus_per_trial or max(1, min(4, int(node_cpus)))
    gpus = gpus_per_trial if gpus_per_trial is not None else (1 if node_gpus >= 1 else 0)
    if cpus > node_cpus or gpus > node_gpus:
        raise InputError(f"a trial needs {cpus:g} CPUs and {gpus:g} GPUs, but the largest Ray node has "
                         f"{node_cpus:g} CPUs and {node_gpus:g} GPUs.", "Lower --cpus-per-trial / --gpus-per-trial.")
    return {"cpu": cpus, "gpu": gpus}


@contextmanager
def quiet_ray_tune():
    """Ray Tune's own console output (result tables, tracebacks of failed trials, which tune.json
    records as one line) only with --debug; the CLI prints one line per trial (ray_parts.TrialLines)."""
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    quiet = logging.getLogger().getEffectiveLevel() > logging.DEBUG
    ray_logger = logging.getLogger("ray")
    previous = ray_logger.level
    if quiet:
        ray_logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        ray_logger.setLevel(previous)


@contextmanager
def interrupts_stop_the_search():
    """SIGINT/SIGTERM during the search: Ray Tune's own graceful stop (SIGUSR1: trials stopped,
    experiment state saved), remembered so the command exits 130 afterwards."""
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    interrupted = []

    def handler(signum, frame):
        interrupted.append(signum)
        os.kill(os.getpid(), signal.SIGUSR1)

    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for s in previous:
        signal.signal(s, handler)
    try:
        yield interrupted
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def _tuner(v: Validated, settings: TrialSettings, resources: dict):
    from optuna.samplers import TPESampler
    from ray import tune
    from mcompress.tune.ray_parts import FinalResultSearch, HopelessOnlyASHA, TrialLines

    trainable = tune.with_resources(tune.with_parameters(run_trial, settings=settings), resources)
    experiment = v.out / EXPERIMENT
    if v.resume:
        logger.info("resuming the tune in %s", experiment)
        return tune.Tuner.restore(str(experiment), trainable=trainable, resume_unfinished=True, resume_errored=False,
                                  restart_errored=False)
    searcher = FinalResultSearch(metric=list(OBJECTIVES), mode=list(OBJECTIVE_MODES),
                                 points_to_evaluate=[dict(p) for p in v.space.start_with],
                                 sampler=TPESampler(seed=v.request.seed))
    # grace 2 evaluations, then halves; only a trial behind its peers and more than twice the
    # accuracy budget below the reference stops (ray_parts.HopelessOnlyASHA)
    scheduler = HopelessOnlyASHA(hopeless_below=-v.prepared.recipe.gates.max_drop,
                                 measured_in_full=v.space.start_with, time_attr="training_iteration",
                                 metric=SHORTFALL, mode="max", max_t=10_000, grace_period=2, reduction_factor=2)
    tune_config = tune.TuneConfig(search_alg=searcher, scheduler=scheduler, num_samples=v.request.trials,
                                  time_budget_s=search_seconds(v.request.time_budget_s), reuse_actors=True)
    run_config = tune.RunConfig(name=EXPERIMENT, storage_path=str(v.out), verbose=0, callbacks=[TrialLines()],
                                failure_config=tune.FailureConfig(max_failures=0, fail_fast=False))
    return tune.Tuner(trainable, param_space=v.space.to_ray(), tune_config=tune_config, run_config=run_config)


def _search(v: Validated) -> tuple[list[TrialRecord], dict]:
    """Run (or resume) the search; the trials' records and the facts of the search."""
    v.out.mkdir(parents=True, exist_ok=True)
    (v.out / REQUEST_FILE).write_text(json.dumps(_identity(v.request, v.prepared, v.space), indent=1), encoding="utf-8")
    started = time.perf_counter()
    with ray_session(v.request.ray_address, v.request.num_cpus) as ray:
        resources = trial_resources(ray, v.request.cpus_per_trial, v.request.gpus_per_trial)
        settings = v.settings
        if v.prepared.recipe.latency.threads is None:  # time each trial with the CPUs it holds
            settings = dataclasses.replace(settings, overrides={**settings.overrides,
                                                                "latency.threads": max(1, int(resources["cpu"]))})
        cluster = {k: ray.cluster_resources().get(k, 0) for k in ("CPU", "GPU")}
        with quiet_ray_tune(), interrupts_stop_the_search() as interrupted:
            results = _tuner(v, settings, resources).fit()
        if interrupted:
            raise TuneInterrupted(f"interrupted: the search's state is saved in {v.out / EXPERIMENT}.",
                                  "Rerun the same command to resume it.")
        records = [record_of(r, lambda point: trial_recipe(settings, point)) for r in results]
    return records, {"search_s": round(time.perf_counter() - started, 1), "resumed": v.resume,
                     "cluster": {"address": v.request.ray_address or "local", **cluster},
                     "trial_resources": resources}


def _choose(front: list[TrialRecord], tolerance: float):
    ordered = sorted(front, key=lambda r: -r.score)  # ties go to the more accurate
    return fastest_within_budget(ordered, lambda r: bool(r.passed), lambda r: r.b1_ms,
                                 lambda r: r.score, tolerance)


def _write_build(chosen: TrialRecord, out: Path) -> Report:
    """The chosen trial's build, copied into ``out/build`` atomically, its report saying where it is."""
    source = Path(chosen.build_dir)
    report = Report.load(source / "report.json")
    with staged_dir(out / "build") as staging:
        for path in source.iterdir():
            (shutil.copytree if path.is_dir() else shutil.copy2)(path, staging / path.name)
        report.out = str((out / "build").resolve())
        write_report(report, staging)
    shutil.copyfile(source.parent / "recipe.yaml", out / "recipe.yaml")
    return report


def _summary(v: Validated, records: list[TrialRecord], facts: dict) -> dict:
    recipe = v.prepared.recipe
    return {"model_dir": str(v.request.model_dir), "target": v.request.target, "metric": v.prepared.metric,
            "max_drop": recipe.gates.max_drop, "drop_type": recipe.gates.drop_type,
            "time_budget_s": v.request.time_budget_s, "trials_requested": v.request.trials,
            "trials_completed": sum(r.status == "completed" for r in records),
            "trials_stopped": sum(r.status == "stopped" for r in records),
            "trials_failed": sum(r.status == "error" for r in records), "space": v.space.describe(), **facts}


def finish(v: Validated, records: list[TrialRecord], facts: dict, progress: ProgressFactory) -> dict:
    """Race the builds, draw the front, keep a build, write tune.json and tune.html; the summary."""
    from mcompress.tune.race import race_builds

    summary = _summary(v, records, facts)
    built = [r for r in records if r.has_build]
    if not built:
        summary.update(verdict="NO BUILD", chosen=None, reason="no trial finished with a build")
        _write_results(v.out, summary, records)
        raise GateFailure(f"no trial finished with a build in the time budget ({len(records)} started, "
                          f"{summary['trials_failed']} failed). See {v.out / TUNE_JSON}.",
                          "Give a longer --time-budget, or a space whose start points are cheaper.")
    race = race_builds(built, v.prepared.recipe, v.prepared.eval_data.texts, progress)
    front = pareto_front(built)
    for r in front:
        r.on_front = True
    choice = _choose(front, v.prepared.recipe.quantize.latency_tie_tolerance)
    chosen = choice.chosen
    report = _write_build(chosen, v.out)
    b1 = chosen.b1_ms
    reason = (f"fastest raced batch-1 p50 among the front's builds that passed their gates: {b1:.2f} ms"
              if choice.within_budget else "no build on the front passed its gates; kept the most accurate")
    summary.update(verdict="PASS" if choice.within_budget else "FAIL", chosen=chosen.trial_id, reason=reason,
                   chosen_score=chosen.score, chosen_b1_ms=b1, reference_score=report.reference.gated_score,
                   build=str(v.out / "build"), race=race,
                   race_note=f"{len(built)} builds ({len(front)} on the front), {race['rounds']} interleaved rounds, "
                             f"{race['threads']} threads, isolation {race['isolation']}, other processes {race['other_processes_cpu_percent']:.0f}% CPU")
    _write_results(v.out, summary, records)
    if not choice.within_budget:
        raise GateFailure(f"no build on the front passed its gates; kept {chosen.trial_id} (the most accurate) in "
                          f"{v.out / 'build'}. See {v.out / TUNE_HTML}.")
    return summary


def _write_results(out: Path, summary: dict, records: list[TrialRecord]) -> None:
    from mcompress.tune.page import render_tune_html

    (out / TUNE_HTML).write_text(render_tune_html(summary, records), encoding="utf-8")
    write_tune_json(out, summary, records)  # last: its presence marks a finished tune


def tune(req: TuneRequest, progress: ProgressFactory = no_progress) -> dict:
    """``mcompress tune``: the summary tune.json holds (without the trials)."""
    require_extra()
    v = validate(req)
    records, facts = _search(v)
    return finish(v, records, facts, progress)


__all__ = ["TuneRequest", "tune", "require_extra", "validate", "TuneInterrupted", "EXTRA"]
