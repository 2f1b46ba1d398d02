"""Load benchmark of `mcompress serve` against the naive one-request-one-inference FastAPI + ONNX
Runtime server (benchmarks/naive_server.py) of the same build, in one run.

    python benchmarks/bench_serve.py BUILD_DIR TEXTS.jsonl [--requests 4000] [--rss-requests 10000]

Both servers are started as subprocesses on 127.0.0.1 (free ports), with the same intra-op thread
setting (--threads; default: ONNX Runtime's). A bounded async aiohttp client sends ``--requests``
requests of one text each (texts from the file, cyclically) at concurrency 1, 8 and 32, to one
server at a time, the servers alternating per concurrency level; each server gets 50 warm-up
requests first. The client is aiohttp, not httpx: on the 2-core AMX Xeon httpx's AsyncClient spent
2.95 ms of CPU per request at concurrency 32, on the cores the server runs on, and capped the same
`mcompress serve` at 310 req/s, which aiohttp (0.12 ms per request) drove at 1,131 req/s; the
client's own CPU per request is reported with every level, so a client-bound figure shows. Per level and server: throughput (requests/s over the wall time of the level),
p50/p99 latency (client side, from send to full response), errors (non-200 or transport errors, by kind),
the client's CPU time per request,
the server's CPU time per request (user + system of all its threads: less sensitive to other load
on the machine than the wall-clock figures) and its peak RSS (VmHWM of its process) at the end.

Also: the p50 of a direct ``bundle.predict([text])`` call in this process (same texts, same
threads), for the concurrency-1 comparison. The async client's event loop and HTTP parsing add to
every latency at concurrency 1, on the same two cores; so concurrency 1 is measured a
second time with a lean sequential client (``http.client`` on one keep-alive connection, ~0.1 ms per
request), whose p50 minus the direct call's is what the server adds; its p50 of ``GET /healthz``
is the HTTP stack's own floor. Then the memory check: ``--rss-requests`` requests at
concurrency 32 to `mcompress serve`, its VmRSS after warm-up and after them.

The machine's CPU (lscpu model, AVX2/AVX-512 VNNI/AMX flags) and the CPU other processes used
during the run are printed with the figures: the client runs on the same CPUs as the server.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from serving import free_port  # noqa: E402  (tests/serving.py: the same free-port helper the tests use)

WARMUP = 50
LEVELS = (1, 8, 32)


def _vm(pid: int, key: str) -> int:
    """VmRSS / VmHWM of a process, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and all its threads so far (ONNX Runtime's included)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _start(command: list[str], url: str, log: Path) -> subprocess.Popen:
    import urllib.error
    import urllib.request

    with open(log, "wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT,
                                   env={**os.environ, "HF_HUB_OFFLINE": "1"})
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and process.poll() is None:
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=2) as response:
                if response.status == 200:
                    return process
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    process.kill()
    raise SystemExit(f"{command} did not start: {log.read_text()}")


async def _load(url: str, texts: list[str], requests: int, concurrency: int) -> dict:
    """``requests`` one-text requests, ``concurrency`` at a time: throughput, p50, p99, errors, and
    the client's CPU per request (this process, all threads)."""
    import aiohttp

    latencies, errors, counter, first_errors = [], {}, iter(range(requests)), []
    began = time.perf_counter()

    async def worker(session):
        for i in counter:
            started = time.perf_counter()
            try:
                async with session.post(f"{url}/v1/predict", json={"texts": [texts[i % len(texts)]]}) as response:
                    await response.read()
                    kind = None if response.status == 200 else f"HTTP {response.status}"
            except (aiohttp.ClientError, asyncio.TimeoutError) as err:
                kind = type(err).__name__
                if len(first_errors) < 5:  # what the transport said, and when: a reset, a timeout, a closed keep-alive
                    first_errors.append({"request": i, "at_s": round(time.perf_counter() - began, 3),
                                         "after_ms": round(1000 * (time.perf_counter() - started), 1), "error": repr(err)})
            latencies.append(time.perf_counter() - started)
            if kind:
                errors[kind] = errors.get(kind, 0) + 1

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as session:
        cpu, started = _cpu_seconds(os.getpid()), time.perf_counter()
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
        wall, cpu = time.perf_counter() - started, _cpu_seconds(os.getpid()) - cpu
    latencies.sort()
    return {"requests": requests, "concurrency": concurrency, "throughput_rps": round(requests / wall, 1),
            "p50_ms": round(1000 * latencies[len(latencies) // 2], 2),
            "p99_ms": round(1000 * latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))], 2),
            "errors": sum(errors.values()), "error_kinds": errors, "first_errors": first_errors,
            "client_cpu_ms_per_request": round(1000 * cpu / requests, 3)}


def _lean_sequential(url: str, texts: list[str], requests: int) -> dict:
    """Concurrency 1 with a client that costs little: one keep-alive ``http.client`` connection,
    ``requests`` one-text predicts in sequence, then as many ``GET /healthz``; p50 of each."""
    import http.client
    from urllib.parse import urlsplit

    where = urlsplit(url)
    connection = http.client.HTTPConnection(where.hostname, where.port, timeout=60)
    headers = {"Content-Type": "application/json"}

    def timed(method: str, path: str, body: bytes | None) -> float:
        started = time.perf_counter()
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        response.read()
        if response.status != 200:
            raise SystemExit(f"{method} {path} answered HTTP {response.status}")
        return time.perf_counter() - started

    try:
        for i in range(WARMUP):
            timed("POST", "/v1/predict", json.dumps({"texts": [texts[i % len(texts)]]}).encode())
        predict = [timed("POST", "/v1/predict", json.dumps({"texts": [texts[i % len(texts)]]}).encode())
                   for i in range(requests)]
        health = [timed("GET", "/healthz", None) for _ in range(requests)]
    finally:
        connection.close()
    return {"lean_client_predict_p50_ms": round(1000 * statistics.median(predict), 3),
            "lean_client_healthz_p50_ms": round(1000 * statistics.median(health), 3)}


