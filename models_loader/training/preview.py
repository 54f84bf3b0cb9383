"""Preview images during training with ComfyUI's own sampler (the inference path of the current state)."""
import os

import numpy as np
import torch


@torch.no_grad()
def generate(model, clip, vae, prompt, seed, steps, resolution, cfg=5.0, negative="", sampler="euler",
             scheduler="normal"):
    """One image [1, H, W, 3] in 0..1: CLIPTextEncode -> KSampler -> VAEDecode, as the nodes do."""
    import comfy.sample

    def cond(text):
        tokens = clip.tokenize(text)
        return clip.encode_from_tokens_scheduled(tokens)

    h = resolution // 8
    latent = torch.zeros(1, 4, h, h)
    noise = comfy.sample.prepare_noise(latent, seed, None)
    samples = comfy.sample.sample(model, noise, steps, cfg, sampler, scheduler, cond(prompt), cond(negative),
                                  latent, denoise=1.0, disable_pbar=True, seed=seed)
    return vae.decode(samples).clamp(0, 1).reshape(-1, resolution, resolution, 3)[:1].float().cpu()


def save_png(image, path):
    from PIL import Image

    os.makedirs(os.path.dirname(path), exist_ok=True)
    arr = (image[0].numpy() * 255.0).round().clip(0, 255).astype(np.uint8)
    Image.fromarray(arr).save(path)
    return path
