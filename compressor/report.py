"""report.json (for machines and CI) and report.md (the summary a person reads first)."""

from __future__ import annotations

import hashlib
import json
import platform
from importlib import metadata
from pathlib import Path

REPORT_SCHEMA = 1
VERSIONED_PACKAGES = ("mcompress", "torch", "transformers", "tokenizers", "onnx", "onnxruntime", "numpy", "optimum")


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in VERSIONED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return versions


def machine_info() -> dict:
    import os

    info = {"machine": platform.machine(), "cores": os.cpu_count()}
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
        model = next((l.split(":", 1)[1].strip() for l in cpuinfo.splitlines() if l.startswith("model name")), None)
        flags = next((l.split(":", 1)[1].split() for l in cpuinfo.splitlines() if l.startswith("flags")), [])
        info["cpu"] = model
        info["isa"] = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8") if f in flags]
    except OSError:
        pass
    return info


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_report(report: dict, out_dir: Path) -> None:
    (out_dir / "report.json").write_text(json.dumps(report, indent=2, sort_keys=False) + "\n")
    (out_dir / "report.md").write_text(render_markdown(report))


def _mb(n: int | None) -> str:
    return "–" if n is None else f"{n / 1e6:.1f}"


def _acc(x: float | None) -> str:
    return "–" if x is None else f"{x:.4f}"


def _gflops(n: int | None) -> str:
    return "–" if n is None else f"{n / 1e9:.3g}"


def render_markdown(report: dict) -> str:
    verdict = "PASS" if report["passed"] else "FAIL"
    ref = report["reference"]
    lines = [
        f"# mcompress build: {verdict}",
        "",
        f"Target **{report['target']}**, recipe **{report['recipe']['name']}**, source `{report['source']['path']}` "
        f"(sha256 {report['source']['sha256'][:12]}…), eval data `{report['data']['eval']['source']}` "
        f"({report['data']['eval']['examples']} examples).",
        "",
        "## Gates",
        "",
        "| gate | value | budget | 95% CI | verdict | detail |",
        "|---|---|---|---|---|---|",
    ]
    for g in report["gates"]:
        ci = f"[{g['ci95'][0]:.2f}, {g['ci95'][1]:.2f}]" if g.get("ci95") else "–"
        op = "≤" if g["name"] in ("accuracy_drop", "latency_p50") else "≥"
        lines.append(f"| {g['name']} | {g['value']:.3f} {g['unit']} | {op} {g['threshold']} | {ci} | "
                     f"{'pass' if g['passed'] else '**FAIL**'} | {g['detail']} |")
    lines += ["", "## Passes", "", "| pass | wall s | size MB | accuracy | GFLOPs (seq 128) | notes |", "|---|---|---|---|---|---|",
              f"| original (PyTorch FP32) | – | {_mb(ref['size_bytes'])} | {_acc(ref['accuracy'])} | "
              f"{_gflops(ref.get('flops_seq128'))} | |"]
    for p in report["passes"]:
        notes = ", ".join(f"{k}={v}" for k, v in p["metrics"].items()
                          if k in ("fused_operators", "chosen", "parity_max_abs_diff", "skipped", "heads_per_layer",
                                   "ffn_size", "sparsity", "steps", "best_step", "selection_accuracy"))
        lines.append(f"| {p['name']} | {p['wall_s']:.1f} | {_mb(p['size_bytes'])} | {_acc(p.get('accuracy'))} | "
                     f"{_gflops(p.get('flops_seq128'))} | {notes} |")
    lines += ["", "## Latency (ms, same process)", "",
              "| batch | sequence | PyTorch FP32 p50 | p95 | build p50 | p95 | speedup (p50) |", "|---|---|---|---|---|---|---|"]
    for r, c in zip(report["latency"]["reference"], report["latency"]["build"]):
        lines.append(f"| {c['batch_size']} | {c['sequence_length']} | {r['p50_ms']:.2f} | {r['p95_ms']:.2f} | "
                     f"{c['p50_ms']:.2f} | {c['p95_ms']:.2f} | {r['p50_ms'] / c['p50_ms']:.2f}× |")
    art = report["artifact"]
    lines += ["", f"Build size {_mb(art['model_bytes'])} MB = {art['size_ratio']:.3f}× the FP32 checkpoint "
              f"({_mb(ref['size_bytes'])} MB). Quantization: {art.get('quantization', 'none')} on the {art.get('graph') or 'exported'} graph.", ""]
    return "\n".join(lines)
