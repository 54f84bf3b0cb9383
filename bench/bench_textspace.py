"""Text-space identity methods add no UNet cost: time sampling with CrossInit/AdaFace conditioning vs plain.

Run from tests/: $FP_PY ../bench/bench_textspace.py [--steps 6] [--repeats 8]
Prints the ratio (sampling after identity encoding) / (plain sampling); expected ~1.00: the identity
CONDITIONING has the same shape and dtype as a plain prompt's (checked and printed), so the UNet does the
same work. Runs are interleaved in pairs with the order alternating; the median of the per-pair ratios
is the figure (CPU timing noise on a 2-core machine is several percent per run).
"""
import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import _boot  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--repeats", type=int, default=8)
    ap.add_argument("--size", type=int, default=256)
    a = ap.parse_args()
    from harness import comfy_host

    host = comfy_host.boot(Path(tempfile.mkdtemp(prefix="fp_bench_")))
    import nodes
    import torch
    from fixtures import tiny
    from comfyui_face_personalization.models_loader.methods.adaface.load import load_adaface
    from comfyui_face_personalization.models_loader.methods.crossinit import core
    from comfyui_face_personalization.models_loader import textspace

    ckpt = tiny.ensure("sd15")
    import comfy.sd

    model, clip, _ = comfy.sd.load_checkpoint_guess_config(str(ckpt))[:3]
    ada = load_adaface(str(tiny.ensure("adaface_pt")), str(tiny.ensure("adaface_arc2face")))
    face = torch.randn(1, 512)
    c_ci = textspace.apply_trigger(clip, "<ci>", core.cross_init_vectors(clip))
    c_ada = textspace.apply_trigger(c_ci, "<ada>", {"clip_l": ada.encode(face)})
    enc = lambda c, t: nodes.CLIPTextEncode().encode(c, t)[0]  # noqa: E731
    neg = enc(clip, "blurry")
    conds = {"plain": enc(clip, "a photo of a person"), "identity": enc(c_ada, "a photo of <ci> and <ada>")}
    latent = nodes.EmptyLatentImage().generate(a.size, a.size, 1)[0]
    shapes = {k: (tuple(c[0][0].shape), c[0][0].dtype) for k, c in conds.items()}
    print(f"context shape/dtype: {shapes}; identical: {len(set(shapes.values())) == 1}")
    nodes.common_ksampler(model, 0, 1, 5.0, "euler", "normal", conds["plain"], neg, latent)  # warm-up
    times = _boot.alternating_pairs({k: (lambda k=k: nodes.common_ksampler(model, 0, a.steps, 5.0, "euler", "normal",
                                                                             conds[k], neg, latent)) for k in conds},
                                    a.repeats)
    print(_boot.pair_ratio_line(times, "identity", "plain"))


if __name__ == "__main__":
    main()
