"""Step 3's instruments: what the job measures around each pass, from outside the passes.

- PassEvaluations: each pass's model evaluated at most once on the eval data, shared by the
  instruments that need it (so none depends on another running first).
- PassEvaluator: the eval-data figures and batch-1 latency of every pass that changed the model.
- FlopsCounter: FLOPs at batch 1, sequence 128 after every pass. ONNX passes keep the
  architecture (quantization changes the precision of the same operations), so the count carries
  over from the last PyTorch model.
- PassGate (pipeline/pass_gates.py): ``gates.after``.
"""

from __future__ import annotations

from typing import Callable

from mcompress.core.manager import Instrument
from mcompress.core.state import ModelKind, ModelState
from mcompress.metrics.evaluation import EvalResult, TorchRunner, latency_inputs, measure_latency
from mcompress.metrics.flops import encoder_flops
from mcompress.pipeline.reference import FLOPS_SEQUENCE


class PassEvaluations:
    """``get(pass, state)``: the pass's model evaluated on the eval data, once."""

    def __init__(self, runner_for: Callable[[ModelState], object],
                 evaluate: Callable[[ModelState, object, str], EvalResult]):
        self.runner_for = runner_for  # state -> runner (PyTorch for torch states, the target's otherwise)
        self.evaluate = evaluate  # (state, runner, label) -> EvalResult on the eval data, with the state's tokenizer
        self._done: dict[str, EvalResult] = {}

    def get(self, p, state: ModelState) -> EvalResult:
        if p.name not in self._done:
            self._done[p.name] = self.evaluate(state, self.runner_for(state), f"after {p.name}")
        return self._done[p.name]


class PassEvaluator(Instrument):
    def __init__(self, evaluations: PassEvaluations, texts: list[str], latency_config, sequence_length: int):
        self.evaluations = evaluations
        self.texts = texts
        self.latency = latency_config
        self.sequence_length = sequence_length

    def run_after_pass(self, p, result, record) -> None:
        if not result.modified:
            return
        evaluation = self.evaluations.get(p, result.state)
        record.evaluation.update(evaluation.summary())
        runner = self.evaluations.runner_for(result.state)
        inputs = latency_inputs(result.state.tokenizer, self.texts, 1, self.sequence_length)
        timing = measure_latency(runner, inputs, self.latency.warmup, self.latency.iterations)
        record.evaluation["latency"] = {"batch_size": 1, "sequence_length": self.sequence_length,
                                        "p50_ms": round(timing.p50_ms, 3)}


class FlopsCounter(Instrument):
    def __init__(self, reference_flops: int):
        self.current = reference_flops

    def run_after_pass(self, p, result, record) -> None:
        if result.state.kind is ModelKind.TORCH:
            self.current = encoder_flops(result.state.torch_model, FLOPS_SEQUENCE)
        record.evaluation["flops_seq128"] = self.current


def state_runner(target, threads: int, settings) -> Callable[[ModelState], object]:
    """The runner of a pass's output: PyTorch for a torch model, the target's engine otherwise."""
    return lambda s: (TorchRunner(s.torch_model, threads) if s.kind is ModelKind.TORCH
                      else target.runner(s.model_file, threads, settings))
