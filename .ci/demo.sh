#!/usr/bin/env bash
# README command 1: set up the host runtime (cached), then run the example workflows in a real
# ComfyUI server on tiny models and write the images to demo_output/images (printed at the end).
#   bash .ci/demo.sh [--out DIR] [--workflow NAME ...]
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
eval "$(bash "$repo/.ci/bootstrap.sh" | tail -n 2)"
export FP_PY FP_COMFY
exec "$FP_PY" "$repo/tests/harness/demo.py" "$@"