def _direct(bundle_path: Path, texts: list[str], threads: int | None, calls: int = 500) -> dict:
    """p50 wall time and CPU time (this process, all threads) of a direct bundle.predict([text])."""
    from mcompress.runtime import load

    bundle = load(bundle_path, threads=threads)
    for text in texts[:WARMUP]:
        bundle.predict([text])
    times, cpu = [], _cpu_seconds(os.getpid())
    for i in range(calls):
        started = time.perf_counter()
        bundle.predict([texts[i % len(texts)]])
        times.append(time.perf_counter() - started)
    return {"direct_bundle_predict_p50_ms": round(1000 * statistics.median(times), 3),
            "direct_bundle_predict_cpu_ms": round(1000 * (_cpu_seconds(os.getpid()) - cpu) / calls, 2)}


def _cpu() -> dict:
    model, flags = "?", set()
    for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
        if line.startswith("Model name:"):
            model = line.split(":", 1)[1].strip()
        if line.startswith("Flags:"):
            flags = set(line.split(":", 1)[1].split())
    return {"model": model, "cores": os.cpu_count(),
            "isa": {f: f in flags for f in ("avx2", "avx512f", "avx512_vnni", "amx_int8")}}


def _servers(build: Path, bundle: Path, threads: int | None, work: Path, max_batch_size: int | None = None) -> dict:
    thread_flags = ["--threads", str(threads)] if threads else []
    batch_flags = ["--max-batch-size", str(max_batch_size)] if max_batch_size else []
    servers = {}
    for name, command in (
            ("mcompress-serve", [str(Path(sys.executable).parent / "mcompress"), "serve", str(bundle), *thread_flags,
                                 *batch_flags]),
            ("naive-fastapi-ort", [sys.executable, str(REPO / "benchmarks" / "naive_server.py"), str(build),
                                   *thread_flags])):
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        servers[name] = (_start([*command, "--port", str(port)], url, work / f"{name}.log"), url)
    return servers


def _run(args, texts: list[str], work: Path) -> dict:
    from mcompress.bundle.package import package_build
    from mcompress.metrics.machine import other_processes_cpu

    bundle = work / "bench.mcpkg"
    package_build(args.build, bundle)
    servers = _servers(args.build, bundle, args.threads, work, args.max_batch_size)
    results = {"cpu": _cpu(), "other_processes_cpu_before": other_processes_cpu(2.0), "levels": []}
    try:
        for name, (_, url) in servers.items():
            asyncio.run(_load(url, texts, WARMUP, 1))
        for concurrency in LEVELS:
            for name, (process, url) in servers.items():
                cpu = _cpu_seconds(process.pid)
                row = asyncio.run(_load(url, texts, args.requests, concurrency))
                cpu_ms = round(1000 * (_cpu_seconds(process.pid) - cpu) / args.requests, 2)
                results["levels"].append({"server": name, **row, "server_cpu_ms_per_request": cpu_ms,
                                          "server_peak_rss_mb": round(_vm(process.pid, "VmHWM") / 2**20, 1)})
                print(json.dumps(results["levels"][-1]), flush=True)
        results["lean_concurrency_1"] = {name: _lean_sequential(url, texts, args.requests)
                                         for name, (_, url) in servers.items()}
        print(json.dumps(results["lean_concurrency_1"]), flush=True)
        process, url = servers["mcompress-serve"]
        before = _vm(process.pid, "VmRSS")
        rss_row = asyncio.run(_load(url, texts, args.rss_requests, 32))
        after = _vm(process.pid, "VmRSS")
        results["rss_check"] = {**rss_row, "rss_before_mb": round(before / 2**20, 1), "rss_after_mb": round(after / 2**20, 1),
                                "growth_pct": round(100 * (after - before) / before, 2)}
    finally:
        for process, _ in servers.values():
            process.terminate()
            process.wait(60)
        # what each server logged (uvicorn at warning: protocol errors, dropped connections)
        results["server_log_tail"] = {name: (work / f"{name}.log").read_text(errors="replace")[-3000:] for name in servers}
    results.update(_direct(bundle, texts, args.threads))
    for row in results["lean_concurrency_1"].values():
        row["added_to_direct_ms"] = round(row["lean_client_predict_p50_ms"] - results["direct_bundle_predict_p50_ms"], 3)
    results["other_processes_cpu_after"] = other_processes_cpu(2.0)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("build", type=Path, help="build directory written by `mcompress run`")
    parser.add_argument("texts", type=Path, help="CSV/JSONL file of texts (text column)")
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--rss-requests", type=int, default=10_000)
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads of both servers")
    parser.add_argument("--max-batch-size", type=int, default=None, help="mcompress serve's --max-batch-size (default: its own)")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args()
    from mcompress.calibration.datasets import read_texts

    texts = read_texts(args.texts, "text")
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        results = {"command": " ".join(sys.argv), **_run(args, texts, Path(tmp))}
    print(json.dumps(results, indent=2))
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
