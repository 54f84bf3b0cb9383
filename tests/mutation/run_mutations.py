"""Targeted mutation check (on demand, not in CI): plant one known mistake at a time in a temporary
copy of the repo, run the tests that should catch it, and report whether they failed.

    eval "$(bash .ci/bootstrap.sh | tail -2)"; export FP_PY FP_COMFY
    cd tests && $FP_PY mutation/run_mutations.py            # every mutation
    cd tests && $FP_PY mutation/run_mutations.py --list     # names only
    cd tests && $FP_PY mutation/run_mutations.py start_percent_default_zero foreign_residual_negated

A mutation whose ``old`` snippet is no longer in the file is reported as "snippet not found" (re-align it
with the current code). Exit status 1 when a mutation survived or a snippet is missing.
"""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# (name, file, exact old snippet, new snippet, pytest args run from tests/)
MUTATIONS = [
    # the mistakes of the test-audit issue
    ("foreign_residual_negated", "models_loader/patch_engine.py",
     "res = e.callback(result, q, k, v, extra_options, **e.foreign_kwargs)",
     "res = -e.callback(result, q, k, v, extra_options, **e.foreign_kwargs)",
     ["wplus_adapter/test_engine.py", "composition/test_ipadapter_peer.py"]),
    ("per_image_masks_swapped", "models_loader/methods/wplus/attention.py",
     "        return m.repeat(len(cou), 1, 1)",
     "        return m.flip(0).repeat(len(cou), 1, 1)",
     ["wplus_adapter/test_rca_oracle.py", "wplus_adapter/test_half_precision.py"]),
    ("start_percent_default_zero", "nodes/wplus_adapter_nodes.py",
     '"start_percent": ("FLOAT", {"default": 0.2,',
     '"start_percent": ("FLOAT", {"default": 0.0,',
     ["wplus_adapter/test_graph.py", "-k", "start_percent"]),
    ("paste_back_feather_disabled", "models_loader/face/align.py",
     "    if feather > 0:  # pull the opaque region in from the crop border, then blur it",
     "    if False:  # pull the opaque region in from the crop border, then blur it",
     ["face/test_mask_paste_reference.py", "face/test_align.py", "face/test_face_graphs.py"]),
    ("face_mask_feather_disabled", "models_loader/face/mask.py",
     "    if feather <= 0:",
     "    if True:",
     ["face/"]),
    # more of the same kind
    ("step_window_ignored", "models_loader/patch_engine.py",
     "return self.sigma_end <= sigma <= self.sigma_start",
     "return True",
     ["wplus_adapter/test_rca_oracle.py", "wplus_adapter/test_engine.py", "wplus_adapter/test_graph.py", "-k",
      "start_percent or window or oracle or engine"]),
    ("chain_drops_earlier_residuals", "models_loader/patch_engine.py",
     "            result = add_output(result, res)",
     "            result = add_output(out, res)",
     ["wplus_adapter/test_engine.py", "composition/test_ipadapter_peer.py"]),
    ("step_rule_off_by_one", "models_loader/methods/wplus/attention.py",
     "if self.start > 0 and i <= int(self.start * steps):",
     "if self.start > 0 and i < int(self.start * steps):",
     ["wplus_adapter/test_graph.py", "wplus_adapter/test_engine.py", "-k", "start or step"]),
    ("rca_query_not_the_text_attention", "models_loader/methods/wplus/rca.py",
     "h_w = attention(self.to_q_wplus(h_text), self.to_k_wplus(tokens)",
     "h_w = attention(self.to_q_wplus(h_text * 0.5), self.to_k_wplus(tokens)",
     ["wplus_adapter/test_rca_oracle.py"]),
    ("personamagic_class_stage_uses_mapper", "models_loader/methods/personamagic/staged.py",
     '        if t > self.t_high:\n            return "class"',
     '        if t > self.t_high:\n            return "mapper"',
     ["personamagic/test_pm_staged.py"]),
    ("personamagic_late_stage_not_reused", "models_loader/methods/personamagic/staged.py",
     '            return "mapper"\n        return "reuse"',
     '            return "mapper"\n        return "mapper"',
     ["personamagic/test_pm_staged.py"]),
    ("identity_tokens_reversed", "models_loader/textspace/trigger.py",
     "t = t.float().reshape(-1, width).cpu()  # no detach",
     "t = t.float().reshape(-1, width).cpu().flip(0)  # no detach",
     ["textspace/test_adaface.py", "textspace/test_crossinit.py"]),
    ("ade_window_frames_ignored", "models_loader/patch_engine.py",
     'if isinstance(ad, dict) and ad.get("sub_idxs") is not None:',
     'if False:',
     ["composition/test_animatediff_peer.py", "wplus_adapter/test_rca_oracle.py", "-k", "animatediff or ade or sub_idxs"]),
    ("face_mask_feather_sigma_doubled", "models_loader/face/mask.py",
     "    sigma = float(feather) / 2.0",
     "    sigma = float(feather)",
     ["face/"]),
]


def _copy_repo(dst):
    ignore = shutil.ignore_patterns(".git", "demo_output", "models", "__pycache__", "*.pyc", ".pytest_cache")
    shutil.copytree(REPO, dst, ignore=ignore, symlinks=True)
    return dst


def run_one(name, rel, old, new, args, python):
    src = (REPO / rel).read_text()
    count = src.count(old)
    if count != 1:
        return "snippet not found" if count == 0 else f"snippet found {count} times"
    with tempfile.TemporaryDirectory(prefix=f"fp_mut_{name}_") as tmp:
        repo = _copy_repo(Path(tmp) / REPO.name)
        (repo / rel).write_text(src.replace(old, new))
        env = dict(os.environ, FP_SHARED=os.environ.get("FP_SHARED", str(REPO.parent / "shared")))
        cmd = [python, "-m", "pytest", "-p", "no:cacheprovider", "-x", "-q", "-o", "addopts=", *args]
        proc = subprocess.run(cmd, cwd=repo / "tests", env=env, capture_output=True, text=True)
        tail = [ln for ln in proc.stdout.splitlines() if ln.startswith(("FAILED", "ERROR"))]
        if proc.returncode == 0:
            return "SURVIVED (all tests passed)"
        failed = [ln for ln in tail if ln.startswith("FAILED")]
        if proc.returncode == 1 and failed:
            return "caught: " + "; ".join(failed[:3])
        return f"error (pytest exit {proc.returncode}): " + (proc.stdout.splitlines()[-1:] or [""])[0]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("names", nargs="*", help="mutations to run (default: all)")
    ap.add_argument("--list", action="store_true")
    opts = ap.parse_args()
    if opts.list:
        for m in MUTATIONS:
            print(f"{m[0]:40s} {m[1]}")
        return 0
    chosen = [m for m in MUTATIONS if not opts.names or m[0] in opts.names]
    unknown = set(opts.names) - {m[0] for m in MUTATIONS}
    if unknown:
        sys.exit(f"unknown mutation(s): {', '.join(sorted(unknown))} (see --list)")
    python = os.environ.get("FP_PY", sys.executable)
    if not (os.environ.get("FP_COMFY") or os.environ.get("COMFYUI_PATH")):
        sys.exit('set FP_COMFY (eval "$(bash .ci/bootstrap.sh | tail -2)"; export FP_PY FP_COMFY)')
    bad = 0
    for name, rel, old, new, args in chosen:
        print(f"[mutation] {name} ({rel}) ...", flush=True)
        result = run_one(name, rel, old, new, args, python)
        bad += not result.startswith("caught")
        print(f"  -> {result}", flush=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
