"""Does a latency race inflate what it measures? One build timed alone, against copies of itself,
and against larger builds, with and without the settle pause between runners' turns.

    python benchmarks/race_settle.py SMALL_BUILD LARGE_BUILD [--repeats 2] [--out results/x.json]

Each build is a directory `mcompress run` wrote; each runner is the build's own target runner
(its runtime's default settings) in its own timing process, as `tune`'s final race makes them.
Batch 1 at sequence 128, 40 calls in 5 interleaved rounds (metrics.evaluation.latency_race); the
conditions alternate, ``--repeats`` times. Prints (and writes) one JSON object: every
condition's p50/p95 per runner, the machine and other processes' CPU.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

TEXTS = 64  # test-split texts the inputs are drawn from


def _race(builds: list[Path], texts: list[str], settle_s: float) -> list[dict]:
    from mcompress.metrics.evaluation import latency_race
    from mcompress.metrics.isolated import IsolatedRunner
    from mcompress.tune.race import _build_runner

    built = [_build_runner(b) for b in builds]
    runners = {f"{i}:{b.name}": IsolatedRunner(factory, 2, name=f"{i}:{b.name}") for i, (b, (factory, _)) in
               enumerate(zip(builds, built))}
    try:
        raced = latency_race(runners, dict(zip(runners, (tok for _, tok in built))), texts, [(1, 128, 40)],
                             settle_s=settle_s)[(1, 128)]
    finally:
        for runner in runners.values():
            runner.close()
    return [{"runner": name, "p50_ms": round(r.p50_ms, 2), "p95_ms": round(r.p95_ms, 2)} for name, r in raced.items()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("small", type=Path)
    parser.add_argument("large", type=Path)
    parser.add_argument("--texts", type=Path, default=Path("examples/sentiment/splits/test.jsonl"))
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    from mcompress.metrics.evaluation import SETTLE_S
    from mcompress.metrics.machine import machine_info, other_processes_cpu

    texts = [json.loads(line)["text"] for line in args.texts.read_text(encoding="utf-8").splitlines()[:TEXTS]]
    conditions = {"small alone": [args.small], "small and 4 copies": [args.small] * 5,
                  "small and 4 large": [args.small] + [args.large] * 4}
    load_before = other_processes_cpu(1.0)
    results = []
    for repeat in range(args.repeats):
        for settle_s in (0.0, SETTLE_S):
            for condition, builds in conditions.items():
                rows = _race(builds, texts, settle_s)
                results.append({"repeat": repeat, "settle_s": settle_s, "condition": condition, "runners": rows})
                print(f"settle {settle_s:.2f} s  {condition:20s}",
                      "  ".join(f"{r['p50_ms']:.2f}/{r['p95_ms']:.1f}" for r in rows), flush=True)
    report = {"small": str(args.small), "large": str(args.large), "shape": [1, 128], "calls": 40, "rounds": 5,
              "threads": 2, "results": results, "machine": machine_info(),
              "other_processes_cpu_percent": max(load_before, other_processes_cpu(1.0))}
    if args.out:
        args.out.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    print(json.dumps({k: v for k, v in report.items() if k != "results"}, indent=1))


if __name__ == "__main__":
    main()
