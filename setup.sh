#!/usr/bin/env bash
# One-time set-up: a Python 3.11 virtual environment in .venv with the pinned requirements and
# this repository's library (package quixer) installed editable.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
py="${PYTHON:-python3.11}"
command -v "$py" >/dev/null || py=python3
[ -x .venv/bin/python ] || "$py" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -r requirements.txt
# The library itself, editable (pyproject.toml): `import quixer` then works from any directory.
# --no-deps: everything it needs is pinned above; --no-build-isolation: build with the
# setuptools already in the venv instead of downloading one (its notice about editable
# installs is silenced).
PYTHONWARNINGS=ignore .venv/bin/python -m pip install -q --no-deps --no-build-isolation -e .
# Build the fused CPU circuit kernel now rather than on first use (optional: without a C++
# compiler the model falls back to its torch simulation: the same maths, only slower).
.venv/bin/python -m quixer.sim.native >/dev/null || echo "setup.sh: fused CPU kernel not built; the torch simulation will be used" >&2
