"""CPU benchmark: PyTorch FP32 eager vs Optimum dynamic INT8 vs mcompress onnx-cpu and openvino-cpu, in ONE run.

For one example checkpoint (written by `mcompress example`), on its full test split:
the task's metric (accuracy; entity-level F1 for the ner tagger) as deployed — each text alone
(batch 1) and in length-bucketed batches of 32 —, p50/p95 latency at batch 1 and 8 at sequence 128
and at the test texts' median token length, model file size, and mcompress's own pipeline wall time.
`--target cpu` (mcompress's default) builds the CPU choice and measures the build it kept. Latency: each model is timed alone, in a fresh process of its own with its
runtime's default settings (no OMP_WAIT_POLICY or other tuning that would slow another runtime),
in alternating rounds (every model once per round, the order reversed every other round), so a
burst of machine noise hits every model alike and no runtime's spinning threads take the cores of
another; other processes' CPU use is sampled and recorded, since a busy core skews PyTorch far
more than ONNX Runtime.

    python benchmarks/bench_cpu.py examples/sentiment --out benchmarks/results/sentiment.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# No OMP_WAIT_POLICY here: process-wide PASSIVE made PyTorch FP32 itself 1.75x slower at batch 1
# (FINDINGS.md) and inflated every speedup over it. Timing each model in its own process keeps
# PyTorch's spinning threads away from the other runtimes without slowing PyTorch.


def _runner(spec: dict, threads: int):
    """The runner a timing process builds: {"kind": "torch", "model_dir"} | {"kind": "ort", "model"}
    | {"kind": "target", "target", "model", "recipe"}."""
    if spec["kind"] == "torch":
        from mcompress.core.checkpoint import inspect_checkpoint, load_model_and_tokenizer
        from mcompress.metrics.evaluation import TorchRunner

        model, _ = load_model_and_tokenizer(inspect_checkpoint(Path(spec["model_dir"])))
        return TorchRunner(model, threads)
    if spec["kind"] == "ort":
        from mcompress.engines.onnxruntime_cpu import OrtRunner

        return OrtRunner(Path(spec["model"]), threads)
    from mcompress.core.recipe import Recipe
    from mcompress.targets import get_target

    target = get_target(spec["target"])  # the build's recipe, as its report holds it (a CPU choice's variant)
    return target.runner(Path(spec["model"]), threads, target.settings(Recipe.model_validate(spec["recipe"])))


def _recipe_targets(spec: str, targets: list[str]) -> list[tuple[Path | None, str]]:
    """The (recipe, target) builds of one --recipe value: RECIPE@TARGET is that one build; RECIPE alone is
    built for every --target. Recipe None ("default"): no --recipe, as a user runs `mcompress run MODEL_DIR`."""
    recipe, _, target = spec.partition("@")
    path = None if recipe == "default" else Path(recipe)
    return [(path, target)] if target else [(path, t) for t in targets]


def time_one(job: dict) -> dict:
    """In a fresh process: one model's raw call times at batch 1 and 8, sequence 128."""
    from transformers import AutoTokenizer

    from mcompress.metrics.evaluation import latency_inputs, measure_latency

    runner = _runner(job["spec"], job["threads"])
    tokenizer = AutoTokenizer.from_pretrained(job["tokenizer"], local_files_only=True)
    return {shape: measure_latency(runner, latency_inputs(tokenizer, job["texts"], *map(int, shape.split("x"))),
                                   job["warmup"], calls).raw_ms
            for shape, calls in job["calls"].items()}  # "BATCHxSEQ": a JSON key


