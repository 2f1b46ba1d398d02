"""Recipes: the typed, validated description of one compression run.

A recipe is YAML validated by pydantic with ``extra="forbid"`` at every level, so a misspelt key
is an error that names it. Defaults live here; ``recipes/ptq.yaml`` spells out the default recipe.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from mcompress.core.errors import InputError
from mcompress.core.limits import brief, brief_repr, read_text_bounded



class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ExportConfig(_Strict):
    opset: int = Field(17, ge=14, le=21)
    # Max |logit difference| allowed between PyTorch and the exported ONNX on real inputs.
    parity_atol: float = Field(1e-4, gt=0)
    parity_examples: int = Field(16, ge=1)


class OptimizeConfig(_Strict):
    # ONNX Runtime's transformer fusions (Attention, EmbedLayerNormalization, SkipLayerNorm, Gelu).
    # auto: keep both the fused and the unfused graph and let the quantize pass measure which is
    # faster after quantization (fused INT8 graphs measured slower than unfused ones here).
    fusion: Literal["auto", "fused", "unfused"] = "auto"
    fuse_attention: bool = True


class StaticQuantConfig(_Strict):
    calibration_method: Literal["minmax", "percentile", "entropy"] = "minmax"
    calibration_examples: int = Field(256, ge=1, le=100_000)
    percentile: float = Field(99.999, gt=90, le=100)
    op_types: list[str] = ["MatMul", "Gemm"]


DecoderScheme = Literal["int8-dynamic", "int8", "int4-rtn", "int4-hqq", "int4-gptq", "int4-awq"]


class DecoderQuantConfig(_Strict):
    """Weight quantization of a causal LM (docs/causal-lm-quantization.md): onnx-cpu builds
    MatMulNBits graphs (passes/quantize/decoder.py: int8-dynamic, int8, int4-rtn, int4-hqq,
    int4-gptq), openvino-cpu NNCF weight compression (passes/quantize/nncf_weights.py: int8,
    int4-rtn, int4-awq). quantize.mode none skips both."""

    # auto: build each of `candidates` the target can, keep the fastest decode (tokens/s, batch 1,
    # KV cache) whose perplexity on the selection text stays within the gate's budget.
    scheme: Union[Literal["auto"], DecoderScheme] = "auto"
    candidates: list[DecoderScheme] = ["int8", "int4-rtn", "int4-hqq", "int4-awq"]
    # Weights per quantization block along the input axis (a power of two >= 16); 32 lines up with
    # the GGUF Q4_1 blocks the SmolLM2 example was dequantized from.
    block_size: int = Field(32, ge=16, le=4096)
    symmetric: bool = False  # zero point fixed at the middle (HQQ is always asymmetric)
    # MatMulNBits accuracy_level: 0 = ORT's default, 1 fp32, 2 fp16, 3 bf16, 4 int8 compute (activations
    # quantized per block of block_size inputs). 4 by default: at 0, ORT 1.32's 8-bit kernel decodes 6.2x
    # slower than FP32 MatMul, at 4 3.7x faster (benchmarks/bench_matmul_nbits.py; RESULTS.md, issue 15).
    accuracy_level: int = Field(4, ge=0, le=4)
    lm_head: Literal["quantize", "float"] = "quantize"  # the logits MatMul, at the scheme's bits or FP32
    # token embedding: tied (default): with tied embeddings and a quantized lm_head, the lookup reads
    # the lm_head's quantized blocks, one copy at the scheme's bits (passes/quantize/weight_only.py
    # tied_embedding; where that cannot be, and on openvino-cpu, it is int4); int4: its own 4-bit
    # blocks (GatherBlockQuantized); float: FP32
    embedding: Literal["tied", "int4", "float"] = "tied"
    # Calibration for GPTQ (Hessians) and NNCF's AWQ/scale estimation: the first N calibration
    # documents, each cut to calibration_tokens tokens.
    calibration_examples: int = Field(16, ge=1, le=10_000)
    calibration_tokens: int = Field(256, ge=8, le=4096)
    gptq_percdamp: float = Field(0.01, gt=0, lt=1)
    gptq_actorder: bool = False
    # auto: the selection documents that score perplexity, and the greedy tokens timed per candidate.
    selection_examples: Optional[int] = Field(32, ge=1)
    decode_tokens: int = Field(32, ge=2, le=1024)

    @field_validator("block_size")
    @classmethod
    def _power_of_two(cls, value: int) -> int:
        if value & (value - 1):
            raise ValueError("must be a power of two (16, 32, 64, 128, ...)")
        return value


class QuantizeConfig(_Strict):
    # auto: build dynamic and static candidates, keep the fastest within the accuracy budget.
    mode: Literal["auto", "dynamic", "static", "none"] = "auto"
    # Decoders (causal LMs) quantize weights instead: their schemes and the auto choice.
    decoder: DecoderQuantConfig = DecoderQuantConfig()
    per_channel: bool = True
    static: StaticQuantConfig = StaticQuantConfig()
    # Examples of the selection split used to score candidates in auto mode (null = all).
    selection_examples: Optional[int] = Field(None, ge=1)
    # Candidates whose latency score is within this fraction of the fastest count as tied; the
    # first in candidate order wins, so near-equal timings do not flip the build between runs.
    latency_tie_tolerance: float = Field(0.05, ge=0, le=1)


class GateConfig(_Strict):
    # auto: the task's metric, accuracy for a classifier, entity-level F1 for a tagger (IOB2,
    # seqeval semantics: compressor/metrics/entity_metrics.py). max_drop is in points of that metric.
    # A named metric must be one some task has (Task.metrics); the run checks it against the
    # checkpoint's task (Task.gated_metric).
    metric: str = "auto"
    # Largest allowed drop of the metric, in absolute points (1.0 = one percentage point).
    max_drop: float = Field(1.0, ge=0, le=100)
    # absolute: the drop in points; relative: the drop in percent of the reference's value.
    drop_type: Literal["absolute", "relative"] = "absolute"
    # Passes after which the model is evaluated on the eval data and gated against max_drop; the
    # run stops at the first that breaks it (exit 3, naming the pass) before later passes run.
    after: list[str] = []
    max_latency_ms: Optional[float] = Field(None, gt=0)  # p50 at batch 1, sequence 128
    max_latency_p95_ms: Optional[float] = Field(None, gt=0)  # p95 at batch 1, sequence 128
    min_speedup: Optional[float] = Field(None, gt=0)  # vs the FP32 PyTorch original, batch 1, seq 128
    # causal-lm (compressor/metrics/decoder_latency.py), batch 1, 128-token prompt, 64 new tokens
    # with the KV cache: decode tokens/s over the FP32 PyTorch original's, and the prefill's ms.
    min_decode_speedup: Optional[float] = Field(None, gt=0)
    max_prefill_ms: Optional[float] = Field(None, gt=0)
    # Model file bytes over the FP32 original's tensor bytes (0.25 = a quarter of the size).
    max_size_ratio: Optional[float] = Field(None, gt=0)
    # causal-lm: the largest allowed perplexity increase over the original, in percent of its
    # perplexity (5.0 = +5%), on the eval documents (compressor/metrics/perplexity.py); it stands in
    # for max_drop/drop_type, which apply to accuracy-like metrics.
    max_ppl_increase: float = Field(5.0, ge=0, le=10_000)


    @field_validator("metric")
    @classmethod
    def _known_metric(cls, metric: str) -> str:
        from mcompress.core.task import all_tasks

        known = ["auto", *dict.fromkeys(m for task in all_tasks() for m in task.metrics)]
        if metric not in known:
            raise ValueError(f"Input should be {', '.join(repr(m) for m in known[:-1])} or {known[-1]!r}")
        return metric


# Seconds every runner's turn waits before it starts, so that the previous runner's idle threads
# have stopped spinning. ONNX Runtime's intra-op workers spin for tens of milliseconds after a call
# before they block. On a 2-core AMD EPYC, a 3-layer INT8 build raced with no wait against four
# copies of itself measured 8.0-10.9 ms at batch 1 (alone: 4.9-6.3 ms); with 0.1 s, 5.1-6.3 ms
# (alone: 5.9-6.4 ms), and the larger builds' p95 fell from 33-40 to 22-25 ms
# (benchmarks/race_settle.py, RESULTS.md "Issue 17: a race inflated the small builds").
SETTLE_S = 0.1


class LatencyConfig(_Strict):
    batch_sizes: list[int] = [1, 8]
    # "data" means the eval data's median tokenized length.
    sequence_lengths: list[Union[int, Literal["data"]]] = [128, "data"]
    warmup: int = Field(5, ge=0)
    iterations: int = Field(40, ge=3)
    threads: Optional[int] = Field(None, ge=1)  # null = all cores
    # "process": the gate and the cpu-auto race time the original and each build in its own
    # process (metrics/isolated.py), so runtimes never share a process's threads; "shared": all in
    # the run's process (faster to start, for tests; PyTorch's spinning threads can slow the build).
    isolation: Literal["process", "shared"] = "process"
    # seconds of quiet before each runner's turn in a latency race (SETTLE_S); 0 only for tests
    settle_s: float = Field(SETTLE_S, ge=0, le=10)

    @model_validator(mode="after")
    def _positive(self):
        if any(b < 1 for b in self.batch_sizes):
            raise ValueError("batch_sizes must be >= 1")
        if any(isinstance(s, int) and s < 2 for s in self.sequence_lengths):
            raise ValueError("sequence_lengths must be >= 2")
        return self


class EvalConfig(_Strict):
    max_examples: Optional[int] = Field(None, ge=1)  # null = the whole eval split
    # 16, not 32: mcompress serve forms batches up to the largest batch the build was gated at, and
    # on the 2-core AMX Xeon the sentiment build served 3.27x the naive server's requests/s at
    # concurrency 32 in batches of 16 against 2.76x in batches of 32 (a padded row costs what a
    # real one does; benchmarks/RESULTS.md, Serving). TensorRT's largest profile batch follows it.
    batch_size: int = Field(16, ge=1)
    evaluate_each_pass: bool = True
    # Batch sizes the build is gated at, as it will be called: 1 = each text alone (a server at low
    # load, an edge device), larger = length-bucketed batches as the bundle runtime and the server
    # form them. The accuracy gate takes the worst. null = [1, batch_size].
    batching: Optional[list[int]] = None

    @model_validator(mode="after")
    def _batchings(self):
        if self.batching is not None:
            if not self.batching:
                raise ValueError("batching must list at least one batch size (1 = each text alone)")
            if any(b < 1 for b in self.batching) or len(set(self.batching)) != len(self.batching):
                raise ValueError("batching must list distinct batch sizes >= 1")
        return self

    def deployed_batchings(self) -> list[int]:
        """The batch sizes the build is gated at, in the recipe's order."""
        return list(self.batching) if self.batching is not None else list(dict.fromkeys([1, self.batch_size]))


