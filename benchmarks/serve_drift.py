"""Drift check of a served bundle on real traffic (issue 16): `mcompress serve BUNDLE` started as a
user starts it, sent the held-out split, then a shifted stream; /v1/monitor read after each.

    python benchmarks/serve_drift.py BUNDLE_OR_BUILD CALM.jsonl SHIFTED.jsonl [--shifted-label LABEL] \
        [--window N] [--out results/serve-drift.json]

CALM and SHIFTED are JSONL files of the task's examples: a ``text`` column, or ``tokens`` (a tagger's
split: the words joined by spaces, as the serving tests send them). ``--shifted-label`` keeps only
the SHIFTED rows whose gold ``label`` is LABEL (a one-class stream). The drift window is ``--window``
texts (default: the smaller stream's size, so each reading covers one stream only). Texts go in
requests of 16, in file order. Reported per reading: the verdict, each signal's PSI against the
reference the bundle's manifest recorded at packaging time (the build's own predictions on its eval
split), the threshold, the observed label counts, and for a tagger the entities answered.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from serving import running  # noqa: E402  (tests/serving.py: the console script on a free loopback port)

REQUEST_TEXTS = 16


def _texts(path: Path, label: str | None = None) -> list[str]:
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if label is not None:
        rows = [row for row in rows if row.get("label") == label]
    return [row["text"] if "text" in row else " ".join(row["tokens"]) for row in rows]


def _send(url: str, texts: list[str]) -> dict:
    """Every text, REQUEST_TEXTS a request; the answers' entity and label counts."""
    import httpx

    entities, labels = 0, {}
    for start in range(0, len(texts), REQUEST_TEXTS):
        response = httpx.post(f"{url}/v1/predict", json={"texts": texts[start:start + REQUEST_TEXTS]}, timeout=120)
        if response.status_code != 200:
            raise SystemExit(f"POST /v1/predict answered HTTP {response.status_code}: {response.text[:300]}")
        for prediction in response.json()["predictions"]:
            entities += len(prediction.get("entities", ()))
            if "label" in prediction:
                labels[prediction["label"]] = labels.get(prediction["label"], 0) + 1
    return {"texts": len(texts), "entities_answered": entities, "labels_answered": labels}


def _reading(url: str) -> dict:
    import httpx

    report = httpx.get(f"{url}/v1/monitor", timeout=30).json()
    return {"verdict": report["verdict"], "threshold": report.get("threshold"),
            "window_texts": report.get("window_texts"),
            "psi": {name: signal["psi"] for name, signal in report.get("signals", {}).items()},
            "observed_labels": report.get("observed_labels")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path, help="bundle (.mcpkg) or build directory")
    parser.add_argument("calm", type=Path, help="held-out examples (JSONL): should read as no drift")
    parser.add_argument("shifted", type=Path, help="a shifted stream (JSONL): should read as drift")
    parser.add_argument("--shifted-label", default=None, help="keep only SHIFTED rows of this gold label")
    parser.add_argument("--window", type=int, default=None, help="drift window in texts (default: the smaller stream)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    calm, shifted = _texts(args.calm), _texts(args.shifted, args.shifted_label)
    if not calm or not shifted:
        raise SystemExit(f"no texts: {len(calm)} calm, {len(shifted)} shifted (check the files and --shifted-label).")
    window = args.window or min(len(calm), len(shifted))
    with tempfile.TemporaryDirectory(prefix="serve-drift-") as tmp, \
            running(args.model, Path(tmp) / "server.log", "--drift-window", str(window), "--max-texts", str(REQUEST_TEXTS)) as server:
        results = {"command": " ".join(sys.argv), "model": str(args.model), "window": window,
                   "calm": {"file": str(args.calm), **_send(server.url, calm), "monitor": _reading(server.url)},
                   "shifted": {"file": str(args.shifted), "label": args.shifted_label, **_send(server.url, shifted),
                               "monitor": _reading(server.url)}}
    print(json.dumps(results, indent=2))
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
