#!/usr/bin/env bash
# The main job on the built-in example: install, fine-tune the sentiment example if it is not
# built yet (about 3 minutes on 2 cores, cached), then build it for this CPU in the default 15-minute
# budget: onnx-cpu INT8 first, then pruned + distilled INT8 builds for onnx-cpu and openvino-cpu when
# the budget allows, then the other precisions while it lasts; each gated, raced, the fastest kept.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh openvino
export HF_HUB_OFFLINE=1
./.venv/bin/mcompress example sentiment examples/sentiment
./.venv/bin/mcompress run examples/sentiment --out build/sentiment-cpu --force "$@"