class PerplexityConfig(_Strict):
    """causal-lm windowing (compressor/metrics/perplexity.py): windows of max_length tokens whose
    starts are ``stride`` tokens apart; each window scores the tokens no earlier window scored."""

    stride: Optional[int] = Field(None, ge=1)  # null = max_length // 2 (each token sees >= half a window)
    # Windows per model call: batch_tokens // max_length (at least 1, at most the batch size), which
    # bounds the logits held at once (windows x max_length x vocabulary floats).
    batch_tokens: int = Field(2048, ge=8)


class VocabularyConfig(_Strict):
    """Vocabulary pruning (passes/prune/vocabulary.py): keep the word pieces the training text uses,
    the special tokens and a reserve, so that every word still segments into kept pieces."""

    # "single-characters": every one-character piece and its continuation form (e.g. "a", "##a"),
    # so a word of known characters never becomes [UNK]; "none": only what the text uses.
    reserve: Literal["single-characters", "none"] = "single-characters"
    min_count: int = Field(1, ge=1)  # occurrences in the training text for a piece to be kept


class PruneConfig(_Strict):
    """Structured pruning budget: keep counts, or one keep_ratio (passes/prune/structured.py)."""

    keep_layers: Optional[int] = Field(None, ge=1)  # layers kept, chosen by layer_importance
    # how layers are ranked: greedy loss ablation (one forward pass per candidate per round), or
    # block influence, 1 - cos(layer input, layer output), from one forward pass (deep decoders)
    layer_importance: Literal["ablation", "block_influence"] = "ablation"
    heads_per_layer: Optional[int] = Field(None, ge=1)  # heads kept in every layer
    ffn_neurons_per_layer: Optional[int] = Field(None, ge=1)  # FFN width kept in every layer
    # Fraction of heads (ranked globally, every layer keeps >= 1) and of FFN neurons (per layer) kept.
    keep_ratio: Optional[float] = Field(None, gt=0, le=1)
    importance_examples: int = Field(256, ge=1, le=100_000)  # calibration examples that score importance
    batch_size: int = Field(32, ge=1)
    max_length: Optional[int] = Field(None, ge=8, le=4096)  # null = the recipe's max_length
    # 2:4 magnitude masks on the encoder's Linear weights after structured pruning, for sparse
    # tensor-core targets; the CPU target runs them as dense weights that happen to hold zeros.
    semi_structured_2_4: bool = False
    # Keep only the word pieces the training text uses (after distillation, before export); null = all.
    vocabulary: Optional[VocabularyConfig] = None

    @model_validator(mode="after")
    def _one_budget(self):
        counts = self.heads_per_layer is not None or self.ffn_neurons_per_layer is not None
        if counts and self.keep_ratio is not None:
            raise ValueError("give either keep_ratio or heads_per_layer/ffn_neurons_per_layer, not both")
        if not self.structural() and self.vocabulary is None:
            raise ValueError("no budget: set keep_ratio, keep_layers, heads_per_layer and/or ffn_neurons_per_layer, "
                             "or vocabulary")
        return self

    def structures(self) -> dict[str, list[str]]:
        """What the budget removes (layers, heads, ffn, 2:4), each with the keys that ask for it."""
        asked = {"layers": ["keep_layers"] if self.keep_layers is not None else [],
                 "heads": [k for k in ("heads_per_layer", "keep_ratio") if getattr(self, k) is not None],
                 "ffn": [k for k in ("ffn_neurons_per_layer", "keep_ratio") if getattr(self, k) is not None],
                 "2:4": ["semi_structured_2_4"] if self.semi_structured_2_4 else []}
        return {structure: keys for structure, keys in asked.items() if keys}

    def structural(self) -> bool:
        """Whether heads, neurons or layers are pruned (or 2:4 masks applied), not only the vocabulary."""
        return bool(self.structures())


