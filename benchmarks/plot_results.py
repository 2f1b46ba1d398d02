"""Accuracy (entity F1 for a tagger) against batch-1 latency for every model in the benchmark
results, one panel per example.

    python benchmarks/plot_results.py benchmarks/results/sentiment.json benchmarks/results/topics.json \
        --out benchmarks/accuracy_vs_latency.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, nargs="+")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/accuracy_vs_latency.png"))
    args = parser.parse_args()

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(args.results), figsize=(6.5 * len(args.results), 4.8), squeeze=False)
    for ax, path in zip(axes[0], args.results):
        result = json.loads(path.read_text())
        metric = result.get("metric", "accuracy")
        score = lambda row: row.get("score", row["accuracy"]) * 100  # the gated metric
        for name, row in result["rows"].items():
            marker = "o" if name.startswith("mcompress") else "s"
            ax.scatter(row["b1_p50_ms"], score(row), marker=marker, s=60)
            ax.annotate(name.replace("mcompress onnx-cpu ", "mcompress ").replace(" (avx512_vnni)", ""),
                        (row["b1_p50_ms"], score(row)), textcoords="offset points", xytext=(6, 4), fontsize=8)
        fp32 = score(result["rows"]["PyTorch FP32 eager"])
        ax.axhline(fp32 - 1.0, color="grey", linestyle="--", linewidth=0.8)
        ax.text(0.01, fp32 - 1.0, "FP32 - 1 point", va="bottom", fontsize=8, color="grey", transform=ax.get_yaxis_transform())
        ax.set_xscale("log")
        ax.set_xlabel("p50 latency, batch 1, sequence 128 (ms, log scale)")
        ax.set_ylabel("test entity F1 (%)" if metric == "entity_f1" else "test accuracy (%)")
        ax.set_title(f"{Path(result['example']).name}: {result['test_examples']} test examples, {result['threads']} threads")
        ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
