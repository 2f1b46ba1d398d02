"""`mcompress tune` on a real local Ray cluster (2 CPUs) with the tiny checkpoint and 4 trials.

One search, run the way a user runs it (the CLI in its own process), is interrupted with SIGINT
once its first trial has finished and resumed by rerunning the same command (Tuner.restore). Its
space makes one start point fail for real (an export parity tolerance no float graph meets), so
the same search shows a failed trial recorded while the others go on. Bad spaces and a missing
extra end before any work with one line and their exit codes.
"""

from __future__ import annotations

import html.parser
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import tree_digest
from mcompress.cli import app
from mcompress.core.errors import ExitCode

HAVE_EXTRA = all(__import__("importlib.util").util.find_spec(m) is not None for m in ("ray", "optuna"))
needs_extra = pytest.mark.skipif(not HAVE_EXTRA, reason="mcompress[distributed] (ray[tune], optuna) is not installed")

BASE_RECIPE = """\
name: tune-test
latency: {batch_sizes: [1], sequence_lengths: [16], warmup: 1, iterations: 3, threads: 1, isolation: shared, settle_s: 0}
quantize: {static: {calibration_examples: 8}}
prune: {keep_layers: 1, ffn_neurons_per_layer: 32, importance_examples: 16, batch_size: 8, max_length: 32}
distill: {epochs: 1, batch_size: 8, max_length: 32, eval_every: 2}
"""

# Four start points, tried in order: the unpruned model (prune and distill dropped), a pruned and
# distilled one, one whose export must fail (parity 1e-30), and a pruned static-INT8 one.
SPACE = """\
base_recipe: base.yaml
parameters:
  prune.keep_layers: {choice: [1, 2]}
  prune.ffn_neurons_per_layer: {choice: [32, 64]}
  quantize.mode: {choice: [dynamic, static]}
  export.parity_atol: {choice: [1.0e-4, 1.0e-30]}
start_with:
  - {prune.keep_layers: 2, prune.ffn_neurons_per_layer: 64, quantize.mode: dynamic, export.parity_atol: 1.0e-4}
  - {prune.keep_layers: 1, prune.ffn_neurons_per_layer: 32, quantize.mode: dynamic, export.parity_atol: 1.0e-4}
  - {prune.keep_layers: 1, prune.ffn_neurons_per_layer: 64, quantize.mode: static, export.parity_atol: 1.0e-30}
  - {prune.keep_layers: 2, prune.ffn_neurons_per_layer: 32, quantize.mode: static, export.parity_atol: 1.0e-4}
"""

FAILING_POINT = {"prune.keep_layers": 1, "prune.ffn_neurons_per_layer": 64, "quantize.mode": "static",
                 "export.parity_atol": 1e-30}


def _space_dir(tmp: Path, space: str = SPACE) -> Path:
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "base.yaml").write_text(BASE_RECIPE)
    (tmp / "space.yaml").write_text(space)
    return tmp / "space.yaml"


def _command(model: Path, space: Path, out: Path, cache: Path) -> list[str]:
    return [sys.executable, "-m", "mcompress.cli", "tune", str(model), "--space", str(space), "--trials", "4",
            "--num-cpus", "2", "--cpus-per-trial", "1", "--time-budget", "15m", "--out", str(out),
            "--cache-dir", str(cache)]


COMPLETED_LINE = re.compile(r"^tune: trial (\w+): accuracy ")


