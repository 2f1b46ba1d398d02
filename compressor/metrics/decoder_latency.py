"""Latency a decoder's users judge it by: prefill time, decode rate with the KV cache, peak memory.

For each model, one measurement is a greedy generation of ``new_tokens`` tokens (64) after a
``prompt_tokens``-token prompt (128 tokens of real text, the same ids for every model), at batch
1, through the generation loop the bundle runtime uses (compressor/engines/generation.py), with no
stop token, so every model does exactly the same amount of work:

- prefill ms: the wall time of the prompt's one call with an empty cache, up to its next-token
  logits;
- decode tokens/s: (new_tokens - 1) / the wall time of the decode steps, each one token fed with
  the cache grown by the previous steps (the first new token comes from the prefill);
- peak RSS: the process's resident-set high-water mark (Linux VmHWM) after the rounds, the
  interpreter and the runtime's libraries included.

Each model runs in its own process (metrics/isolated.py: spawned, so no runtime shares threads
with another, and RSS is the model's own), the rounds alternate between the models so that machine
noise hits all alike, and each figure is the median over the rounds after ``warmup`` untimed
generations. The original is PyTorch FP32 eager with its own KV cache (transformers'
DynamicCache), the build is its ONNX graph exported with the cache on ONNX Runtime.

Gates: ``gates.min_decode_speedup`` (build decode tokens/s over the original's) and
``gates.max_prefill_ms`` (the build's prefill).
"""

from __future__ import annotations

import resource
import sys
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from mcompress.metrics.gates import GateResult

PROMPT_TOKENS = 128
NEW_TOKENS = 64
ROUNDS = 5


@dataclass
class DecoderLatency:
    """One model's decoder figures (module docstring); ``raw_*``: every timed round."""

    name: str
    prefill_ms: float
    decode_tokens_per_s: float
    peak_rss_bytes: int
    prompt_tokens: int
    new_tokens: int
    rounds: int
    raw_prefill_ms: list[float] = field(default_factory=list, repr=False)
    raw_decode_tokens_per_s: list[float] = field(default_factory=list, repr=False)

    def as_dict(self) -> dict:
        return {"runtime": self.name, "prefill_ms": round(self.prefill_ms, 3),
                "decode_tokens_per_s": round(self.decode_tokens_per_s, 2),
                "peak_rss_mb": round(self.peak_rss_bytes / 2 ** 20, 1), "prompt_tokens": self.prompt_tokens,
                "new_tokens": self.new_tokens, "rounds": self.rounds}


def peak_rss_bytes() -> int:
    """This process's peak resident set: Linux's VmHWM (the high-water mark of this program's own
    memory map, which starts anew at exec), else ru_maxrss. On Linux ru_maxrss is not the child's
    own: it carries over the RSS of the parent it was forked from (a spawned timing process would
    report the parent's peak)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)  # KiB on Linux, bytes on macOS


class DecoderTimer:
    """A decoder (an engines.generation Stepper) timed where it lives (in its own process)."""

    input_names: list[str] = []  # IsolatedRunner's protocol; a decoder is timed by requests only

    def __init__(self, stepper, name: str):
        self.stepper, self.name = stepper, name

    def time_generation(self, prompt_ids: list[int], new_tokens: int) -> tuple[float, float]:
        """(prefill ms, decode tokens/s) of one greedy generation of ``new_tokens`` tokens."""
        from mcompress.engines.generation import Sampling, generate

        result = generate(self.stepper, prompt_ids, Sampling(max_new_tokens=new_tokens), frozenset(),
                          len(prompt_ids) + new_tokens + 1)
        steps = sum(result.step_s)
        return result.prefill_s * 1e3, (len(result.step_s) / steps if steps > 0 else float("inf"))

    def peak_rss_bytes(self) -> int:
        return peak_rss_bytes()


class TorchDecoder:
    """A transformers causal LM as a Stepper, on its own KV cache (eager, FP32)."""

    def __init__(self, model):
        self.model = model.eval()

    def _run(self, ids: list[int], cache):
        import torch

        with torch.inference_mode():
            out = self.model(input_ids=torch.tensor([ids], dtype=torch.long), past_key_values=cache, use_cache=True)
        return out.logits[0, -1].float().numpy(), out.past_key_values

    def prefill(self, ids):
        return self._run(ids, None)

    def step(self, token, position, cache):
        return self._run([token], cache)


def torch_decoder(checkpoint: Path, threads: int | None = None, name: str = "pytorch-fp32") -> DecoderTimer:
    """The FP32 PyTorch original (a picklable factory for IsolatedRunner)."""
    import torch
    from transformers import AutoModelForCausalLM

    if threads:
        torch.set_num_threads(threads)
    model = AutoModelForCausalLM.from_pretrained(str(checkpoint), dtype=torch.float32)
    return DecoderTimer(TorchDecoder(model), name)


def onnx_decoder(model_path: Path, threads: int | None = None, name: str = "onnxruntime-cpu",
                 kv_shape: tuple[int, int] | None = None) -> DecoderTimer:
    """An ONNX graph exported with its KV cache on ONNX Runtime (a picklable factory), built like
    the bundle runtime's session."""
    import onnxruntime as ort

    from mcompress.engines.generation import OnnxDecoder

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
    return DecoderTimer(OnnxDecoder(session, kv_shape, str(model_path)), name)