class DistillConfig(_Strict):
    """Knowledge distillation from the original checkpoint into the (pruned) model (passes/distill/kd.py).

    Loss = alpha * KL(teacher_T || student_T) * T^2 + (1 - alpha) * CE, where CE is against the
    train split's labels, or the teacher's argmax for unlabelled text; plus hidden_weight * MSE
    of matched layers' hidden states. Trains on the train split (calibration data)."""

    epochs: float = Field(1.0, gt=0, le=1000)  # passes over the training text (ignored when steps is set)
    steps: Optional[int] = Field(None, ge=1)  # optimizer steps; when set, it replaces epochs
    train_examples: Optional[int] = Field(None, ge=1)  # first N of the train split (null = all)
    batch_size: int = Field(32, ge=1)  # per process under torchrun/accelerate launch (docs/distributed.md)
    lr: float = Field(1e-4, gt=0, le=1)
    weight_decay: float = Field(0.01, ge=0)
    warmup_ratio: float = Field(0.06, ge=0, lt=1)  # linear warm-up over this fraction, then linear decay
    temperature: float = Field(2.0, gt=0)
    alpha: float = Field(0.5, ge=0, le=1)  # weight of the soft (KL) term
    hidden_weight: float = Field(0.0, ge=0)  # weight of hidden-state MSE (0 = off)
    hidden_tokens: Literal["cls", "all"] = "cls"  # which token states the MSE compares
    max_length: Optional[int] = Field(None, ge=8, le=4096)  # training truncation; null = recipe max_length
    # Batches of texts of similar length (sorted within windows of 16 batches, the windows' batches
    # shuffled: passes/distill/data_parallel.py): less padding, ~2x cheaper steps on short text.
    length_grouped: bool = False
    # Early stopping on the selection (validation) split: evaluate every eval_every steps (null:
    # 4 evaluations over the run), keep the best weights, stop after `patience` evaluations
    # without improvement.
    eval_every: Optional[int] = Field(None, ge=1)
    eval_examples: Optional[int] = Field(None, ge=1)  # selection examples per evaluation (null = all)
    patience: int = Field(3, ge=1)
    checkpoint_every: int = Field(200, ge=1)  # steps between resume checkpoints
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto: a CUDA GPU when torch sees one
    # Wall-time cap on training and its evaluations: the pass times a few steps and one evaluation
    # first and trains min(steps or epochs, what fits) steps; its metrics give the count
    # (planned_steps), which as distill.steps reproduces the run. null = no cap.
    time_limit_s: Optional[float] = Field(None, gt=0)