@pytest.fixture(scope="module")
def interrupted_then_resumed(tiny_checkpoint, tmp_path_factory):
    """The search interrupted (SIGINT) as soon as its driver has recorded a finished trial, then the
    same command again."""
    root = tmp_path_factory.mktemp("tune")
    space, out, cache = _space_dir(root / "space"), root / "out", root / "cache"
    model_before = tree_digest(tiny_checkpoint)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    first = subprocess.Popen(_command(tiny_checkpoint, space, out, cache), env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    # The driver prints "tune: trial ID: accuracy ..." from Ray Tune's on_trial_complete, so a
    # trial named there is one the experiment state records as finished. A build on disk is not
    # enough (a trial writes it before it reports), and a fixed wait can outlast the whole search.
    lines: list[str] = []
    recorded = threading.Event()

    def read_stderr() -> None:
        for line in first.stderr:
            lines.append(line)
            if COMPLETED_LINE.match(line):
                recorded.set()

    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    recorded.wait(timeout=600)
    finished_before = {}
    if recorded.is_set() and first.poll() is None:
        first.send_signal(signal.SIGINT)
        # a recorded trial's build was written before it reported, so its report is on disk now
        reports = [out / "trials" / m.group(1) / "build" / "report.json" for m in map(COMPLETED_LINE.match, list(lines)) if m]
        finished_before = {report: report.stat().st_mtime_ns for report in reports}
    first.wait(timeout=300)
    reader.join(timeout=30)
    second = subprocess.run(_command(tiny_checkpoint, space, out, cache), env=env, capture_output=True, text=True,
                            timeout=900)
    return {"out": out, "first_rc": first.returncode, "first_err": "".join(lines), "finished_before": finished_before,
            "second": second, "model_unchanged": tree_digest(tiny_checkpoint) == model_before,
            "tune": json.loads((out / "tune.json").read_text()) if (out / "tune.json").is_file() else None}


@needs_extra
@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_interrupted_tune_resumes_and_finishes(interrupted_then_resumed):
    run = interrupted_then_resumed
    assert run["finished_before"], f"no trial finished before the interrupt: {run['first_err'][-2000:]}"
    assert run["first_rc"] == ExitCode.INTERRUPTED, run["first_err"][-2000:]
    assert "rerun the same command to resume" in run["first_err"].lower()
    assert run["second"].returncode == 0, run["second"].stderr[-3000:]
    tune = run["tune"]
    assert tune["resumed"] is True and len(tune["trials"]) == 4
    # the trials that had finished were restored, not run again: their builds are untouched
    for report, mtime in run["finished_before"].items():
        assert report.stat().st_mtime_ns == mtime
        trial = next(t for t in tune["trials"] if t["trial_id"] == report.parent.parent.name)
        assert trial["status"] == "completed"
    assert run["model_unchanged"]


@needs_extra
@pytest.mark.slow
def test_failed_trial_is_recorded_and_the_search_goes_on(interrupted_then_resumed):
    trials = interrupted_then_resumed["tune"]["trials"]
    failed = [t for t in trials if t["status"] == "error"]
    assert [t["point"] for t in failed] == [FAILING_POINT]
    assert "parity_atol" in failed[0]["error"] and "\n" not in failed[0]["error"]
    assert failed[0]["score"] is None and not (interrupted_then_resumed["out"] / "trials" / failed[0]["trial_id"] / "build").exists()
    assert sum(t["status"] == "completed" for t in trials) == 3


@needs_extra
@pytest.mark.slow
def test_tune_json_front_and_the_chosen_build(interrupted_then_resumed):
    out, tune = interrupted_then_resumed["out"], interrupted_then_resumed["tune"]
    completed = [t for t in tune["trials"] if t["status"] == "completed"]
    for t in completed:
        assert 0 <= t["score"] <= 1 and t["latency_ms"] > 0 and t["model_bytes"] > 0 and t["recipe"]["name"] == "tune-test"
    # the unpruned start point is a plain PTQ: no prune, no distill; the pruned ones distilled
    unpruned = next(t for t in completed if t["point"]["prune.keep_layers"] == 2 and t["point"]["prune.ffn_neurons_per_layer"] == 64)
    assert unpruned["recipe"]["prune"] is None and unpruned["recipe"]["distill"] is None and unpruned["val_score"] is None
    pruned = next(t for t in completed if t["point"]["prune.keep_layers"] == 1)
    assert pruned["recipe"]["prune"]["keep_layers"] == 1 and pruned["val_score"] is not None
    # every completed build was raced here, and the front is drawn on the raced latencies
    assert all(t["raced"]["b1"]["p50_ms"] > 0 for t in completed)
    front = [t for t in completed if t["on_front"]]
    raced = lambda t: t["raced"]["b1"]["p50_ms"]  # noqa: E731
    assert front
    for t in completed:  # a member is beaten by no build on both objectives; every other build is beaten by a member
        beaten = any(o["score"] >= t["score"] and raced(o) <= raced(t) and (o["score"] > t["score"] or raced(o) < raced(t))
                     for o in (front if not t["on_front"] else completed))
        assert beaten != t["on_front"], t["trial_id"]
    chosen = next(t for t in front if t["trial_id"] == tune["chosen"])
    passing = [t for t in front if t["passed"]]
    assert chosen["passed"] and chosen["raced"]["b1"]["p50_ms"] <= 1.05 * min(t["raced"]["b1"]["p50_ms"] for t in passing)
    # the chosen build is the trial's `run` build, copied, with its report pointing at it
    report = json.loads((out / "build" / "report.json").read_text())
    assert report["passed"] and report["out"] == str((out / "build").resolve())
    assert tree_digest(out / "build" / "model.onnx") == tree_digest(Path(chosen["build_dir"]) / "model.onnx")
    from mcompress.core.recipe import load_recipe

    assert load_recipe(out / "recipe.yaml").model_dump(mode="json") == chosen["recipe"]


class _Page(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags, self.open = [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


@needs_extra
@pytest.mark.slow
def test_tune_html_is_self_contained_and_renders(interrupted_then_resumed, tmp_path):
    page = (interrupted_then_resumed["out"] / "tune.html").read_text()
    parser = _Page()
    parser.feed(page)
    tags = [t for t, _ in parser.tags]
    assert "script" not in tags and "link" not in tags and "img" not in tags
    assert not any(k in ("src", "href") for _, attrs in parser.tags for k in attrs)
    completed = sum(t["status"] == "completed" for t in interrupted_then_resumed["tune"]["trials"])
    markers = [a for t, a in parser.tags if t == "circle" and a.get("fill-opacity")]
    assert len(markers) >= completed  # every completed trial, at its raced latency
    radii = {float(a["r"]) for a in markers}
    assert len(radii) > 1  # marker size follows model size (the static build is ~4x the dynamic one)
    chromium = next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)
    if chromium is None:
        pytest.skip("no headless Chromium here: the page was checked by parsing only")
    shot = tmp_path / "tune.png"
    proc = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-proxy-server",
                           "--host-resolver-rules=MAP * ~NOTFOUND", f"--screenshot={shot}", "--window-size=1200,1000",
                           f"file://{interrupted_then_resumed['out'] / 'tune.html'}"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and shot.stat().st_size > 10_000, proc.stderr[-2000:]
    dom = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom",
                          f"file://{interrupted_then_resumed['out'] / 'tune.html'}"], capture_output=True, text=True, timeout=120)
    assert dom.stdout.count("<circle") >= completed and "Pareto front" in dom.stdout


