"""What signature verification costs a device: loading a signed bundle with and without trusted keys.

    python benchmarks/bench_verify.py BUNDLE.mcpkg PUB.pem [--rounds 5] [--warm 20]

Cold: `mcompress.runtime.load` in a fresh interpreter (imports included: model-signing is imported
only when keys are given), alternating rounds, median. Warm: `open_bundle` repeated in this process
once model-signing is imported (hashing every member against the signature, then the manifest).
Prints one JSON object with the machine and other processes' CPU.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

COLD = ("import time, sys; t = time.perf_counter(); from mcompress.runtime import load; "
        "load(sys.argv[1], trusted_keys=sys.argv[2:] or None); print(time.perf_counter() - t)")


def cold_seconds(bundle: str, keys: list[str]) -> float:
    done = subprocess.run([sys.executable, "-c", COLD, bundle, *keys], capture_output=True, text=True, check=True)
    return float(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle")
    parser.add_argument("public_key")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warm", type=int, default=20)
    args = parser.parse_args()

    from mcompress.metrics.machine import machine_info, other_processes_cpu
    from mcompress.runtime import open_bundle

    load_before = other_processes_cpu(1.0)
    cold: dict[str, list[float]] = {"no keys": [], "trusted key": []}
    for _ in range(args.rounds):
        cold["no keys"].append(cold_seconds(args.bundle, []))
        cold["trusted key"].append(cold_seconds(args.bundle, [args.public_key]))
    open_bundle(args.bundle, trusted_keys=[args.public_key])  # imports model-signing once
    warm = {}
    for name, keys in (("no keys", None), ("trusted key", [args.public_key])):
        started = time.perf_counter()
        for _ in range(args.warm):
            open_bundle(args.bundle, trusted_keys=keys)
        warm[name] = round((time.perf_counter() - started) / args.warm * 1000, 1)
    print(json.dumps({"bundle": args.bundle, "cold_load_s_median": {k: round(statistics.median(v), 3) for k, v in cold.items()},
                      "warm_open_ms": warm, "rounds": args.rounds, "machine": machine_info(),
                      "other_processes_cpu_percent": max(load_before, other_processes_cpu(1.0))}, indent=1))


if __name__ == "__main__":
    main()