class TensorRTConfig(_Strict):
    """Engine build settings of the tensorrt target (targets/tensorrt/builder.py). Unset shape
    bounds come from the data: batch 1 / eval.batch_size / eval.batch_size, sequence 2 (an empty
    text: [CLS] [SEP]) / the eval data's median token count / max_length."""

    min_batch: Optional[int] = Field(None, ge=1)
    opt_batch: Optional[int] = Field(None, ge=1)
    max_batch: Optional[int] = Field(None, ge=1)
    min_sequence: Optional[int] = Field(None, ge=1)
    opt_sequence: Optional[int] = Field(None, ge=1)
    max_sequence: Optional[int] = Field(None, ge=1, le=4096)
    # TensorRT's builder optimization level: 0 builds fastest, 5 searches the most kernels.
    builder_optimization_level: int = Field(3, ge=0, le=5)
    # Timing cache file kept across builds; null = <cache dir>/tensorrt/ (none with --no-cache).
    timing_cache: Optional[str] = None
    # TensorRT-RTX only: compute capabilities to build for ahead of time, e.g. ["8.6", "8.9"];
    # empty = the builder's portable default set.
    compute_capabilities: list[str] = []
    workspace_mb: Optional[int] = Field(None, ge=1)

    @model_validator(mode="after")
    def _ordered(self):
        for what in ("batch", "sequence"):
            values = [getattr(self, f"{k}_{what}") for k in ("min", "opt", "max")]
            given = [v for v in values if v is not None]
            if given != sorted(given):
                raise ValueError(f"need min_{what} <= opt_{what} <= max_{what}")
        return self