def test_missing_extra_stops_before_any_work(tiny_checkpoint, tmp_path):
    """Without ray and optuna importable, exit 4 and one line naming the extra; nothing written."""
    blocker = ("import sys\n"
               "class Blocker:\n"
               "    def find_spec(self, name, path=None, target=None):\n"
               "        if name.split('.')[0] in ('ray', 'optuna'):\n"
               "            raise ModuleNotFoundError(name)\n"
               "sys.meta_path.insert(0, Blocker())\n"
               "from mcompress.cli import main\n"
               "sys.argv = ['mcompress'] + sys.argv[1:]\n"
               "main()\n")
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-c", blocker, "tune", str(tiny_checkpoint), "--out", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == ExitCode.TARGET_UNAVAILABLE, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "mcompress[distributed]" in lines[0] and lines[0].startswith("error:")
    assert not out.exists()


BAD_SPACES = {
    "not yaml": ("base_recipe: base.yaml\nparameters: [unclosed", "not valid YAML"),
    "unknown recipe key": ("base_recipe: base.yaml\nparameters:\n  prune.keep_layerz: {choice: [1]}\n", "unknown key 'prune.keep_layerz'"),
    "two kinds": ("base_recipe: base.yaml\nparameters:\n  distill.alpha: {uniform: [0.1, 0.5], choice: [0.3]}\n", "exactly one of"),
    "more layers than the model has": ("base_recipe: base.yaml\nparameters:\n  prune.keep_layers: {choice: [1, 5]}\n", "more than the model's 2 layers"),
    "value outside the recipe's range": ("base_recipe: base.yaml\nparameters:\n  distill.alpha: {uniform: [0.5, 1.5]}\n", "distill.alpha"),
    "start point outside its domain": ("base_recipe: base.yaml\nparameters:\n  prune.keep_layers: {choice: [1]}\nstart_with:\n  - {prune.keep_layers: 2}\n",
                                       "outside its domain"),
    "missing base recipe": ("base_recipe: nowhere.yaml\nparameters:\n  prune.keep_layers: {choice: [1]}\n", "does not exist"),
}


