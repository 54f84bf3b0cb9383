"""Baseline: plain sampling time on the tiny SD1.5 checkpoint through ComfyUI's own nodes, the
figure later benches compare patched sampling against. Prints seconds per step.

    python bench/bench_sampling.py [--steps 4] [--size 256] [--repeats 3]
"""
import argparse
import sys

from _boot import boot, interleaved


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    opts = ap.parse_args()
    host = boot()
    import nodes
    import torch
    from harness.provision import provision

    (name,) = provision(host.home, kinds=["sd15"], shared=False)
    model, clip, _ = nodes.CheckpointLoaderSimple().load_checkpoint(name)[:3]
    pos = nodes.CLIPTextEncode().encode(clip, "a photo of a person")[0]
    neg = nodes.CLIPTextEncode().encode(clip, "blurry")[0]
    latent = {"samples": torch.zeros(1, 4, opts.size // 8, opts.size // 8)}

    def sample():
        nodes.common_ksampler(model, 0, opts.steps, 5.0, "euler", "normal", pos, neg, latent, denoise=1.0)

    sample()  # warm-up (loads weights)
    med = interleaved({"plain": sample}, opts.repeats)
    print(f"tiny SD1.5 {opts.size}px cond+uncond: {med['plain'] / opts.steps * 1000:.1f} ms/step "
          f"({opts.steps} steps, median of {opts.repeats})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
