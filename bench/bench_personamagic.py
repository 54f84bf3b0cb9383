"""PersonaMagic sampling cost: KSampler with the StageRegulatedTI-patched MODEL vs the plain MODEL.

Run from tests/: $FP_PY ../bench/bench_personamagic.py [--steps 20] [--repeats 4] [--size 256]
Each patched run gets a fresh StageRegulatedTI (empty per-timestep cache), applied outside the timed
region, so the figure is what one sampling run costs: the per-timestep text re-encode of stage 2 plus
the context swap. Runs are interleaved in pairs with the order alternating; the median of the per-pair
ratios (patched / plain) is printed.
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
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=4)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args()
    if a.quick:
        a.steps, a.repeats = 8, 2
    from harness import comfy_host

    comfy_host.boot(Path(tempfile.mkdtemp(prefix="fp_bench_")))
    import comfy.sd
    import nodes
    from fixtures import tiny
    from comfyui_face_personalization.models_loader.methods.personamagic import checkpoint, staged

    model, clip, _ = comfy.sd.load_checkpoint_guess_config(str(tiny.ensure("sd15")))[:3]
    bundle = checkpoint.load_mapper(str(tiny.ensure("personamagic_mapper")))
    text = "a photo of <persona> reading a book in a cafe"
    neg = nodes.CLIPTextEncode().encode(clip, "blurry")[0]
    plain = nodes.CLIPTextEncode().encode(clip, text.replace("<persona>", "face"))[0]
    latent = nodes.EmptyLatentImage().generate(a.size, a.size, 1)[0]

    def patched():
        m, cond, _ = staged.apply_stage_regulated_ti(model, clip, bundle, text, "<persona>")
        return m, cond

    runs = {"plain": lambda: (model, plain), "patched": patched}
    nodes.common_ksampler(model, 0, 2, 5.0, "euler", "normal", plain, neg, latent)  # warm-up
    m, c = patched()
    nodes.common_ksampler(m, 0, 2, 5.0, "euler", "normal", c, neg, latent)
    def sample(m, c):
        nodes.common_ksampler(m, 0, a.steps, 5.0, "euler", "normal", c, neg, latent)

    times = _boot.alternating_pairs({k: sample for k in runs}, a.repeats, setups=runs)
    print(f"PersonaMagic {a.steps} steps {a.size}px: " + _boot.pair_ratio_line(times, "patched", "plain"))

if __name__ == "__main__":
    main()
