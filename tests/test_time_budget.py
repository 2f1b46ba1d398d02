"""The default CPU build's time budget (pipeline/budget.py): structured pruning + distillation join
the post-training builds when the budget allows, with distillation capped at what is left; a budget
too short skips them with the figures that decided; --time-budget where it cannot apply is one line,
exit 2, before any work."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from mcompress.cli.main import app
from mcompress.core.errors import ExitCode

PLAN = "prune-distill"


def _report(out):
    return json.loads((out / "report.json").read_text())


def _default_run(checkpoint, tmp_path, name: str, *flags: str) -> tuple:
    """`mcompress run CHECKPOINT` with the default recipe and its own cache: (out, cpu_auto, time_budget)."""
    out = tmp_path / name
    result = CliRunner().invoke(app, ["run", str(checkpoint), "--out", str(out), *flags,
                                      "--cache-dir", str(tmp_path / "cache")])
    assert result.exit_code == ExitCode.OK, result.output
    choice = _report(out)["cpu_auto"]
    return out, choice, choice["time_budget"]


def _candidate_report(out, name: str, kept: str) -> dict:
    return _report(out) if name == kept else json.loads((out / "candidates" / f"{name}.report.json").read_text())


def test_the_default_build_adds_prune_distill_when_the_budget_allows(tiny_checkpoint, tmp_path, monkeypatch):
    from mcompress.pipeline import timing

    started = []

    class CountedRunner(timing.IsolatedRunner):  # the timing processes this run starts, by what they load
        def __init__(self, factory, *args, **kwargs):
            started.append(getattr(factory, "__name__", type(factory).__name__))
            super().__init__(factory, *args, **kwargs)

    monkeypatch.setattr(timing, "IsolatedRunner", CountedRunner)
    out, choice, budget = _default_run(tiny_checkpoint, tmp_path, "default", "--target", "cpu")
    # every candidate's gate timed its build against one timing process of the original
    gated = [name for name, c in choice["candidates"].items() if c.get("stopped") is None]
    assert started.count("reference_runner") == 1 and len(gated) >= 3, (started, choice["candidates"])
    assert budget["budget_s"] == 900 and budget["wall_s"] <= 900
    plan = budget["plans"][PLAN]
    assert plan["built"], plan
    # what was left decided the cap: budget - elapsed - builds x each - reserve (one distillation: the cache shares it)
    assert plan["distillations"] == 1
    assert plan["distill_s"] == pytest.approx(plan["budget_s"] - plan["elapsed_s"] - plan["builds"] * plan["build_s_each"]
                                              - plan["reserve_s"], abs=0.2)
    planned = [name for name, c in choice["candidates"].items() if c["recipe"] == "prune-distill-int8"]
    floor = [name for name, c in choice["candidates"].items() if c["recipe"] == "ptq"]
    assert planned and all(name.split("+")[1] == PLAN for name in planned) and "onnx-cpu+fp32" in floor
    distills = []
    for name in planned:
        report = _candidate_report(out, name, choice["chosen"])
        distills.append(next(p for p in report["passes"] if p["name"] == "distill"))
        distill = distills[-1]["metrics"]
        assert distill["time_limit_s"] == plan["distill_s"] and distill["planned_steps"] >= 1
        assert distill["steps"] <= distill["planned_steps"] and distill["length_grouped"] is True
        # the checkpoint's shape, scaled: 2 layers -> ceil(4/3) = 2, half the heads and the FFN
        assert report["recipe"]["prune"]["heads_per_layer"] == 1 and report["recipe"]["prune"]["keep_layers"] == 2
    # prune and distill read nothing of the target: one distillation, shared through the pass cache
    assert len({d["cache_key"] for d in distills}) == 1 and sorted(d["cached"] for d in distills) == [False, True]
    assert "Time budget 900 s" in (out / "report.md").read_text()


def test_a_budget_too_short_keeps_the_post_training_builds_and_says_why(tiny_checkpoint, fast_recipe, tmp_path):
    from mcompress.pipeline.budget import MIN_DISTILL_S, plan_prune_distill
    from mcompress.pipeline.prepare import RunRequest, prepare

    prepared = prepare(RunRequest(tiny_checkpoint, "cpu", out=tmp_path / "o"), ("onnx-cpu",))
    short = plan_prune_distill(prepared, 120.0, 70.0, [10.0, 10.0])
    assert short.run is None and "skipped" in short.figures["reason"] and "--time-budget" in short.figures["reason"]
    assert short.figures["distill_s"] < MIN_DISTILL_S
    roomy = plan_prune_distill(prepared, 900.0, 70.0, [10.0, 10.0])
    assert roomy.run is not None and roomy.run.recipe.distill.time_limit_s == roomy.figures["distill_s"]
    assert roomy.run.recipe.gates == prepared.recipe.gates and not (tmp_path / "o").exists()


def test_a_short_budget_builds_the_first_candidate_and_lists_what_did_not_fit(tiny_checkpoint, tmp_path):
    out, choice, budget = _default_run(tiny_checkpoint, tmp_path, "short", "--time-budget", "5s")
    assert list(choice["candidates"]) == ["onnx-cpu"] and choice["chosen"] == "onnx-cpu"
    assert not budget["plans"][PLAN]["built"] and budget["plans"][PLAN]["reason"].startswith("skipped: ")
    assert "onnx-cpu+fp32" in budget["skipped"] and all(why.startswith("not built: ") for why in budget["skipped"].values())
    assert "onnx-cpu+fp32 not built: " in (out / "report.md").read_text()


@pytest.mark.parametrize("flags, message", [
    (["--target", "onnx-cpu", "--time-budget", "10m"], "this run gives --target onnx-cpu"),
    (["--recipe", "RECIPE", "--time-budget", "10m"], "this run gives --recipe"),
    (["--time-budget", "ten minutes"], "is not a duration"),
])
def test_a_time_budget_it_cannot_apply_is_one_line_exit_2(tiny_checkpoint, fast_recipe, tmp_path, flags, message):
    out = tmp_path / "never"
    flags = [str(fast_recipe) if f == "RECIPE" else f for f in flags]
    result = CliRunner().invoke(app, ["run", str(tiny_checkpoint), "--out", str(out), *flags])
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == ExitCode.BAD_INPUT and len(lines) == 1 and message in lines[0], result.output
    assert not out.exists()