@needs_extra
@pytest.mark.parametrize("name", list(BAD_SPACES))
def test_bad_space_is_one_line_and_exit_2(name, tiny_checkpoint, tmp_path):
    text, expect = BAD_SPACES[name]
    space = _space_dir(tmp_path / "space", text)
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["tune", str(tiny_checkpoint), "--space", str(space), "--out", str(out)])
    assert result.exit_code == ExitCode.BAD_INPUT, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and expect in lines[0], result.output
    assert not out.exists()


def test_the_front_is_drawn_on_the_raced_latencies():
    from mcompress.tune.results import TrialRecord, pareto_front

    def record(name, score, worker_ms, raced_ms):
        return TrialRecord(name, "completed", {}, {}, score=score, latency_ms=worker_ms, build_dir=name,
                           raced={"b1": {"p50_ms": raced_ms}} if raced_ms is not None else None)

    # on its worker, "slow" read faster than "small" (a busy neighbour); raced here, it is not
    small, slow, big = record("small", 0.78, 9.0, 5.0), record("slow", 0.80, 8.0, 9.5), record("big", 0.82, 12.0, 7.0)
    assert [r.trial_id for r in pareto_front([small, slow, big])] == ["small", "big"]
    # before the race, the workers' latencies are all there is
    unraced = [record(r.trial_id, r.score, r.latency_ms, None) for r in (small, slow, big)]
    assert [r.trial_id for r in pareto_front(unraced)] == ["slow", "big"]


def test_isolated_timing_does_not_load_the_builds_in_this_process():
    from types import SimpleNamespace

    from mcompress.pipeline.timing import timing_runners

    loaded = []
    make = lambda: loaded.append(True) or {"a": "runner"}  # noqa: E731
    with timing_runners(SimpleNamespace(latency=SimpleNamespace(isolation="shared")), make, {}) as runners:
        assert runners == {"a": "runner"} and loaded == [True]
    with timing_runners(SimpleNamespace(latency=SimpleNamespace(isolation="process")), make, {}) as runners:
        assert runners == {} and loaded == [True]  # not called again: the timing processes load their own


