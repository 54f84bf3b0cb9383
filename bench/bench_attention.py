"""Cost of the W+ Adapter RCA / PIDiff SCA attention patch: patched vs unpatched UNet denoise calls,
measured side by side (interleaved) in one run.

Full-size SD1.5 UNet architecture (random weights), 512x512 image = 64x64 latents, cond+uncond batch 2.
Both patches are active on every call (start_percent 0) so this is the worst case.

    $FP_PY bench/bench_attention.py            # full size (CPU: a few minutes)
    $FP_PY bench/bench_attention.py --quick    # tiny SD1.5, 16x16 latents (seconds; used by a test)
    options: --repeats N --latent N --device cpu|cuda --dtype fp32|fp16 --json out.json
"""
import argparse
import json
import os
import statistics
import sys
import time
import types
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACK = "comfyui_face_personalization"


def _import_comfy(device):
    comfy_path = os.environ.get("FP_COMFY") or os.environ.get("COMFYUI_PATH")
    if "comfy" not in sys.modules:
        if not comfy_path:
            raise SystemExit("set FP_COMFY (run .ci/bootstrap.sh) to the ComfyUI source")
        sys.path.insert(0, comfy_path)
        import comfy.cli_args

        comfy.cli_args.args.cpu = device == "cpu"
    if PACK not in sys.modules:  # the pack's library code, without registering nodes
        pkg = types.ModuleType(PACK)
        pkg.__path__ = [str(REPO)]
        sys.modules[PACK] = pkg


def build(kind, device, dtype):
    import torch
    import comfy.model_patcher

    from fixtures.tiny.sd import build_model

    model = build_model(kind, dtype=dtype)
    model.diffusion_model.to(device)
    return comfy.model_patcher.ModelPatcher(model, load_device=torch.device(device), offload_device=torch.device(device))


def run(quick=False, repeats=None, latent=None, device=None, dtype_name=None, log=print):
    _import_comfy(device or "cpu")
    import torch

    from comfyui_face_personalization.models_loader.methods.wplus.attention import apply_residual_cross_attention
    from comfyui_face_personalization.models_loader.patch_engine import cross_attention_layers
    from fixtures.tiny.wplus_adapter import random_weights

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = {"fp32": torch.float32, "fp16": torch.float16}[dtype_name or ("fp16" if device == "cuda" else "fp32")]
    kind = "sd15" if quick else "sd15_full"
    repeats = repeats or (2 if quick else 3)
    latent = latent or (16 if quick else 64)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    mp = build(kind, device, dtype)
    widths = [l.inner_dim for l in cross_attention_layers(mp)]
    rca_w = random_weights(widths, "bench/wplus")
    sca_w = random_weights(widths, "bench/pidiff")
    sca_w.kind = "pidiff"
    w = torch.randn(1, 18, 512)
    models = {
        "unpatched": mp,
        "rca": apply_residual_cross_attention(mp, rca_w, w, 1.0, start_percent=0.0),
        "sca": apply_residual_cross_attention(mp, sca_w, w, 0.4, start_percent=0.0),
    }
    log(f"built {kind} ({sum(p.numel() for p in mp.model.diffusion_model.parameters()) / 1e6:.0f}M params, "
        f"{len(widths)} cross-attn layers) on {device}/{dtype_name or dtype} in {time.perf_counter() - t0:.1f}s")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, latent, latent, generator=g).to(device, dtype)
    ctx = torch.randn(2, 77, 768, generator=g).to(device, dtype)
    t = torch.full((2,), 500.0, device=device)

    def call(m):
        to = dict(m.model_options["transformer_options"])
        to["cond_or_uncond"] = [1, 0]
        to["sigmas"] = torch.full((2,), 1.0, device=device)
        if device == "cuda":
            torch.cuda.synchronize()
        s = time.perf_counter()
        with torch.inference_mode():
            m.model.diffusion_model(x, timesteps=t, context=ctx, transformer_options=to)
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - s

    for m in models.values():  # warm-up (weight casts, allocator, kernels)
        call(m)
    times = {k: [] for k in models}
    for r in range(repeats):  # interleaved, order rotated every repeat
        names = list(models)
        names = names[r % len(names):] + names[:r % len(names)]
        for k in names:
            times[k].append(call(models[k]))
    med = {k: statistics.median(v) for k, v in times.items()}
    result = {"kind": kind, "device": device, "dtype": str(dtype), "latent": latent, "batch": 2, "repeats": repeats,
              "seconds": times, "median_s": med,
              "ratio_rca": med["rca"] / med["unpatched"], "ratio_sca": med["sca"] / med["unpatched"]}
    log(f"median per denoise call: unpatched {med['unpatched'] * 1e3:.1f} ms, RCA {med['rca'] * 1e3:.1f} ms, "
        f"SCA {med['sca'] * 1e3:.1f} ms")
    log(f"ratio RCA/unpatched {result['ratio_rca']:.3f}x, SCA/unpatched {result['ratio_sca']:.3f}x "
        f"(target <= 1.05x CPU, <= 1.03x GPU)")
    return result


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeats", type=int)
    ap.add_argument("--latent", type=int)
    ap.add_argument("--device", choices=["cpu", "cuda"])
    ap.add_argument("--dtype", choices=["fp32", "fp16"])
    ap.add_argument("--json")
    a = ap.parse_args(argv)
    res = run(a.quick, a.repeats, a.latent, a.device, a.dtype)
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1))
    return res


if __name__ == "__main__":
    main()
