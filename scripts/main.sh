#!/usr/bin/env bash
# The main job on a fresh machine: set up, then train the default (the auto plan), evaluate and save.
# `bash scripts/main.sh DATA --recipe seed` trains the course project's CNN instead.
# Usage: bash scripts/main.sh [DATA] [extra `imgclf train` flags...]
#   DATA: an image folder, a CIFAR-10 archive/folder, or "cifar10" (downloads the official archive).
#   Default: $IMGCLF_DATA, else ../shared/datasets/cifar10-jpeg if present, else cifar10.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
DEFAULT_DATA=cifar10
[ -d ../shared/datasets/cifar10-jpeg ] && DEFAULT_DATA=../shared/datasets/cifar10-jpeg
DATA=${1:-${IMGCLF_DATA:-$DEFAULT_DATA}}
shift || true
OUT=runs/main-$(date +%Y%m%d-%H%M%S)
.venv/bin/imgclf train --data "$DATA" --out "$OUT" "$@"
.venv/bin/imgclf evaluate "$OUT/model.keras" --out "$OUT/evaluation"
echo "model: $OUT/model.keras"