def test_default_space_follows_the_model(tiny_checkpoint):
    from mcompress.core.checkpoint import inspect_checkpoint
    from mcompress.tune.space import build_space

    space = build_space(inspect_checkpoint(tiny_checkpoint))
    assert space.parameters["prune.keep_layers"].choice == [1, 2]
    assert space.parameters["prune.heads_per_layer"].choice == [1, 2]
    assert space.parameters["prune.ffn_neurons_per_layer"].choice == [16, 32, 48, 64]
    unpruned, base, larger = space.start_with  # the fewest layers is the base's own point here: one anchor fewer
    assert space.recipe_for(unpruned).prune is None and space.recipe_for(unpruned).quantize.mode == "dynamic"
    # the base recipe (prune-distill-int8) keeps 4 layers, more than the tiny model's 2: its point
    # takes the domain's first value instead
    assert base["prune.keep_layers"] == 1 and space.recipe_for(base).distill.epochs == 3
    assert space.recipe_for(base).distill.length_grouped  # as the default build's prune-distill plan


def test_default_start_points_span_the_latency_range():
    from mcompress.core.recipe import load_recipe, recipes_dir
    from mcompress.tune.space import _anchor_points, _base_point, block_cost, default_parameters

    shape = {"layers": 6, "heads": 12, "ffn": 1536}  # MiniLM-L6, the sentiment example
    parameters = default_parameters(shape)
    base_point = _base_point(load_recipe(recipes_dir() / "prune-distill-int8.yaml"), parameters)
    kept = [(p["prune.keep_layers"], p["prune.heads_per_layer"], p["prune.ffn_neurons_per_layer"])
            for p in _anchor_points(shape, parameters, base_point, head_dim=32)]
    # unpruned, base, then the ladder below the base, fastest first, then larger
    assert kept == [(6, 12, 1536), (4, 6, 768), (3, 3, 384), (4, 3, 384), (3, 3, 768), (3, 6, 768), (4, 3, 768),
                    (5, 9, 1152)]
    ladder = [block_cost(k, 32) for k in kept[2:7]]
    # every rung is built one way, the unpruned anchor's, so its latency is its shape's
    points = _anchor_points(shape, parameters, base_point, head_dim=32)
    assert all((p["quantize.mode"], p["optimize.fusion"]) == ("dynamic", "fused") for p in points[2:7])
    assert (points[1]["quantize.mode"], points[1]["optimize.fusion"]) == ("auto", "auto")  # the base recipe's own
    # the rungs nearest to 1/5, 2/5, 3/5 and 4/5 of the way from the smallest's cost to the base's
    assert ladder == sorted(ladder) and ladder == [3456, 4608, 5760, 6912, 7680] and block_cost(kept[1], 32) == 9216


def test_each_distilling_trial_gets_its_share_of_the_search_time(tiny_checkpoint, tmp_path):
    from mcompress.core.checkpoint import inspect_checkpoint
    from mcompress.tune.space import (BASE_SHARE, DISTILL_SHARE, MEASURED_POINTS, MIN_DISTILL_S, build_space,
                                      with_trial_time)

    ckpt = inspect_checkpoint(tiny_checkpoint)
    space = with_trial_time(build_space(ckpt), search_s=3300, trials=50)
    unpruned, base, *others = space.start_with
    assert space.distill_time_limit_s == pytest.approx(DISTILL_SHARE * 3300 / MEASURED_POINTS)  # 275 s
    # the base recipe's own point distils as its recipe says, up to a third of the search
    assert space.recipe_for(base).distill.time_limit_s == pytest.approx(BASE_SHARE * 3300) == space.base_distill_time_limit_s
    assert space.recipe_for({k: float(v) if k == "distill.epochs" else v for k, v in base.items()}).distill.time_limit_s \
        == space.base_distill_time_limit_s  # as Ray hands the point out
    assert others and all(space.recipe_for(p).distill.time_limit_s == space.distill_time_limit_s for p in others)
    assert space.recipe_for({**base, "distill.alpha": 0.7}).distill.time_limit_s == space.distill_time_limit_s
    assert space.recipe_for(unpruned).distill is None  # nothing pruned: no distillation to limit
    assert space.describe()["distill_time_limit_s"] == space.distill_time_limit_s
    # fewer trials than MEASURED_POINTS share the time among themselves; never under the floor
    assert with_trial_time(build_space(ckpt), 3300, trials=2).distill_time_limit_s == pytest.approx(DISTILL_SHARE * 3300 / 2)
    assert with_trial_time(build_space(ckpt), 60, trials=50).distill_time_limit_s == MIN_DISTILL_S
    # a limit the user set, in the base recipe or as a parameter, is theirs
    fixed = _space_dir(tmp_path / "fixed", SPACE.replace("parameters:", "parameters:\n  distill.time_limit_s: {choice: [30, 90]}"))
    searched = with_trial_time(build_space(ckpt, fixed), 3300, 50)
    assert searched.distill_time_limit_s is None
    assert searched.recipe_for({**searched.start_with[1], "distill.time_limit_s": 30}).distill.time_limit_s == 30
    own_limit = _space_dir(tmp_path / "own")
    (tmp_path / "own" / "base.yaml").write_text(BASE_RECIPE.replace("eval_every: 2}", "eval_every: 2, time_limit_s: 45}"))
    own = with_trial_time(build_space(ckpt, own_limit), 3300, 50)
    assert own.distill_time_limit_s is None and own.recipe_for(own.start_with[1]).distill.time_limit_s == 45


