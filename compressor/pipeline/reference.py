"""Step 2: the reference every build is measured against — the FP32 PyTorch original, evaluated
on the eval data (and on the selection split that passes choose candidates on), its size and FLOPs.
Computed once per run; cpu-auto shares it between its targets."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mcompress.calibration.datasets import token_lengths
from mcompress.core.state import ModelKind, ModelState
from mcompress.metrics.evaluation import EvalResult, TorchRunner
from mcompress.metrics.flops import encoder_flops
from mcompress.pipeline.prepare import Prepared, ProgressFactory

if TYPE_CHECKING:
    import numpy as np

FLOPS_SEQUENCE = 128  # FLOPs are counted at batch 1 and this sequence length


@dataclass
class Reference:
    model: Any  # the torch model
    tokenizer: Any
    runner: TorchRunner
    threads: int
    eval: EvalResult
    selection: EvalResult  # on the selection split (the eval result itself when there is none)
    size_bytes: int
    flops: int
    eval_lengths: "np.ndarray"  # token count of every eval example, untruncated (median length, truncation share)
    timing: Any = None  # its open timing process, shared by every gate of a run (pipeline/timing.py), or None

    def state(self, prepared: Prepared) -> ModelState:
        """The first pass's input."""
        return ModelState(ModelKind.TORCH, prepared.checkpoint, self.tokenizer, torch_model=self.model)


def evaluator(prepared: Prepared, tokenizer, progress: ProgressFactory):
    """``evaluate(runner, data, label, batch_size=None, model_tokenizer=None)`` with the run's
    settings (eval.batch_size unless a batch size is given), ``tokenizer`` unless the model has its
    own (a pruned vocabulary), and a progress bar."""
    recipe = prepared.recipe

    def run_eval(runner, dataset, label: str, batch_size: int | None = None, model_tokenizer=None) -> EvalResult:
        advance = progress(f"evaluating {label}", len(dataset))
        return prepared.task.evaluate(runner, model_tokenizer or tokenizer, dataset, recipe.max_length,
                                      batch_size or recipe.eval.batch_size, advance, what=label)

    return run_eval


def measure_reference(prepared: Prepared, progress: ProgressFactory) -> Reference:
    import torch

    from mcompress.core.checkpoint import load_model_and_tokenizer

    recipe = prepared.recipe
    torch.manual_seed(recipe.seed)
    model, tokenizer = load_model_and_tokenizer(prepared.checkpoint)
    threads = recipe.latency.threads or os.cpu_count()
    runner = TorchRunner(model, threads)
    run_eval = evaluator(prepared, tokenizer, progress)
    on_eval = run_eval(runner, prepared.eval_data, "PyTorch FP32")
    on_selection = (on_eval if prepared.data.selection is prepared.data.eval
                    else run_eval(runner, prepared.selection_data, "PyTorch FP32 (selection split)"))
    size = ModelState(ModelKind.TORCH, prepared.checkpoint, tokenizer, torch_model=model).size_bytes()
    lengths = token_lengths(tokenizer, prepared.eval_data.texts, 100_000)
    return Reference(model, tokenizer, runner, threads, on_eval, on_selection, size, encoder_flops(model, FLOPS_SEQUENCE),
                     lengths)
