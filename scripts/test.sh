#!/usr/bin/env bash
# Install with test extras, check the layer contracts, run the suite. .ci/run calls exactly this.
# The suite runs every test, slow ones included; --durations=15 lists the 15 slowest, and every
# test has a timeout (pyproject [tool.pytest.ini_options]).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
export HF_HUB_OFFLINE=1
# import-linter: the contracts in pyproject [tool.importlinter]; a broken one fails the run here.
./.venv/bin/lint-imports --no-cache
exec ./.venv/bin/python -m pytest -q --durations=15 tests "$@"