def time_alone(specs: dict[str, dict], tokenizer_dir: Path, texts: list[str], threads: int, rounds: int,
               per_round: int, sequences: tuple[int, ...] = (128,)) -> dict[str, dict[str, dict]]:
    """Each model timed in its own process, alternating rounds; {"BATCHxSEQ": {name: p50/p95/calls}}. A spec's
    "tokenizer" (a build's own, e.g. a pruned vocabulary's) replaces tokenizer_dir for that model."""
    import subprocess

    import numpy as np

    calls = {f"{b}x{s}": n for s in sequences for b, n in ((1, per_round), (8, max(3, per_round // 4)))}
    times = {b: {name: [] for name in specs} for b in calls}
    names = list(specs)
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            job = {"spec": specs[name], "threads": threads, "tokenizer": specs[name].get("tokenizer", str(tokenizer_dir)),
                   "texts": texts[:64],
                   "warmup": 5, "calls": calls}
            out = subprocess.run([sys.executable, __file__, "--time-one", json.dumps(job)], capture_output=True,
                                 text=True, check=True, env={**os.environ}).stdout
            for shape, raw in json.loads(out.strip().splitlines()[-1]).items():
                times[shape][name] += raw
    return {b: {name: {"p50_ms": float(np.percentile(t, 50)), "p95_ms": float(np.percentile(t, 95)), "calls": len(t)}
                for name, t in per_model.items()} for b, per_model in times.items()}


def optimum_dynamic_int8(model_dir: Path, work: Path, optimum_model: str = "ORTModelForSequenceClassification") -> Path:
    """Optimum's recipe, as `optimum-cli onnxruntime quantize --avx512_vnni|--avx2 -o DIR` runs it."""
    import optimum.onnxruntime
    from optimum.onnxruntime import ORTQuantizer
    from optimum.onnxruntime.configuration import AutoQuantizationConfig

    from mcompress.metrics.machine import machine_info

    exported = work / "optimum-fp32"
    getattr(optimum.onnxruntime, optimum_model).from_pretrained(model_dir, export=True).save_pretrained(exported)
    isa = machine_info().get("isa", [])
    preset = AutoQuantizationConfig.avx512_vnni if "avx512_vnni" in isa else AutoQuantizationConfig.avx2
    qconfig = preset(is_static=False, per_channel=False)  # the CLI's defaults
    out = work / "optimum-int8"
    ORTQuantizer.from_pretrained(exported).quantize(save_dir=out, quantization_config=qconfig)
    return next(out.glob("*quantized*.onnx")), preset.__name__


def main() -> int:
    if len(sys.argv) == 3 and sys.argv[1] == "--time-one":
        print(json.dumps(time_one(json.loads(sys.argv[2]))))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("example_dir", type=Path)
    parser.add_argument("--recipe", action="append", default=None,
                        help="mcompress recipe(s) to build; 'default' (the default) gives none, as `mcompress run "
                             "MODEL_DIR` runs: ptq, plus prune + distill when the CPU choice's --time-budget allows; "
                             "RECIPE@TARGET builds that recipe for that target only, instead of for every --target")
    parser.add_argument("--target", action="append", default=None,
                        help="mcompress target(s) to build (default: cpu, mcompress's default: the CPU choice)")
    parser.add_argument("--out", type=Path, default=None, help="write results JSON here")
    parser.add_argument("--builds", type=Path, default=None,
                        help="keep each recipe's build in DIR/build-<recipe>; with --reuse-builds, a build already "
                             "there is measured again instead of rebuilt (its wall time comes from its report)")
    parser.add_argument("--reuse-builds", action="store_true")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds: every model once per round")
    parser.add_argument("--per-round", type=int, default=20, help="timed calls per model per round at batch 1 (a quarter at 8)")
    args = parser.parse_args()

    import numpy as np
    import torch
    from transformers import AutoTokenizer

    from mcompress.core.checkpoint import inspect_checkpoint, load_model_and_tokenizer
    from mcompress.metrics.evaluation import TorchRunner
    from mcompress.tasks import evaluate
    from mcompress.core.errors import GateFailure
    from mcompress.pipeline.job import RunRequest, run
    from mcompress.core.recipe import Recipe
    from mcompress.metrics.machine import library_versions, machine_info, other_processes_cpu
    from mcompress.targets import get_target
    from mcompress.engines.onnxruntime_cpu import OrtRunner
    from mcompress.core.task import get_task

    threads = os.cpu_count()
    torch.set_num_threads(threads)
    ckpt = inspect_checkpoint(args.example_dir)
    model, tokenizer = load_model_and_tokenizer(ckpt)
    test = get_task(ckpt.task).load_data(args.example_dir / "splits", ckpt.label2id, None, None, split="test")
    # None ("--recipe default"): no --recipe, as a user runs `mcompress run MODEL_DIR`
    targets = args.target or ["cpu"]
    builds = [pair for spec in (args.recipe or ["default"]) for pair in _recipe_targets(spec, targets)]
    fp32_bytes = ckpt.weights_file.stat().st_size

    with tempfile.TemporaryDirectory(prefix="mcompress-bench-") as tmp:
        work = Path(tmp)
        load_before = other_processes_cpu()
        build_loads = {}  # other processes' CPU % sampled right after each build
        started = time.perf_counter()
        optimum_model, optimum_preset = optimum_dynamic_int8(args.example_dir, work, get_task(ckpt.task).optimum_model)
        optimum_wall = time.perf_counter() - started
        runners = {"PyTorch FP32 eager": TorchRunner(model, threads)}
        tokenizers = {}  # a build's own tokenizer, by runner name; the checkpoint's for the others
        specs = {"PyTorch FP32 eager": {"kind": "torch", "model_dir": str(args.example_dir.resolve())}}
        rows = {"PyTorch FP32 eager": {"bytes": fp32_bytes, "wall_s": None}}
        runners[f"Optimum dynamic INT8 ({optimum_preset})"] = OrtRunner(optimum_model, threads)
        specs[f"Optimum dynamic INT8 ({optimum_preset})"] = {"kind": "ort", "model": str(optimum_model)}
        rows[f"Optimum dynamic INT8 ({optimum_preset})"] = {"bytes": optimum_model.stat().st_size, "wall_s": round(optimum_wall, 1)}
        for recipe, target_name in builds:
            stem = recipe.stem if recipe else "default"
            out = (args.builds or work) / f"build-{stem}-{target_name}"
            if args.reuse_builds and (out / "report.json").is_file():
                report = json.loads((out / "report.json").read_text())
                wall = report["wall_s"]  # the build's own run, which may have had other load
                build_loads[f"{stem}-{target_name}"] = "reused: see its first run"
            else:
                started = time.perf_counter()
                # no pass cache: "build wall s" is the time of a build from scratch
                try:
                    run(RunRequest(args.example_dir, target_name, out, recipe, overrides={"eval.evaluate_each_pass": False},
                                   use_cache=False, force=True))
                except GateFailure:
                    pass  # the build and its report are written; the table shows the verdict
                wall = round(time.perf_counter() - started, 1)
                build_loads[f"{stem}-{target_name}"] = round(other_processes_cpu(), 1)
                report = json.loads((out / "report.json").read_text())
            art = report["artifact"]
            built = report["target"]  # a CPU choice's kept target
            kept = f" → {report['cpu_auto']['chosen']}" if report.get("cpu_auto") else ""
            detail = (f"{art['quantization']}, {len(art.get('float_layers') or [])} ops reverted to float"
                      if built == "openvino-cpu" else f"{art['quantization']}/{art['graph']}")
            name = f"mcompress {target_name + kept if kept else built} ({report['recipe']['name']}: {detail})"
            if name in runners:  # two builds of one recipe (e.g. a tune's kept build): tell them apart by build dir
                name = f"{name} [build-{stem}]"
            target = get_target(built)
            runners[name] = target.runner(out / art["model_file"], threads,
                                          target.settings(Recipe.model_validate(report["recipe"])))
            # the build's own tokenizer: a pruned vocabulary has its own word-piece ids
            specs[name] = {"kind": "target", "target": built, "model": str((out / art["model_file"]).resolve()),
                           "recipe": report["recipe"], "tokenizer": str(out.resolve())}
            tokenizers[name] = AutoTokenizer.from_pretrained(out, local_files_only=True)
            rows[name] = {"bytes": art["model_bytes"], "wall_s": wall, "runtime": runners[name].name,
                          "gflops_seq128": report["passes"][-1]["flops_seq128"] / 1e9, "gate_passed": report["passed"]}
            rows["PyTorch FP32 eager"]["gflops_seq128"] = report["reference"]["flops_seq128"] / 1e9
            if args.out:  # keep each build's report next to the results
                args.out.parent.mkdir(parents=True, exist_ok=True)
                suffix = "" if target_name == "onnx-cpu" else f"-{target_name}"
                (args.out.parent / f"{args.out.stem}-{stem}{suffix}.report.json").write_text(json.dumps(report, indent=2) + "\n")
        rows[f"Optimum dynamic INT8 ({optimum_preset})"]["gflops_seq128"] = rows["PyTorch FP32 eager"].get("gflops_seq128")

        for name, runner in runners.items():  # as deployed: each text alone, and length-bucketed batches of 32
            alone, batched = (evaluate(runner, tokenizers.get(name, tokenizer), test, 128, b) for b in (1, 32))
            rows[name].update(accuracy=alone.accuracy, score=alone.score, score_batched=batched.score,
                              accuracy_batched=batched.accuracy)  # accuracy of texts; of words' tags for a tagger
            metric = alone.metric  # the gated metric: accuracy, or entity F1
            if alone.metric == "entity_f1":
                rows[name]["per_entity_f1"] = {t: round(v["f1"], 4) for t, v in alone.details["per_type"].items()}
        del runners  # accuracy is done; latency is timed in a process per model, with nothing else loaded
        real_length = int(np.median([len(tokenizer(t, truncation=True, max_length=128)["input_ids"]) for t in test.texts]))
        latency = time_alone(specs, args.example_dir, test.texts, threads, args.rounds, args.per_round, (128, real_length))
        load_after = other_processes_cpu()

    base, peer = rows["PyTorch FP32 eager"], rows[f"Optimum dynamic INT8 ({optimum_preset})"]
    shapes = [f"{b}x{n}" for n in (128, real_length) for b in (1, 8)]
    for name, row in rows.items():
        for shape in shapes:
            row[f"p50_ms_{shape}"], row[f"p95_ms_{shape}"] = (latency[shape][name][q] for q in ("p50_ms", "p95_ms"))
    metric_title = {"accuracy": "accuracy", "entity_f1": "entity F1"}[metric]
    table = [f"| model | {metric_title}, each text alone | batches of 32 | drop (points) | "
             + " | ".join(f"b{s.split('x')[0]}/s{s.split('x')[1]} p50 ms (vs FP32, vs Optimum)" for s in shapes)
             + " | MB | size vs FP32 | GFLOPs s128 | build wall s |",
             "|---" * (8 + len(shapes)) + "|"]
    for name, row in rows.items():
        cells = [f"{row[f'p50_ms_{s}']:.2f} ({row[f'p50_ms_{s}'] / base[f'p50_ms_{s}']:.2f}, "
                 f"{row[f'p50_ms_{s}'] / peer[f'p50_ms_{s}']:.2f})" for s in shapes]
        table.append(f"| {name} | {row['score']:.4f} | {row['score_batched']:.4f} | {(base['score'] - row['score']) * 100:+.2f} | "
                     + " | ".join(cells) + f" | {row['bytes'] / 1e6:.1f} | {row['bytes'] / fp32_bytes:.3f} | "
                     f"{row['gflops_seq128']:.2f} | "
                     f"{row['wall_s'] if row['wall_s'] is not None else '–'}{'' if row.get('gate_passed', True) else ' (gate FAILED)'} |")
    result = {"example": str(args.example_dir), "metric": metric, "test_examples": len(test), "sequence_lengths": [128, real_length],
              "threads": threads, "accuracy": "score: each text alone (batch 1); score_batched: length-bucketed batches of 32",
              "timing": "each model alone in its own process, runtime defaults, alternating rounds",
              "other_processes_cpu_percent": {"before": load_before, "after": load_after, "after_each_build": build_loads},
              "machine": machine_info(), "versions": library_versions(), "rows": rows}
    print("\n".join(table))
    print(f"\n{len(test)} test examples; other processes' CPU: {load_before}% before, {load_after}% after (100% = one core)")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        args.out.with_suffix(".md").write_text("\n".join(table) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