def prompt_ids(tokenizer, texts: list[str], length: int = PROMPT_TOKENS) -> list[int]:
    """``length`` token ids of real text (the texts joined by spaces, repeated if they are short),
    special tokens as the tokenizer adds them; ``tokenizer``: a transformers or tokenizers one."""
    if not texts or not any(t.strip() for t in texts):
        from mcompress.core.errors import InputError

        raise InputError("no text to make a prompt of for the decoder latency.", "Pass non-empty eval documents.")
    ids: list[int] = []
    joined = " ".join(t for t in texts if t.strip())
    while len(ids) < length:
        encoded = tokenizer.encode(joined)
        ids = list(encoded.ids if hasattr(encoded, "ids") else encoded)
        joined = joined + " " + joined
    return ids[:length]


def _call(runner, method: str, *args):
    """``runner.method(*args)``: in the runner's process for an IsolatedRunner, else here."""
    return runner.request(method, *args) if hasattr(runner, "request") else getattr(runner, method)(*args)


def race_decoders(runners: dict, prompt: list[int], new_tokens: int = NEW_TOKENS, rounds: int = ROUNDS,
                  warmup: int = 1, on_round=None) -> dict[str, DecoderLatency]:
    """Every runner (a DecoderTimer, or an IsolatedRunner of one) generating from ``prompt`` in
    ``rounds`` alternating rounds, after ``warmup`` untimed generations each: {name: DecoderLatency}."""
    for runner in runners.values():
        for _ in range(warmup):
            _call(runner, "time_generation", prompt, new_tokens)
    timed: dict[str, list[tuple[float, float]]] = {name: [] for name in runners}
    for _ in range(rounds):
        for name, runner in runners.items():
            timed[name].append(tuple(_call(runner, "time_generation", prompt, new_tokens)))
        if on_round:
            on_round(1)
    results = {}
    for name, runner in runners.items():
        prefill, rate = (list(column) for column in zip(*timed[name]))
        results[name] = DecoderLatency(getattr(runner, "name", name), float(np.median(prefill)), float(np.median(rate)),
                                       int(_call(runner, "peak_rss_bytes")), len(prompt), new_tokens, rounds,
                                       prefill, rate)
    return results


