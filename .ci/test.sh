#!/usr/bin/env bash
# README command 2: set up the host runtime (cached) and run the whole test suite.
#   bash .ci/test.sh [pytest args...]
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
eval "$(bash "$repo/.ci/bootstrap.sh" | tail -n 2)"
# Browser tests of web/ use Debian's chromium; install it when we can (root + apt), else they skip.
if ! command -v chromium >/dev/null 2>&1 && [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null 2>&1; then
  echo "[test] installing Debian chromium for the web/ browser tests" >&2
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } >/dev/null 2>&1 ||
    echo "[test] could not install chromium: browser tests will be skipped" >&2
fi
export FP_PY FP_COMFY
cd "$repo/tests"
exec "$FP_PY" -m pytest -p no:cacheprovider "$@"
