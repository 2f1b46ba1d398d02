"""Figures of docs/causal-lm-quantization.md: perplexity, size and a rough decode rate of the decoder
quantization schemes on SmolLM2-135M (an Optimum export of the converted GGUF, with its KV cache).

    python benchmarks/lm_quant.py ONNX_DIR LEE_FILE OUT_JSON [--schemes ...] [--openvino]

Text: gensim's lee_background.cor (one news article a line). Held out: the last 60 articles
(``--held-out N``: the last N); GPTQ's
and AWQ's calibration: the first 8 articles, 256 tokens each (disjoint from the held-out ones).
Perplexity windowing: each held-out article is one window of its first 512 tokens (BOS added by
the tokenizer); every position 1..n-1 is scored; ppl = exp(sum nll / scored tokens), natural log.
Decode: greedy, batch 1, KV cache, 32 new tokens after the first 64 tokens of the first held-out
article, 2 threads, best of 2 runs after a warm-up — on a shared machine, a rough figure.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def perplexity(run_logits, documents: list[np.ndarray]) -> float:
    nll, tokens = 0.0, 0
    for ids in documents:
        logits = run_logits(ids[None, :])[0, :-1].astype(np.float64)
        top = logits.max(-1, keepdims=True)
        lse = np.log(np.exp(logits - top).sum(-1)) + top[:, 0]
        nll += float((lse - logits[np.arange(len(ids) - 1), ids[1:]]).sum())
        tokens += len(ids) - 1
    return float(np.exp(nll / tokens))


def onnx_figures(path: Path, documents, prompt) -> dict:
    from mcompress.core.formats import ONNX
    from mcompress.passes.quantize.decoder_graph import cpu_session, decode_tokens_per_second, prompt_feed

    session = cpu_session(path, 2)
    started = time.perf_counter()
    ppl = perplexity(lambda ids: session.run(["logits"], prompt_feed(session, ids))[0], documents)
    return {"perplexity": round(ppl, 3), "eval_s": round(time.perf_counter() - started, 1),
            "size_mb": round(ONNX.size(path) / 1e6, 1),
            "decode_tokens_per_s": round(decode_tokens_per_second(path, prompt, 32, 2, repeats=2), 1)}


def openvino_figures(xml: Path, documents, prompt) -> dict:
    import openvino as ov

    from mcompress.core.formats import OPENVINO_IR
    from mcompress.passes.quantize.nncf_weights import _prompt_feeds, openvino_decode_tokens_per_second

    compiled = ov.Core().compile_model(str(xml), "CPU", {"INFERENCE_NUM_THREADS": 2, "INFERENCE_PRECISION_HINT": "f32"})
    ppl = perplexity(lambda ids: compiled(_prompt_feeds(compiled, [ids[0]])[0])["logits"], documents)
    return {"perplexity": round(ppl, 3), "size_mb": round(OPENVINO_IR.size(xml) / 1e6, 1),
            "decode_tokens_per_s": round(openvino_decode_tokens_per_second(xml, prompt, 32, 2), 1)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("onnx_dir", type=Path)
    parser.add_argument("lee", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--schemes", nargs="*", default=["fp32", "int8-dynamic", "int8", "int4-rtn", "int4-hqq", "int4-gptq"])
    parser.add_argument("--block-size", type=int, default=32)
    parser.add_argument("--openvino", nargs="*", default=[])
    parser.add_argument("--held-out", type=int, default=60, help="last N articles scored")
    parser.add_argument("--embedding", default="int4", choices=["int4", "float"])
    parser.add_argument("--lm-head", default="quantize", choices=["quantize", "float"])
    args = parser.parse_args()
    from transformers import AutoTokenizer

    from mcompress.metrics.machine import other_processes_cpu
    from mcompress.passes.quantize.weight_only import WeightQuantSettings, calibration_feeds, quantize_decoder_weights
    from mcompress.targets.onnx_cpu.target import OnnxCpuTarget

    tokenizer = AutoTokenizer.from_pretrained(args.onnx_dir)
    articles = [line.strip() for line in args.lee.read_text().splitlines() if line.strip()]
    encode = lambda texts, n: [np.asarray(i[:n], dtype=np.int64) for i in tokenizer(texts)["input_ids"]]  # noqa: E731
    documents, calibration = encode(articles[-args.held_out:], 512), encode(articles[:8], 256)
    prompt = documents[0][None, :64]
    src = args.onnx_dir / "model.onnx"
    results = json.loads(args.out.read_text()) if args.out.is_file() else {}
    results["setup"] = {"held_out_articles": args.held_out, "scored_tokens": int(sum(len(d) - 1 for d in documents)),
                        "block_size": args.block_size}
    for scheme in args.schemes:
        label = f"onnx {scheme} b{args.block_size} embedding {args.embedding} lm_head {args.lm_head}"
        work = args.out.parent / label.replace(" ", "-")
        started = time.perf_counter()
        if scheme == "fp32":
            path, facts = src, {}
        else:
            path = work / "model.onnx"
            feeds = calibration_feeds(src, calibration) if scheme == "int4-gptq" else None
            facts = quantize_decoder_weights(src, path, scheme, WeightQuantSettings(block_size=args.block_size, embedding=args.embedding,
                                                                                 lm_head=args.lm_head),
                                             OnnxCpuTarget.capabilities, feeds)
        quantize_s = round(time.perf_counter() - started, 1)
        results[label] = {**onnx_figures(path, documents, prompt), "quantize_s": quantize_s, "facts": facts,
                          "other_cpu": other_processes_cpu()}
        print(label, results[label], flush=True)
        args.out.write_text(json.dumps(results, indent=1))
    for scheme in args.openvino:
        results[f"openvino {scheme}"] = _openvino_scheme(scheme, src, args, calibration, documents, prompt)
        print(scheme, results[f"openvino {scheme}"], flush=True)
        args.out.write_text(json.dumps(results, indent=1))


def _openvino_scheme(scheme: str, src: Path, args, calibration, documents, prompt) -> dict:
    import openvino as ov

    from mcompress.core.recipe import Recipe
    from mcompress.metrics.machine import other_processes_cpu
    from mcompress.passes.quantize.nncf_weights import _prompt_feeds, compress_decoder_weights

    fp32 = args.out.parent / "lm-quant-openvino-fp32" / "model.xml"
    if not fp32.is_file():
        fp32.parent.mkdir(parents=True, exist_ok=True)
        ov.save_model(ov.convert_model(str(src)), str(fp32), compress_to_fp16=False)
    started, facts, xml = time.perf_counter(), {}, fp32
    if scheme != "fp32":
        model = ov.Core().read_model(str(fp32))
        cfg = Recipe().with_overrides(**{"quantize.decoder.block_size": args.block_size}).quantize.decoder
        compressed, facts = compress_decoder_weights(model, scheme, cfg, _prompt_feeds(model, calibration))
        xml = args.out.parent / f"lm-quant-openvino-{scheme}" / "model.xml"
        xml.parent.mkdir(parents=True, exist_ok=True)
        ov.save_model(compressed, str(xml), compress_to_fp16=False)
    quantize_s = round(time.perf_counter() - started, 1)
    return {**openvino_figures(xml, documents, prompt), "quantize_s": quantize_s, "facts": facts,
            "other_cpu": other_processes_cpu()}


if __name__ == "__main__":
    main()
