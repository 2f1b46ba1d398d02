"""Gates: accuracy drop in points with a paired-bootstrap interval, and latency budgets."""

from __future__ import annotations

import itertools
import time

import numpy as np
import pytest

from mcompress.core.task import get_task
from mcompress.metrics.evaluation import EvalResult, LatencyResult
from mcompress.metrics.gates import accuracy_drop_gate, bootstrap_drop_ci, latency_gates, size_gate


def _result(predictions, labels) -> EvalResult:
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    return EvalResult(float((predictions == labels).mean()), predictions, labels,
                      np.zeros((len(labels), 2), dtype=np.float32), get_task("text-classification"))


def test_accuracy_drop_value_verdict_and_ci():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 200)
    reference_pred = labels.copy()
    reference_pred[:20] ^= 1  # reference: 90% accurate
    candidate_pred = reference_pred.copy()
    candidate_pred[100:106] ^= 1  # the candidate gets 6 more wrong: 87%
    reference, candidate = _result(reference_pred, labels), _result(candidate_pred, labels)
    assert reference.accuracy == pytest.approx(0.90) and candidate.accuracy == pytest.approx(0.87)

    gate = accuracy_drop_gate(reference, candidate, max_drop=1.0, seed=0)
    assert gate.name == "accuracy_drop" and gate.unit == "points"
    assert gate.value == pytest.approx(3.0, abs=1e-9)
    assert gate.passed is False
    low, high = gate.ci95
    assert low <= gate.value <= high
    assert 0.0 <= low < high  # the candidate is never better on any example, so no resample goes negative
    assert "predictions agree on 97.00%" in gate.detail

    assert accuracy_drop_gate(reference, candidate, max_drop=3.0).passed is True  # the budget is inclusive
    assert accuracy_drop_gate(reference, candidate, max_drop=2.99).passed is False

    d = gate.as_dict()
    assert d["value"] == 3.0 and d["ci95"] == [round(low, 4), round(high, 4)] and d["passed"] is False


def test_drop_exactly_at_the_budget_passes():
    # 90/100 -> 89/100 is a drop of exactly 1 point; float subtraction of the accuracies gives
    # 1.0000000000000009, which must not fail the default 1.0-point budget.
    labels = np.zeros(100, dtype=int)
    reference_pred, candidate_pred = labels.copy(), labels.copy()
    reference_pred[:10] = 1
    candidate_pred[:11] = 1
    gate = accuracy_drop_gate(_result(reference_pred, labels), _result(candidate_pred, labels), max_drop=1.0)
    assert gate.value == 1.0
    assert gate.passed is True


def test_improvement_is_a_negative_drop():
    labels = np.array([0, 1] * 50)
    reference_pred = labels.copy()
    reference_pred[:10] ^= 1
    gate = accuracy_drop_gate(_result(reference_pred, labels), _result(labels, labels), max_drop=0.0)
    assert gate.value == pytest.approx(-10.0)
    assert gate.passed is True
    assert gate.ci95[0] <= -10.0 <= gate.ci95[1] <= 0.0


def test_identical_results_give_zero_interval():
    labels = np.array([0, 1, 1, 0, 1, 0, 0, 1])
    predictions = np.array([0, 1, 0, 0, 1, 1, 0, 1])
    gate = accuracy_drop_gate(_result(predictions, labels), _result(predictions.copy(), labels), max_drop=0.0)
    assert gate.value == 0.0 and gate.passed is True
    assert gate.ci95 == (0.0, 0.0)
    assert "agree on 100.00%" in gate.detail


def test_bootstrap_is_seeded_and_paired():
    rng = np.random.default_rng(0)
    ref = rng.integers(0, 2, 300).astype(float)
    cand = ref.copy()
    cand[:15] = 0.0
    assert bootstrap_drop_ci(ref, cand, seed=3) == bootstrap_drop_ci(ref, cand, seed=3)
    # Paired: flipping the same examples in both leaves the differences, so the interval, unchanged.
    assert bootstrap_drop_ci(1 - ref, 1 - cand, seed=3) == pytest.approx(tuple(-x for x in bootstrap_drop_ci(ref, cand, seed=3)[::-1]))


def test_bootstrap_resamples_the_same_examples_for_both_models():
    """The candidate is the reference with 15 of 300 correct answers made wrong: every per-example
    difference is 0 or +1, so any resample of the same indices for both has a drop >= 0, and the
    interval is set by the 15 differing examples alone (about 5 points wide). Resampling each
    model's examples independently (unpaired) mixes in each accuracy's own variance: it gives
    negative drops and an interval about three times as wide."""
    rng = np.random.default_rng(0)
    ref = rng.integers(0, 2, 300).astype(float)
    cand = ref.copy()
    cand[np.flatnonzero(ref)[:15]] = 0.0
    low, high = bootstrap_drop_ci(ref, cand, seed=3)
    assert 0.0 <= low < 5.0 < high
    idx_ref, idx_cand = rng.integers(0, 300, (2, 2000, 300))
    unpaired = np.percentile((ref[idx_ref].mean(axis=1) - cand[idx_cand].mean(axis=1)) * 100, [2.5, 97.5])
    assert unpaired[0] < 0.0 and high - low < (unpaired[1] - unpaired[0]) / 2


