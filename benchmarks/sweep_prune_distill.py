"""Sweep prune + distill settings: the torch half of a recipe, scored on validation and test.

Runs the real ``prune`` and ``distill`` passes of mcompress for each variant (dotted recipe
overrides on top of a base recipe) and reports the student's PyTorch FP32 accuracy, parameter
count and FLOPs at sequence 128. Export and INT8 are left out: they cost the same for every
variant and move accuracy by a few tenths (RESULTS.md), so this chooses the architecture and the
training budget; the chosen recipe is then measured end to end by bench_cpu.py. Distillation
runs on a CUDA GPU when torch sees one (``distill.device: auto``), else on the CPU.

    python benchmarks/sweep_prune_distill.py examples/sentiment --recipe recipes/prune-distill-int8.yaml \\
        --variant '{"prune.keep_layers": 4}' --variant '{"distill.epochs": 3}' --out sweep.json
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("--recipe", type=Path, required=True)
    parser.add_argument("--variant", action="append", default=[], help="JSON object of dotted recipe overrides")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    import torch

    from mcompress.calibration.datasets import load_labelled_texts
    from mcompress.core.checkpoint import inspect_checkpoint, load_model_and_tokenizer
    from mcompress.metrics.evaluation import TorchRunner
    from mcompress.tasks import evaluate
    from mcompress.metrics.flops import encoder_flops, parameter_count
    from mcompress.core.pass_base import PassContext
    from mcompress.passes.distill.kd import Distill
    from mcompress.passes.prune.structured import PruneStructured
    from mcompress.core.recipe import load_recipe
    from mcompress.core.state import ModelKind, ModelState
    from mcompress.targets import get_target

    ckpt = inspect_checkpoint(args.model_dir)
    splits = args.model_dir / "splits"
    load = lambda split: load_labelled_texts(splits, ckpt.label2id, "text", "label", split, True)
    train, validation, test = load("train"), load("validation"), load("test")
    base = load_recipe(args.recipe)
    model, tokenizer = load_model_and_tokenizer(ckpt)
    device = "cuda" if torch.cuda.is_available() else "cpu"

    def accuracy(m, data) -> float:
        return evaluate(TorchRunner(m.to(device)), tokenizer, data, base.max_length, 128).accuracy

    teacher = {"validation": accuracy(model, validation), "test": accuracy(model, test),
               "params": parameter_count(model), "flops_seq128": encoder_flops(model.cpu(), 128)}
    print(f"teacher: validation {teacher['validation']:.4f} test {teacher['test']:.4f}", flush=True)
    results = {"model_dir": str(args.model_dir), "recipe": str(args.recipe), "device": device,
               "gpu": torch.cuda.get_device_name(0) if device == "cuda" else None,
               "teacher": teacher, "variants": []}
    for variant in [json.loads(v) for v in args.variant] or [{}]:
        recipe = base.with_overrides(**variant)
        started = time.perf_counter()
        with tempfile.TemporaryDirectory() as work:
            ctx = PassContext(recipe, get_target("onnx-cpu"), Path(work), train, validation, teacher["validation"])
            state = ModelState(ModelKind.TORCH, ckpt, tokenizer, torch_model=model.cpu())
            pruned = PruneStructured().call(state, ctx)
            distilled = Distill().call(pruned.state, ctx)
        student = distilled.state.torch_model
        row = {"overrides": variant, "layers": pruned.metrics["layers"], "heads_per_layer": pruned.metrics["heads_per_layer"],
               "ffn_size": pruned.metrics["ffn_size"], "kept_layers": pruned.metrics["kept_layers"],
               "params": parameter_count(student), "flops_seq128": encoder_flops(student.cpu(), 128),
               "validation": accuracy(student, validation), "test": accuracy(student, test),
               "distill_steps": distilled.metrics["steps"], "best_step": distilled.metrics["best_step"],
               "wall_s": round(time.perf_counter() - started, 1)}
        row["test_drop_points"] = round(100 * (teacher["test"] - row["test"]), 2)
        results["variants"].append(row)
        print(json.dumps(row), flush=True)
        if args.out:
            args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
