"""Edge-bundle benchmark: what a `.mcpkg` costs on a device that has only the runtime's dependencies.

Creates (once) a virtualenv with nothing but onnxruntime, tokenizers and numpy (versions from
constraints.txt) plus mcompress installed with --no-deps, then runs the bundle there in fresh
processes and measures:

- bundle size on disk;
- cold start: wall time from just before the process is spawned to the first prediction returned
  (interpreter start + imports + `mcompress.runtime.load` + one `predict` of one text), median of
  --repeats processes. The OS page cache is warm (the bundle and libraries were read before), so
  this is process-cold, not disk-cold;
- resident memory from /proc/self/status (psutil is not in that venv): VmRSS after load, after the
  first prediction and after predicting the whole split, and VmHWM (peak) at the end;
- agreement of the bundle's labels with the build's own predictions on the whole split, where the
  build's predictions are computed here, in the full environment, with ONNX Runtime on the build's
  model.onnx and transformers' AutoTokenizer from the build dir at the recipe's max_length
  (batched as `mcompress run` batched its eval data); plus the bundle's accuracy if the split has labels.

    python benchmarks/bench_bundle.py /tmp/sentiment.mcpkg examples/sentiment/splits/test.jsonl --build /tmp/b1

Without --build, the build's model and tokenizer files are taken from the (verified) bundle itself.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
WORK = REPO / "benchmarks" / "_work"
DEFAULT_VENV = WORK / "runtime-venv"
RUNTIME_PACKAGES = ("onnxruntime", "tokenizers", "numpy")
MARKER = ".mcompress-runtime-venv"
FORBIDDEN = ("torch", "transformers", "pydantic", "typer", "rich", "psutil", "onnx")

os.environ.setdefault("HF_HUB_OFFLINE", "1")

CHILD = r'''
import time
T_MAIN = time.monotonic_ns()
import json, sys


def status():
    fields = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                fields[key] = int(value.split()[0]) * 1024  # kB -> bytes
    return fields


args = json.loads(sys.argv[1])
import numpy, onnxruntime, tokenizers  # noqa: F401  (load() would import them; timed apart from it)
from mcompress.calibration.datasets import read_texts
from mcompress.runtime import load
T_IMPORT = time.monotonic_ns()
bundle = load(args["bundle"])
T_LOAD = time.monotonic_ns()
rss_load = status()["VmRSS"]
texts = read_texts(args["split"], args["text_column"])
T_READ = time.monotonic_ns()
first = bundle.predict(texts[:1])
T_FIRST = time.monotonic_ns()
rss_first = status()["VmRSS"]
out = {"t_main": T_MAIN, "t_import": T_IMPORT, "t_load": T_LOAD, "t_read": T_READ, "t_first": T_FIRST,
       "rss_after_load": rss_load, "rss_after_first": rss_first, "first": first,
       "heavy_modules": sorted(m for m in sys.modules if m.split(".")[0] in args["forbidden"])}
if args["full"]:
    started = time.perf_counter()
    results = bundle.predict(texts)
    out["full_s"] = time.perf_counter() - started
    out["labels"] = [r["label"] for r in results]
    out["n"] = len(texts)
out.update({"rss_end": status()["VmRSS"], "hwm_end": status()["VmHWM"]})
with open(args["result"], "w") as f:
    json.dump(out, f)
'''


def run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    if proc.returncode != 0:
        sys.exit(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def ensure_venv(venv: Path) -> Path:
    """A venv with only the runtime's dependencies, and mcompress itself installed with --no-deps."""
    python = venv / "bin" / "python"
    if (venv / MARKER).is_file() and python.exists():
        return python
    print(f"creating {venv} (onnxruntime, tokenizers, numpy; mcompress --no-deps)", file=sys.stderr)
    venv.parent.mkdir(parents=True, exist_ok=True)
    run([sys.executable, "-m", "venv", "--clear", str(venv)])
    pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    run(pip + ["-c", str(REPO / "constraints.txt"), *RUNTIME_PACKAGES])
    run(pip + ["--no-deps", "-e", str(REPO)])
    (venv / MARKER).write_text("runtime venv for benchmarks/bench_bundle.py\n")
    return python