def _latency(p50: float, batch: int = 1, seq: int = 128) -> LatencyResult:
    return LatencyResult(batch, seq, p50, p50 * 1.2, 10)


def test_latency_gates_verdicts():
    reference, build = _latency(20.0), _latency(5.0)
    assert latency_gates(reference, build, None, None) == []

    ok_latency, ok_speedup = latency_gates(reference, build, max_latency_ms=5.0, min_speedup=4.0)
    assert (ok_latency.name, ok_latency.passed, ok_latency.value, ok_latency.unit) == ("latency_p50", True, 5.0, "ms")
    assert (ok_speedup.name, ok_speedup.passed, ok_speedup.unit) == ("speedup", True, "x")
    assert ok_speedup.value == pytest.approx(4.0)
    assert "batch 1, sequence 128" in ok_latency.detail

    slow, not_fast_enough = latency_gates(reference, build, max_latency_ms=4.99, min_speedup=4.01)
    assert slow.passed is False and slow.threshold == 4.99
    assert not_fast_enough.passed is False and not_fast_enough.threshold == 4.01


def test_latency_gate_reports_the_shape_it_measured():
    (gate,) = latency_gates(_latency(3.0, 1, 16), _latency(1.0, 1, 16), None, min_speedup=2.0)
    assert gate.passed and gate.value == pytest.approx(3.0)
    assert "batch 1, sequence 16" in gate.detail


def test_p95_latency_gate():
    build = LatencyResult(1, 128, p50_ms=5.0, p95_ms=9.0, iterations=40)
    (tail,) = latency_gates(_latency(20.0), build, None, None, max_latency_p95_ms=8.0)
    assert (tail.name, tail.passed, tail.value, tail.threshold) == ("latency_p95", False, 9.0, 8.0)
    (tail,) = latency_gates(_latency(20.0), build, None, None, max_latency_p95_ms=9.0)
    assert tail.passed


def test_size_gate():
    gate = size_gate(23_000_000, 92_000_000, 0.25)
    assert (gate.name, gate.passed, gate.unit) == ("size_ratio", True, "x") and gate.value == pytest.approx(0.25)
    assert not size_gate(23_000_001, 92_000_000, 0.25).passed


def _scored(predictions, labels, logits) -> EvalResult:
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    return EvalResult(float((predictions == labels).mean()), predictions, labels, np.asarray(logits, dtype=np.float32),
                      get_task("text-classification"))


def test_deployed_accuracy_gates_the_worst_batching_and_says_why():
    from mcompress.metrics.deployed import deployed_accuracy

    labels = np.array([0, 1] * 50)
    reference = _scored(labels, labels, np.zeros((100, 2)))
    alone_pred, batched_pred = labels.copy(), labels.copy()
    alone_pred[:1] ^= 1  # each text alone: 1 more wrong
    batched_pred[:3] ^= 1  # in batches of 32: 3 more wrong
    alone = _scored(alone_pred, labels, np.zeros((100, 2)))
    batched_logits = np.zeros((100, 2))
    batched_logits[5, 1] = 0.02  # a quantization step's worth of difference
    batched = _scored(batched_pred, labels, batched_logits)

    deployed = deployed_accuracy(reference, {1: alone, 32: batched}, max_drop=2.0)
    assert deployed.worst == 32 and deployed.batch_dependent
    gate = deployed.gate()
    assert gate.value == pytest.approx(3.0) and gate.passed is False  # batch 1 alone (1.0) would pass
    assert "batch 32" in gate.detail and "batch 1: 1.00" in gate.detail and "depend on the batching" in gate.detail
    modes = deployed.as_dict()["modes"]
    assert [m["batch_size"] for m in modes] == [1, 32]
    assert modes[0]["agreement"] == 1.0 and modes[1]["agreement"] == pytest.approx(0.98)


def test_deployed_accuracy_of_a_batch_independent_build():
    from mcompress.metrics.deployed import deployed_accuracy

    labels = np.array([0, 1] * 20)
    reference = _scored(labels, labels, np.zeros((40, 2)))
    same = {b: _scored(labels, labels, np.full((40, 2), 1e-7 * b)) for b in (1, 8)}
    deployed = deployed_accuracy(reference, same, max_drop=1.0)
    assert not deployed.batch_dependent and deployed.worst == 1  # equal drops: the first batching
    assert deployed.as_dict()["max_logit_difference"] == pytest.approx(7e-7, rel=1e-3)
    single = deployed_accuracy(reference, {1: same[1]}, max_drop=1.0)
    assert single.gate().detail == single.gates[1].detail  # one batching: the plain gate