@needs_extra
def test_asha_stops_only_trials_more_than_twice_the_budget_below():
    from types import SimpleNamespace

    from ray.tune.schedulers import TrialScheduler

    from mcompress.tune.ray_parts import HopelessOnlyASHA
    from mcompress.tune.trial import SHORTFALL

    def scheduler():
        asha = HopelessOnlyASHA(hopeless_below=-1.0, time_attr="training_iteration", metric=SHORTFALL, mode="max",
                                max_t=16, grace_period=2, reduction_factor=2)
        trials = [SimpleNamespace(trial_id=f"t{i}") for i in range(3)]
        for t in trials:
            asha.on_trial_add(None, t)
        # the leader reaches the first rung (2 evaluations) within the budget
        assert asha.on_trial_result(None, trials[0], {"training_iteration": 2, SHORTFALL: 0.0}) == TrialScheduler.CONTINUE
        return asha, trials

    asha, trials = scheduler()
    # 0.6 points outside the budget, behind the leader: plain ASHA stops it, this one lets it recover
    assert asha.on_trial_result(None, trials[1], {"training_iteration": 2, SHORTFALL: -0.6}) == TrialScheduler.CONTINUE
    # more than twice the budget below the reference, and behind: hopeless, stopped
    assert asha.on_trial_result(None, trials[2], {"training_iteration": 2, SHORTFALL: -1.4}) == TrialScheduler.STOP
    assert asha._num_stopped == 1
    # a start point (an anchor of the front) is measured in full, however far below
    anchored = HopelessOnlyASHA(hopeless_below=-1.0, measured_in_full=[{"prune.keep_layers": 3}],
                                time_attr="training_iteration", metric=SHORTFALL, mode="max", max_t=16,
                                grace_period=2, reduction_factor=2)
    leader, anchor, other = (SimpleNamespace(trial_id=f"a{i}", config={"prune.keep_layers": n}) for i, n in enumerate((4, 3, 2)))
    for t in (leader, anchor, other):
        anchored.on_trial_add(None, t)
    anchored.on_trial_result(None, leader, {"training_iteration": 2, SHORTFALL: 0.0})
    assert anchored.on_trial_result(None, anchor, {"training_iteration": 2, SHORTFALL: -3.0}) == TrialScheduler.CONTINUE
    assert anchored.on_trial_result(None, other, {"training_iteration": 2, SHORTFALL: -3.0}) == TrialScheduler.STOP


def test_time_budget_parsing():
    from mcompress.core.errors import InputError
    from mcompress.core.limits import parse_duration

    assert [parse_duration(t) for t in ("90s", "20m", "1.5h", "600")] == [90, 1200, 5400, 600]
    for bad in ("", "ten minutes", "0m", "-5m", "5d"):
        with pytest.raises(InputError):
            parse_duration(bad)