class OpenVINOConfig(_Strict):
    """The openvino-cpu target (targets/openvino_cpu): NNCF post-training INT8 of the OpenVINO IR,
    and how the OpenVINO CPU plugin compiles the model that is gated and shipped."""

    # Calibration examples (first N of the calibration split) NNCF collects statistics on
    # (nncf.quantize's subset_size; SmoothQuant uses the same subset).
    calibration_examples: int = Field(300, ge=1, le=100_000)
    # null = NNCF's default for ModelType.TRANSFORMER: mixed (symmetric int8 weights, asymmetric
    # activations); performance = symmetric activations too.
    preset: Optional[Literal["mixed", "performance"]] = None
    # SmoothQuant migration strength for MatMuls (NNCF default 0.95); -1 switches SmoothQuant off.
    smooth_quant_alpha: Optional[float] = Field(None, ge=-1, le=1)
    fast_bias_correction: bool = True
    # Accuracy control (nncf.quantize_with_accuracy_control): the INT8 model is scored on the
    # selection split against gates.max_drop / gates.drop_type, and while it is over budget the
    # quantized operations that cost most accuracy are reverted to float, one at a time.
    # false = plain nncf.quantize.
    accuracy_control: bool = True
    max_reverted_layers: Optional[int] = Field(None, ge=1)  # null = as many as needed
    ranking_examples: Optional[int] = Field(None, ge=1)  # validation items used to rank layers (null = NNCF's default)
    validation_batch_size: int = Field(8, ge=1)  # examples per validation item (length-sorted batches)
    # Inference precision of the CPU plugin for the operations left in float. f32 by default: on
    # CPUs with AMX or AVX512-BF16, OpenVINO would otherwise pick bf16 on its own.
    inference_precision: Literal["f32", "bf16", "f16"] = "f32"
    # Max |logit difference| between ONNX Runtime (FP32 ONNX) and the FP32 IR on the CPU plugin.
    parity_atol: float = Field(1e-3, gt=0)