def test_recipe_batching_defaults_to_alone_and_the_eval_batch_size():
    from mcompress.core.recipe import EvalConfig

    assert EvalConfig().deployed_batchings() == [1, 16]
    assert EvalConfig(batch_size=1).deployed_batchings() == [1]
    assert EvalConfig(batching=[8]).deployed_batchings() == [8]


def test_a_bundle_batches_at_the_largest_batch_its_gate_judged():
    """Bundle.predict's and mcompress serve's default batch, read from the manifest's recipe, is the
    largest of the recipe's deployed batchings, whatever the recipe says."""
    from mcompress.bundle.runtime import largest_gated_batch
    from mcompress.core.recipe import EvalConfig

    for settings in (EvalConfig(), EvalConfig(batch_size=48), EvalConfig(batching=[8, 1]), EvalConfig(batch_size=1),
                     EvalConfig(batch_size=64, batching=[1, 24])):
        manifest = {"recipe": {"eval": settings.model_dump(mode="json")}}
        assert largest_gated_batch(manifest) == max(settings.deployed_batchings())
    assert largest_gated_batch({}) == max(EvalConfig().deployed_batchings())  # a manifest without its recipe
    for bad in ([], [0], [4, 4]):
        with pytest.raises(ValueError):
            EvalConfig(batching=bad)


def test_distance_to_limit_rates_and_shares():
    from mcompress.metrics.roofline import achieved_gmacs, distance_to_limit

    # 1.44 GMAC per sequence at 10 ms: 144 GMAC/s
    assert achieved_gmacs(1_440_000_000, 1, 10.0) == pytest.approx(144.0)
    pairs = [(LatencyResult(1, 128, 20.0, 21.0, 10, []), LatencyResult(1, 128, 8.0, 9.0, 10, [])),
             (LatencyResult(8, 128, 100.0, 110.0, 4, []), LatencyResult(8, 128, 40.0, 44.0, 4, [])),
             (LatencyResult(1, 14, 5.0, 5.0, 10, []), LatencyResult(1, 14, 2.0, 2.0, 10, []))]
    rows = distance_to_limit(1_000_000_000, 500_000_000, pairs, {"fp32": 100.0, "int8": 250.0}, "int8")
    assert [(r["batch_size"], r["sequence_length"]) for r in rows] == [(1, 128), (8, 128)]  # MACs are at sequence 128
    assert rows[0]["reference_gmacs"] == pytest.approx(50.0) and rows[0]["reference_share"] == pytest.approx(0.5)
    assert rows[0]["build_gmacs"] == pytest.approx(62.5) and rows[0]["build_share"] == pytest.approx(0.25)
    assert rows[1]["build_gmacs"] == pytest.approx(100.0)
    # int4 weights have no GEMM peak of their own: the rate is reported, the share is not
    int4 = distance_to_limit(1_000_000_000, 500_000_000, pairs, {"fp32": 100.0, "int8": 250.0}, "int4")
    assert [r["build_share"] for r in int4] == [None, None] and int4[0]["build_gmacs"] == pytest.approx(62.5)


def test_measured_gemm_peaks_are_positive():
    from mcompress.metrics.roofline import gemm_peak_gmacs

    fp32 = gemm_peak_gmacs("fp32", 1, shape=(64, 256, 256), seconds=0.05)
    int8 = gemm_peak_gmacs("int8", 1, shape=(64, 256, 256), seconds=0.05)
    assert fp32 > 0.5 and int8 > 0.5  # even a loaded 2-core CPU does more than 0.5 GMAC/s


class _ClockRunner:
    """Records when each of its calls started, in a log shared by all runners."""
    input_names = ["input_ids"]

    def __init__(self, name: str, log: list):
        self.name, self.log = name, log

    def logits(self, inputs):
        self.log.append((self.name, time.perf_counter()))
        return np.zeros((inputs["input_ids"].shape[0], 2), dtype=np.float32)


def test_interleaved_rounds_let_the_previous_runner_settle():
    """Each runner's turn starts settle_s after the previous runner's last call (its thread pool
    spins for a while and would take a core from the next one), and the turns alternate."""
    from mcompress.metrics.evaluation import interleaved_latency

    log: list = []
    runners = {name: _ClockRunner(name, log) for name in ("a", "b")}
    feeds = {name: {"input_ids": np.ones((1, 8), dtype=np.int64)} for name in runners}
    result = interleaved_latency(runners, feeds, rounds=3, per_round=2, warmup=1, settle_s=0.05)
    assert [result[n].iterations for n in runners] == [6, 6]
    turns = [(name, [t for _, t in group]) for name, group in
             itertools.groupby(log, key=lambda entry: entry[0])]
    assert [name for name, _ in turns] == ["a", "b"] * 4  # warmups, then three rounds
    for (_, previous), (_, current) in zip(turns, turns[1:]):
        assert current[0] - previous[-1] >= 0.05
