#!/usr/bin/env bash
# README command 2: set up the host runtime (cached) and run the whole test suite.
#   bash .ci/test.sh [pytest args...]
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
eval "$(bash "$repo/.ci/bootstrap.sh" | tail -n 2)"
export FP_PY FP_COMFY
cd "$repo/tests"
exec "$FP_PY" -m pytest -p no:cacheprovider "$@"