class SensitivityConfig(_Strict):
    """Per-layer INT8 sensitivity (passes/quantize/sensitivity.py): each quantized node (or block)
    in turn is left in float while the rest stays INT8, scored against the FP32 ONNX graph."""

    # on_failure: only when the fallback needs a ranking; always: every run, for the report
    # (adds the fallback pass to the pipeline even with fallback.enabled false).
    run: Literal["on_failure", "always"] = "on_failure"
    examples: int = Field(256, ge=1)  # first N of the selection split
    granularity: Literal["node", "block"] = "node"  # one ONNX node, or every node of a transformer block
    max_seconds: float = Field(900, gt=0)  # layers not measured in time rank last


class FallbackConfig(_Strict):
    """Automatic float fallback (passes/quantize/fallback.py): when the INT8 build breaks
    gates.max_drop on the selection split, leave the most sensitive layers in float, one more at a
    time, until it passes; keep the best candidate found."""

    enabled: bool = False
    max_seconds: float = Field(600, gt=0)  # search time after the sensitivity ranking
    max_layers: int = Field(12, ge=1)  # most layers (nodes or blocks) left in float
    # Headroom kept under the budget on the selection split (a candidate counts as passing when its
    # drop <= max_drop - margin): the final gate judges another split, and a small validation split
    # is noisy (one example of 548 is 0.18 points).
    margin: float = Field(0.0, ge=0)


class Recipe(_Strict):
    name: str = "ptq"
    seed: int = Field(0, ge=0, lt=2 ** 32)  # numpy and torch seeds; torch refuses larger ones
    max_length: int = Field(128, ge=8, le=4096)
    export: ExportConfig = ExportConfig()
    optimize: OptimizeConfig = OptimizeConfig()
    quantize: QuantizeConfig = QuantizeConfig()
    gates: GateConfig = GateConfig()
    latency: LatencyConfig = LatencyConfig()
    eval: EvalConfig = EvalConfig()
    perplexity: PerplexityConfig = PerplexityConfig()  # causal-lm only
    # Optional torch passes that run before export, in this order: prune, then distill.
    prune: Optional[PruneConfig] = None
    distill: Optional[DistillConfig] = None
    sensitivity: SensitivityConfig = SensitivityConfig()
    fallback: FallbackConfig = FallbackConfig()
    # Engine build settings for the tensorrt target; null = derived from the data.
    tensorrt: Optional[TensorRTConfig] = None
    # NNCF quantization and CPU plugin settings for the openvino-cpu target.
    openvino: OpenVINOConfig = OpenVINOConfig()

    def with_overrides(self, **updates) -> "Recipe":
        """Apply CLI overrides given as dotted keys, e.g. {"gates.max_drop": 0.5}."""
        data = self.model_dump()
        for dotted, value in updates.items():
            if value is None:
                continue
            node = data
            *parents, leaf = dotted.split(".")
            for key in parents:
                if node.get(key) is None:  # an optional section the recipe leaves out, e.g. prune
                    node[key] = {}
                node = node[key]
            node[leaf] = value
        return _validate(data, "command-line overrides")