def venv_packages(python: Path) -> dict[str, str]:
    proc = run([str(python), "-m", "pip", "list", "--format", "json", "--disable-pip-version-check"])
    return {p["name"]: p["version"] for p in json.loads(proc.stdout)}


def child_env() -> dict[str, str]:
    keep = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "OMP_NUM_THREADS")
    return {k: os.environ[k] for k in keep if k in os.environ}


def run_child(python: Path, bundle: Path, split: Path, text_column: str, full: bool, work: Path, i: int) -> dict:
    result = work / f"child-{i}.json"
    args = {"bundle": str(bundle), "split": str(split), "text_column": text_column, "full": full,
            "result": str(result), "forbidden": list(FORBIDDEN)}
    t0 = time.monotonic_ns()
    proc = subprocess.run([str(python), "-c", CHILD, json.dumps(args)], capture_output=True, text=True,
                          env=child_env(), cwd=work)
    if proc.returncode != 0:
        sys.exit(f"bundle process failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    out = json.loads(result.read_text())
    ms = lambda a, b: (b - a) / 1e6
    out["cold_start_ms"] = ms(t0, out["t_first"]) - ms(out["t_load"], out["t_read"])  # reading the split is not start-up
    out["breakdown_ms"] = {"interpreter": ms(t0, out["t_main"]), "imports": ms(out["t_main"], out["t_import"]),
                           "load": ms(out["t_import"], out["t_load"]), "first_prediction": ms(out["t_read"], out["t_first"])}
    return out


def build_predictions(bundle: Path, build: Path | None, texts: list[str], work: Path) -> tuple[list[str], dict]:
    """The build's labels for ``texts``: ONNX Runtime on model.onnx + transformers' tokenizer."""
    from transformers import AutoTokenizer

    from mcompress.metrics.evaluation import predict_logits
    from mcompress.runtime import read_bundle
    from mcompress.engines.onnxruntime_cpu import OrtRunner

    manifest, members = read_bundle(bundle)
    if build is None:  # take the build's files from the bundle
        build = work / "build-from-bundle"
        build.mkdir(exist_ok=True)
        for name, data in members.items():
            (build / name).write_bytes(data)
        source = "the bundle's own model.onnx and tokenizer files"
        id2label = json.loads(members["labels.json"])
    else:
        if (build / "model.onnx").read_bytes() != members["model.onnx"]:
            sys.exit(f"{build}/model.onnx is not the model in {bundle}")
        source = str(build)
        id2label = json.loads((build / "config.json").read_text())["id2label"]
    max_length = manifest["max_sequence_length"]
    tokenizer = AutoTokenizer.from_pretrained(build)
    logits = predict_logits(OrtRunner(build / "model.onnx"), tokenizer, texts, max_length, 32)
    return [id2label[str(i)] for i in logits.argmax(-1)], {"source": source, "max_length": max_length}


def markdown(r: dict) -> str:
    cold = r["cold_start_ms"]
    mem = r["memory_mb"]
    rows = [
        ("bundle size", f"{r['bundle_mb']:.2f} MB"),
        ("cold start (spawn → first prediction), median of "
         f"{len(cold['runs'])}", f"{cold['median']:.0f} ms (min {cold['min']:.0f}, max {cold['max']:.0f})"),
        ("  of which interpreter / imports (numpy, onnxruntime, tokenizers, mcompress.runtime) / load (verify + session + tokenizer) / first predict",
         " / ".join(f"{cold['breakdown_median'][k]:.0f}" for k in ("interpreter", "imports", "load", "first_prediction")) + " ms"),
        ("RSS after load / after first prediction", f"{mem['after_load']:.0f} / {mem['after_first']:.0f} MiB"),
        ("RSS after the whole split / peak (VmHWM)", f"{mem['end']:.0f} / {mem['peak']:.0f} MiB"),
        ("agreement with the build's predictions", f"{r['agreement']:.4%} ({r['agreeing']}/{r['examples']} examples)"),
    ]
    if r.get("bundle_accuracy") is not None:
        rows.append(("bundle accuracy / build accuracy in the manifest",
                     f"{r['bundle_accuracy']:.4f} / {r['manifest_build_accuracy']:.4f}"))
    rows.append(("whole split, batch 32", f"{r['throughput']['seconds']:.2f} s ({r['throughput']['texts_per_s']:.0f} texts/s)"))
    rows.append(("runtime venv packages", ", ".join(f"{k} {v}" for k, v in sorted(r["venv_packages"].items()))))
    return "\n".join(["| measure | value |", "|---|---|"] + [f"| {a} | {b} |" for a, b in rows]) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("split", type=Path, help="JSONL test split ({text, label} per line)")
    parser.add_argument("--build", type=Path, help="the build dir the bundle was packaged from")
    parser.add_argument("--text-column", default="text")
    parser.add_argument("--label-column", default="label")
    parser.add_argument("--repeats", type=int, default=5, help="cold-start processes (one more predicts the whole split)")
    parser.add_argument("--venv", type=Path, default=DEFAULT_VENV)
    parser.add_argument("--out", type=Path, help="JSON results (default benchmarks/_work/bench_bundle-<bundle>.json)")
    args = parser.parse_args()

    from mcompress.calibration.datasets import read_texts

    bundle, split = args.bundle.resolve(), args.split.resolve()
    texts = read_texts(split, args.text_column)
    rows = [json.loads(l) for l in split.read_text(encoding="utf-8").split("\n") if l.strip()]
    gold = [r.get(args.label_column) for r in rows]
    python = ensure_venv(args.venv.resolve())
    packages = venv_packages(python)
    present = sorted(p for p in packages if p.lower() in FORBIDDEN)
    if present:
        sys.exit(f"the runtime venv {args.venv} has {', '.join(present)}; delete it and rerun")

    WORK.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bench-bundle-", dir=WORK) as tmp:
        work = Path(tmp)
        build_labels, build_info = build_predictions(bundle, args.build.resolve() if args.build else None, texts, work)
        runs = [run_child(python, bundle, split, args.text_column, False, work, i) for i in range(args.repeats)]
        full = run_child(python, bundle, split, args.text_column, True, work, args.repeats)
    runs.append(full)

    agreeing = sum(a == b for a, b in zip(full["labels"], build_labels))
    manifest = json.loads(subprocess.run([sys.executable, "-m", "mcompress.cli", "inspect", "--json", str(bundle)],
                                         capture_output=True, text=True, check=True).stdout)
    cold = [r["cold_start_ms"] for r in runs]
    mb = lambda b: b / 2 ** 20
    result = {
        "bundle": str(bundle), "bundle_bytes": bundle.stat().st_size, "bundle_mb": bundle.stat().st_size / 1e6,
        "split": str(split), "examples": len(texts), "build_predictions": build_info,
        "cold_start_ms": {"runs": [round(c, 1) for c in cold], "median": statistics.median(cold), "min": min(cold),
                          "max": max(cold),
                          "breakdown_median": {k: statistics.median(r["breakdown_ms"][k] for r in runs)
                                               for k in runs[0]["breakdown_ms"]},
                          "note": "process-cold, page cache warm; excludes reading the split file"},
        "memory_mb": {"after_load": statistics.median(mb(r["rss_after_load"]) for r in runs),
                      "after_first": statistics.median(mb(r["rss_after_first"]) for r in runs),
                      "end": mb(full["rss_end"]), "peak": mb(full["hwm_end"]), "unit": "MiB (2^20 bytes)"},
        "agreement": agreeing / len(texts), "agreeing": agreeing,
        "disagreements": [i for i, (a, b) in enumerate(zip(full["labels"], build_labels)) if a != b],
        "throughput": {"seconds": full["full_s"], "texts_per_s": len(texts) / full["full_s"], "batch_size": 32},
        "bundle_accuracy": (sum(p == g for p, g in zip(full["labels"], gold)) / len(gold)) if all(g is not None for g in gold) else None,
        "manifest_build_accuracy": manifest["metrics"]["build_accuracy"],
        "heavy_modules_in_runtime": full["heavy_modules"],
        "venv_packages": {k: v for k, v in packages.items() if k not in ("pip", "setuptools", "wheel")},
        "cores": os.cpu_count(),
    }
    out = args.out or WORK / f"bench_bundle-{bundle.stem}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(markdown(result))
    print(f"results: {out}")


if __name__ == "__main__":
    main()
