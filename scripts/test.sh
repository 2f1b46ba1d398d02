#!/usr/bin/env bash
# Install with test extras, check the layer contracts, run the suite. .ci/run calls exactly this.
# The suite runs every test, slow ones included; --durations=15 lists the 15 slowest, and every
# test has a timeout (pyproject [tool.pytest.ini_options]).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
# A real browser for the HTML checks (tune.html in tests/test_tune.py): Debian's chromium, where this
# machine can install it (root with apt); elsewhere those checks parse the page only and say so.
if ! command -v chromium >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null 2>&1 \
        || echo "note: could not install chromium; the HTML checks parse the page only" >&2
fi
export HF_HUB_OFFLINE=1
# import-linter: the contracts in pyproject [tool.importlinter]; a broken one fails the run here.
./.venv/bin/lint-imports --no-cache
exec ./.venv/bin/python -m pytest -q --durations=15 tests "$@"