def decoder_gates(reference: DecoderLatency, build: DecoderLatency, min_decode_speedup: float | None,
                  max_prefill_ms: float | None) -> list[GateResult]:
    """``decode_speedup`` (build decode tokens/s over the original's) and ``prefill_ms``."""
    gates = []
    shape = f"batch 1, {build.prompt_tokens}-token prompt, {build.new_tokens} new tokens with the KV cache"
    if min_decode_speedup is not None:
        speedup = build.decode_tokens_per_s / reference.decode_tokens_per_s
        gates.append(GateResult("decode_speedup", speedup >= min_decode_speedup, speedup, min_decode_speedup, "x",
                                f"decode {build.decode_tokens_per_s:.1f} tok/s ({build.name}) / "
                                f"{reference.decode_tokens_per_s:.1f} tok/s ({reference.name}) at {shape}"))
    if max_prefill_ms is not None:
        gates.append(GateResult("prefill_ms", build.prefill_ms <= max_prefill_ms, build.prefill_ms, max_prefill_ms,
                                "ms", f"prefill of the {build.prompt_tokens}-token prompt ({build.name}), median of "
                                      f"{build.rounds} rounds"))
    return gates


def latency_table(figures: dict[str, dict]):
    """The report's section of ``{side: DecoderLatency.as_dict()}`` ("reference", "build")."""
    from mcompress.core.sections import Table

    reference, build = figures["reference"], figures["build"]

    def ratio(key: str, higher_is_better: bool) -> str:
        a, b = reference[key], build[key]
        return f"{(b / a if higher_is_better else a / b):.2f}x" if a and b else "-"

    rows = (("prefill ms", f"{reference['prefill_ms']:.1f}", f"{build['prefill_ms']:.1f}", ratio("prefill_ms", False)),
            ("decode tokens/s", f"{reference['decode_tokens_per_s']:.1f}", f"{build['decode_tokens_per_s']:.1f}",
             ratio("decode_tokens_per_s", True)),
            ("peak RSS MB", f"{reference['peak_rss_mb']:.0f}", f"{build['peak_rss_mb']:.0f}", ratio("peak_rss_mb", False)))
    note = (f"Batch 1, a {build['prompt_tokens']}-token prompt of eval text, {build['new_tokens']} greedy new tokens "
            f"with the KV cache; medians of {build['rounds']} alternating rounds, each model in its own process "
            "(peak RSS of that process, runtime libraries included; compressor/metrics/decoder_latency.py).",)
    return Table("Decoder latency", ("figure", reference["runtime"], build["runtime"], "speedup"), rows, note)


@contextmanager
def decoder_runners(factories: dict[str, tuple], isolation: str = "process") -> Iterator[dict]:
    """{name: decoder} from ``factories[name]`` = (callable, *args): each in its own process
    (IsolatedRunner) with ``isolation`` "process", else built here; closed on exit."""
    from mcompress.metrics.isolated import IsolatedRunner

    if isolation != "process":
        yield {name: factory(*args) for name, (factory, *args) in factories.items()}
        return
    with ExitStack() as stack:
        yield {name: stack.enter_context(IsolatedRunner(factory, *args, name=name))
               for name, (factory, *args) in factories.items()}


def measure_task_latency(request):
    """A causal LM's Task.task_latency (core.task.TaskLatencyRequest -> TaskLatency): the FP32
    PyTorch original and the build's ONNX graph, raced as the module docstring says, with the
    recipe's decoder gates."""
    import json

    from mcompress.core.task import TaskLatency
    from mcompress.engines.generation import kv_shape_of

    build = Path(request.build_model)
    config_path = build.parent / "config.json"
    kv_shape = kv_shape_of(json.loads(config_path.read_text())) if config_path.is_file() else None
    prompt = prompt_ids(request.tokenizer, request.texts)
    factories = {"reference": (torch_decoder, Path(request.checkpoint.path), request.threads),
                 "build": (onnx_decoder, build, request.threads, "onnxruntime-cpu", kv_shape)}
    with decoder_runners(factories, request.isolation) as runners:
        raced = race_decoders(runners, prompt)
    figures = {side: result.as_dict() for side, result in raced.items()}
    gates = decoder_gates(raced["reference"], raced["build"], request.gates.min_decode_speedup,
                          request.gates.max_prefill_ms)
    return TaskLatency({"decoder": {**figures, "isolation": request.isolation}}, gates, [latency_table(figures)])