def _validate(data: dict, origin: str) -> Recipe:
    try:
        return Recipe.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        where = brief(".".join(str(p) for p in first["loc"]), 120) or "(top level)"
        if first["type"] == "extra_forbidden":
            raise InputError(f"recipe {origin}: unknown key '{where}'.",
                             "Check its spelling against recipes/ptq.yaml.") from None
        raise InputError(f"recipe {origin}: '{where}': {first['msg']} (got {brief_repr(first.get('input'))}).") from None


def validate_against_checkpoint(recipe: Recipe, ckpt) -> None:
    """Recipe settings that depend on the model (InputError before any heavy work)."""
    config = ckpt.config
    max_positions = config.get("max_position_embeddings")
    for key, length in (("prune.max_length", recipe.prune and recipe.prune.max_length),
                        ("distill.max_length", recipe.distill and recipe.distill.max_length)):
        if length and max_positions and length > max_positions:
            raise InputError(f"recipe {key} {length} exceeds the model's max_position_embeddings {max_positions}.",
                             f"Set {key} <= {max_positions}.")
    prune = recipe.prune
    if prune is None:
        return
    shape = ckpt.block_shape
    layers = shape["layers"]
    index_flag = ckpt.layer_index_dependence
    if prune.keep_layers is not None and index_flag:
        raise InputError(f"recipe prune.keep_layers: this {ckpt.model_type} model's layers depend on their index "
                         f"({index_flag}), so a layer's function changes when layers before it go.",
                         "Remove prune.keep_layers (FFN pruning still applies).")
    pruned = {int(k): v for k, v in (config.get("pruned_heads") or {}).items()}
    # Heads still present in the layer that has fewest (a checkpoint may come pruned already).
    heads = min((ckpt.num_attention_heads - len(pruned.get(i, [])) for i in range(layers)),
                default=ckpt.num_attention_heads)
    if prune.heads_per_layer is not None and prune.heads_per_layer > heads:
        raise InputError(f"recipe prune.heads_per_layer {prune.heads_per_layer} is more than the model's "
                         f"{heads} attention heads per layer.", f"Set prune.heads_per_layer between 1 and {heads}.")
    if prune.keep_layers is not None and layers and prune.keep_layers > layers:
        raise InputError(f"recipe prune.keep_layers {prune.keep_layers} is more than the model's {layers} layers.",
                         f"Set prune.keep_layers between 1 and {layers}.")
    ffn = shape["ffn"]
    if prune.ffn_neurons_per_layer is not None and ffn and prune.ffn_neurons_per_layer > int(ffn):
        raise InputError(f"recipe prune.ffn_neurons_per_layer {prune.ffn_neurons_per_layer} is more than the "
                         f"model's FFN size {ffn}.", f"Set prune.ffn_neurons_per_layer between 1 and {ffn}.")


def validate_training_data(recipe: Recipe, train_examples: int, train_is_eval_data: bool) -> None:
    """Distillation needs training text of its own: not the eval data, not empty."""
    if recipe.distill is None:
        return
    if train_is_eval_data:
        raise InputError("recipe distill needs training text, but there is no train split or --calib-data: "
                         "training on the eval data would make its accuracy meaningless.",
                         "Pass --calib-data FILE, or a split dir with train.jsonl.")
    if train_examples < 1:
        raise InputError("recipe distill has no training examples (the train split is empty).",
                         "Give a train split with examples.")
    if recipe.distill.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise InputError("recipe distill.device is cuda, but torch sees no CUDA GPU here.",
                             "Set distill.device to auto (GPU when present, else CPU) or cpu.")


