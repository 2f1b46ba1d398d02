"""Quantize a decoder (causal LM with its KV cache) on onnx-cpu: weight-only MatMulNBits schemes
(passes/quantize/weight_only.py), chosen by measurement.

``quantize.decoder.scheme`` names one scheme, or ``auto``: every scheme of
``quantize.decoder.candidates`` that ONNX Runtime builds (int8-dynamic, int8, int4-rtn, int4-hqq,
int4-gptq) is built and measured on the first ``selection_examples`` selection documents:

- perplexity through the task's own evaluation (``ctx.task.evaluate``, the windowing of
  metrics/perplexity.py), against the FP32 input graph scored on the same documents, so the
  candidates and their reference see the same text; the gate's value and budget come from the task
  (``Task.drops``, ``Task.gate_budget``: the relative perplexity increase against
  ``gates.max_ppl_increase``);
- decode speed: greedy decoding of ``decode_tokens`` tokens at batch 1 with the KV cache after a
  prompt of the first selection document (at most 64 tokens), best of two runs, in tokens/s.

The fastest decode within budget wins (metrics.selection.fastest_within_budget; ms per token,
ties within ``quantize.latency_tie_tolerance`` go to the first candidate in order); when none is
within budget the one with the lowest perplexity is kept and the final gate fails the run.
GPTQ's calibration: the first ``calibration_examples`` calibration documents, each cut to
``calibration_tokens`` tokens, fed as prompts with an empty cache.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np

from mcompress.core.errors import InputError
from mcompress.core.pass_base import Pass, PassContext, PassResult
from mcompress.core.state import ModelKind, ModelState
from mcompress.metrics.selection import fastest_within_budget
from mcompress.passes.quantize.decoder_graph import decode_tokens_per_second
from mcompress.passes.quantize.weight_only import (SCHEMES, WeightQuantSettings, calibration_feeds,
                                                   quantize_decoder_weights)

logger = logging.getLogger(__name__)
PROMPT_TOKENS = 64


def settings_of(cfg) -> WeightQuantSettings:
    """The recipe's quantize.decoder as the quantizer's settings."""
    return WeightQuantSettings(block_size=cfg.block_size, symmetric=cfg.symmetric, accuracy_level=cfg.accuracy_level,
                               lm_head=cfg.lm_head, embedding=cfg.embedding, gptq_percdamp=cfg.gptq_percdamp,
                               gptq_actorder=cfg.gptq_actorder)


def schemes_to_build(cfg, supported: tuple[str, ...], target_name: str) -> list[str]:
    """The recipe's scheme, or in auto mode the candidates this target builds (InputError when none)."""
    wanted = list(cfg.candidates) if cfg.scheme == "auto" else [cfg.scheme]
    schemes = [s for s in wanted if s in supported]
    if not schemes:
        raise InputError(f"recipe quantize.decoder asks for {', '.join(wanted)}, which {target_name} does not build.",
                         f"Use one of: {', '.join(supported)}.")
    return schemes


def calibration_token_ids(tokenizer, texts: list[str], tokens: int) -> list[np.ndarray]:
    """Each calibration document's first ``tokens`` tokens (with the tokenizer's special tokens)."""
    return [np.asarray(ids[:tokens], dtype=np.int64) for ids in tokenizer(texts, truncation=False)["input_ids"] if ids]


def choose_built(built: dict[str, Path], score, ctx: PassContext, metrics: dict) -> str:
    """The one scheme built, or the fastest within budget of several (``score()`` measures them);
    the candidates' scores, the reason and the choice go into ``metrics``."""
    if len(built) == 1:
        chosen = next(iter(built))
    else:
        metrics["candidates"] = score()
        chosen, metrics["choice_reason"] = choose(metrics["candidates"], ctx.recipe.quantize.latency_tie_tolerance)
    metrics["chosen"] = chosen
    return chosen


def score_candidates(built: dict[str, Path], reference: tuple[Path, str], state: ModelState, ctx: PassContext,
                     decode_rate, settings=None) -> dict[str, dict]:
    """Each built candidate's perplexity against ``reference`` (its path and what to call it) on
    the selection documents, whether that is within the task's budget, its size and
    ``decode_rate(path, prompt_ids)`` (greedy tokens/s with the KV cache on the target's runtime)."""
    recipe, cfg = ctx.recipe, ctx.recipe.quantize.decoder
    selection = ctx.selection.head(cfg.selection_examples)
    budget, drop_type = ctx.task.gate_budget(recipe.gates)
    prompt = prompt_ids(state.tokenizer, selection.texts)

    def evaluate(path: Path, what: str):
        runner = ctx.target.runner(path, recipe.latency.threads, settings)
        return ctx.task.evaluate(runner, state.tokenizer, selection, recipe.max_length, recipe.eval.batch_size, what=what)

    reference_score = evaluate(*reference).score
    scores = {}
    for name, path in built.items():
        score = evaluate(path, f"quantize candidate {name}").score
        increase = float(np.asarray(ctx.task.drops(reference_score, score, drop_type)))
        scores[name] = {"perplexity": round(1.0 / score, 4) if score > 0 else float("inf"),
                        "reference_perplexity": round(1.0 / reference_score, 4), "increase_percent": round(increase, 3),
                        "within_budget": round(increase, 9) <= budget,
                        "decode_tokens_per_s": round(decode_rate(path, prompt), 2),
                        "size_bytes": state.format.size(path), "documents": len(selection)}
    return scores


