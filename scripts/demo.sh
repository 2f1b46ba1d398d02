#!/usr/bin/env bash
# The main job on the built-in example: install, fine-tune the sentiment example if it is not
# built yet (about 3 minutes on 2 cores, cached), then compress it for ONNX Runtime on CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1
./.venv/bin/mcompress example sentiment examples/sentiment
./.venv/bin/mcompress run examples/sentiment --target onnx-cpu --out build/sentiment-onnx-cpu --force "$@"