def recipes_dir() -> Path:
    """The shipped recipes (package data of mcompress.recipes), wherever mcompress is installed."""
    from importlib.resources import files

    return Path(str(files("mcompress.recipes")))


# Limits of a recipe file (docs/limits.md). A recipe is a few hundred bytes of plain mappings;
# anchors and aliases are allowed, but the document they expand to is bounded, so a "billion
# laughs" file (aliases of aliases) is refused while it is composed, before anything walks it.
MAX_RECIPE_BYTES = 256 * 1024
MAX_YAML_DEPTH = 32  # mappings/sequences inside each other
MAX_YAML_ALIASES = 1_000
MAX_YAML_NODES = 10_000  # nodes of the document with every alias expanded (a full recipe has ~200)


class _YAMLLimit(Exception):
    pass


def _bounded_loader():
    """A yaml.SafeLoader subclass that enforces MAX_YAML_DEPTH, MAX_YAML_ALIASES and MAX_YAML_NODES
    as it composes the node graph (expanded sizes are counted once per node: aliases share nodes)."""
    import yaml

    class BoundedLoader(yaml.SafeLoader):
        def __init__(self, stream):
            super().__init__(stream)
            self._depth, self._aliases, self._expanded = 0, 0, {}

        def compose_node(self, parent, index):
            if self.check_event(yaml.AliasEvent):
                self._aliases += 1
                if self._aliases > MAX_YAML_ALIASES:
                    raise _YAMLLimit(f"more than {MAX_YAML_ALIASES} aliases")
            self._depth += 1
            if self._depth > MAX_YAML_DEPTH:
                raise _YAMLLimit(f"nested deeper than {MAX_YAML_DEPTH} levels")
            try:
                node = super().compose_node(parent, index)
            finally:
                self._depth -= 1
            if self._expanded_size(node) > MAX_YAML_NODES:
                raise _YAMLLimit(f"more than {MAX_YAML_NODES:,} values once its aliases are expanded")
            return node

        def _expanded_size(self, node) -> int:
            size = self._expanded.get(id(node))
            if size is None:
                children = node.value if isinstance(node, yaml.SequenceNode) else \
                    [n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode) else []
                size = 1 + sum(self._expanded.get(id(child), 1) for child in children)
                self._expanded[id(node)] = size
            return size

    return BoundedLoader


def read_yaml_mapping(path: Path, what: str, hint: str) -> dict:
    """A bounded YAML file (MAX_RECIPE_BYTES, _bounded_loader) that must hold a mapping; ``what``
    names it in the one-line errors (InputError), ``hint`` says what it should hold."""
    import yaml

    text = read_text_bounded(path, MAX_RECIPE_BYTES, what)
    try:
        data = yaml.load(text, Loader=_bounded_loader()) or {}
    except yaml.YAMLError as err:
        raise InputError(f"{what} {path} is not valid YAML: {str(err).splitlines()[0]}.") from None
    except _YAMLLimit as err:
        raise InputError(f"{what} {path} is refused: {err}.", "See docs/limits.md.") from None
    except (ValueError, OverflowError, RecursionError) as err:  # a value the constructor cannot build (a 5000-digit int, month 13)
        raise InputError(f"{what} {path} is not valid YAML: {brief(str(err).splitlines()[0] if str(err) else type(err).__name__, 200)}.") from None
    if not isinstance(data, dict):
        raise InputError(f"{what} {path} must be a YAML mapping of {hint}.")
    return data


def load_recipe(path: str | Path | None) -> Recipe:
    if path is None:
        path = recipes_dir() / "ptq.yaml"
    path = Path(path)
    if not path.is_file():
        raise InputError(f"recipe file {path} does not exist.", "Pass --recipe with a YAML file, e.g. recipes/ptq.yaml.")
    return _validate(read_yaml_mapping(path, "recipe", "keys to values"), str(path))