def prompt_ids(tokenizer, texts: list[str]) -> np.ndarray:
    """The timing prompt: the first document's first PROMPT_TOKENS tokens, shape (1, length)."""
    return calibration_token_ids(tokenizer, texts[:1], PROMPT_TOKENS)[0][None, :]


def choose(scores: dict[str, dict], tie_tolerance: float) -> tuple[str, str]:
    """(chosen candidate, reason) by the one selection rule."""
    choice = fastest_within_budget(list(scores), lambda n: scores[n]["within_budget"],
                                   lambda n: 1000.0 / scores[n]["decode_tokens_per_s"], lambda n: -scores[n]["perplexity"],
                                   tie_tolerance)
    reason = ("fastest decode within the perplexity budget" if choice.within_budget
              else "no candidate within budget; kept the lowest perplexity")
    return choice.chosen, reason


class QuantizeDecoder(Pass):
    name = "quantize"
    accepts = (ModelKind.ONNX,)
    produces = ModelKind.ONNX
    supported = SCHEMES

    def cache_key_parts(self, ctx: PassContext) -> dict:
        recipe, cfg = ctx.recipe, ctx.recipe.quantize.decoder
        budget, drop_type = ctx.task.gate_budget(recipe.gates)
        return {"mode": recipe.quantize.mode, "decoder": cfg.model_dump(mode="json"), "budget": [budget, drop_type],
                "max_length": recipe.max_length, "seed": recipe.seed, "tie": recipe.quantize.latency_tie_tolerance,
                "calibration": ctx.calibration.head(cfg.calibration_examples).content_hash(),
                "selection": ctx.selection.head(cfg.selection_examples).content_hash(),
                "capabilities": dataclasses.asdict(ctx.target.capabilities), "threads": recipe.latency.threads}

    def call(self, state: ModelState, ctx: PassContext) -> PassResult:
        cfg = ctx.recipe.quantize.decoder
        if ctx.recipe.quantize.mode == "none":
            return PassResult(dataclasses.replace(state, annotations={**state.annotations, "quantization": "none"}),
                              False, {"skipped": "quantize.mode none: the FP32 decoder ships"})
        schemes = schemes_to_build(cfg, self.supported, ctx.target.name)
        settings = settings_of(cfg)
        feeds = None
        if "int4-gptq" in schemes:
            texts = ctx.calibration.texts[: cfg.calibration_examples]
            feeds = calibration_feeds(state.onnx_path, calibration_token_ids(state.tokenizer, texts, cfg.calibration_tokens))
        built: dict[str, Path] = {}
        facts: dict[str, dict] = {}
        for scheme in schemes:
            dst = ctx.work_dir / "quantize" / scheme / "model.onnx"
            facts[scheme] = quantize_decoder_weights(state.onnx_path, dst, scheme, settings, ctx.target.capabilities, feeds)
            built[scheme] = dst
        metrics: dict = {"scheme": cfg.scheme, "built": facts}
        chosen = choose_built(built, lambda: self._score_all(built, state, ctx), ctx, metrics)
        logger.info("quantize (decoder): chose %s", chosen)
        precision = "int8" if chosen.startswith("int8") else "int4"
        annotations = {k: v for k, v in state.annotations.items() if k != "graph_variants"}
        out = dataclasses.replace(state, model_file=built[chosen],
                                  annotations={**annotations, "quantization": chosen, "precision": precision,
                                               "weight_quantization": facts[chosen], "float_graph": Path(state.onnx_path)})
        return PassResult(out, True, metrics)

    @staticmethod
    def _score_all(built: dict[str, Path], state: ModelState, ctx: PassContext) -> dict[str, dict]:
        cfg, threads = ctx.recipe.quantize.decoder, ctx.recipe.latency.threads
        return score_candidates(built, (state.onnx_path, "the FP32 decoder graph (quantize reference)"), state, ctx,
                                lambda path, prompt: decode_tokens_per_second(path, prompt, cfg.decode_tokens, threads,
                                                                              repeats=2))
