"""Two builds timed the way bench_cpu.py times models (each alone in a fresh process, alternating
rounds, the order reversed every other round), with nothing else in the rounds:

    python benchmarks/time_two_builds.py ROUNDS BUILD_DIR BUILD_DIR

Prints {"BATCHxSEQ": {build: p50 ms}} at sequence 128 on the sentiment example's test texts. Made
to compare two builds of one graph (tune's kept build and the recipe's: RESULTS.md, issue 17).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import bench_cpu  # noqa: E402

EXAMPLE = Path("examples/sentiment")


def main(rounds: int, build_dirs: list[Path]) -> dict:
    from mcompress.calibration.datasets import read_texts

    texts = read_texts(EXAMPLE / "splits" / "test.jsonl", "text")
    specs = {}
    for build in build_dirs:
        report = json.loads((build / "report.json").read_text())
        specs[build.name] = {"kind": "target", "target": report["target"], "recipe": report["recipe"],
                             "model": str(build / report["artifact"]["model_file"])}
    timed = bench_cpu.time_alone(specs, EXAMPLE, texts, 2, rounds, 20, (128,))
    return {shape: {name: round(t["p50_ms"], 2) for name, t in per_build.items()} for shape, per_build in timed.items()}


if __name__ == "__main__":
    print(json.dumps(main(int(sys.argv[1]), [Path(p) for p in sys.argv[2:]])))
