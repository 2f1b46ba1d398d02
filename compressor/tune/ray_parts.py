"""The pieces of the search that subclass Ray Tune's own classes (imported only once ray is known to
be installed: mcompress.tune.search checks the extra first). Module-level, so an experiment saved
with them restores by name (``Tuner.restore``)."""

from __future__ import annotations

import sys

from ray.tune import Callback
from ray.tune.schedulers import ASHAScheduler, TrialScheduler
from ray.tune.search.optuna import OptunaSearch

from mcompress.tune.space import as_python
from mcompress.tune.trial import FINAL, SHORTFALL


class FinalResultSearch(OptunaSearch):
    """Optuna's TPE on the two objectives of a trial's final result. A trial that ended without
    one (ASHA stopped it, or the time budget did) is told to Optuna as pruned, not as a point with
    empty objectives."""

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
        super().on_trial_complete(trial_id, result if result and result.get(FINAL) else None, error)


class HopelessOnlyASHA(ASHAScheduler):
    """ASHA that stops only hopeless trials. ASHA's own rule stops a trial that trails the better
    half of its peers at a rung; with the validation shortfall as its metric, that stopped students
    still recovering towards the budget (a drop of 1.3 points at the second of four evaluations,
    against peers within it). Here a trial ASHA would stop goes on while its shortfall is at least
    ``hopeless_below`` (a negative number of points: the search passes minus the accuracy budget,
    so only a student more than twice the budget below the reference is stopped). ASHA still
    records every result at its rungs, so its cutoffs are the ones it would compute unmodified.

    The space's start points (``measured_in_full``) are never stopped: they are the front's anchors
    (tune/space.py), and a small student more than twice the budget below is still the front's fast
    end, which tells the user what the next step in speed costs."""

    def __init__(self, *, hopeless_below: float, measured_in_full: list[dict] = (), **kwargs):
        super().__init__(**kwargs)
        self.hopeless_below = hopeless_below
        self.measured_in_full = [dict(p) for p in measured_in_full]

    def _is_anchor(self, trial) -> bool:
        config = getattr(trial, "config", None) or {}
        return any(all(k in config and as_python(config[k]) == v for k, v in point.items()) for point in self.measured_in_full)

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        action = super().on_trial_result(tune_controller, trial, result)
        shortfall = result.get(SHORTFALL)
        if action == TrialScheduler.STOP and (self._is_anchor(trial) or
                                              shortfall is not None and shortfall >= self.hopeless_below):
            self._num_stopped -= 1  # ASHA counted it as stopped
            return TrialScheduler.CONTINUE
        return action


class TrialLines(Callback):
    """One line on stderr per finished trial, so a long search shows where it is."""

    def on_trial_complete(self, iteration, trials, trial, **info):
        result = trial.last_result or {}
        if result.get(FINAL):
            verdict = "pass" if result.get("passed") else "FAIL"
            _line(f"trial {trial.trial_id}: {result.get('metric')} {result.get('score'):.4f} "
                  f"(drop {result.get('drop'):.2f}, gates {verdict}), batch-1 p50 {result.get('latency_ms'):.2f} ms, "
                  f"{(result.get('model_bytes') or 0) / 1e6:.1f} MB")
        else:
            shortfall = result.get("val_shortfall")
            why = ("no validation yet" if shortfall is None else "validation within the budget" if shortfall >= 0
                   else f"validation drop {-shortfall:.2f} points past the budget")
            _line(f"trial {trial.trial_id}: stopped early ({why})")

    def on_trial_error(self, iteration, trials, trial, **info):
        _line(f"trial {trial.trial_id}: failed (recorded in tune.json; the search goes on)")


def _line(text: str) -> None:
    sys.stderr.write(f"tune: {text}\n")
    sys.stderr.flush()
