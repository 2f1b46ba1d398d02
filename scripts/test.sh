#!/usr/bin/env bash
# Install with test extras and run the suite. .ci/run calls exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
export HF_HUB_OFFLINE=1
exec ./.venv/bin/python -m pytest -q tests "$@"
