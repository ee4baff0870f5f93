#!/usr/bin/env bash
# Create .venv and install imgclf with training, JAX and test extras (idempotent).
# Usage: bash scripts/setup.sh        (IMGCLF_EXTRAS overrides the extras, e.g. "train")
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".[${IMGCLF_EXTRAS:-train,jax,test}]"
