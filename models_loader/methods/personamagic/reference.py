"""The reference photo's CLIP image embedding for the bypass, preprocessed as the official inference does.

Official (scripts/inference.py ``read_image`` + models/clip_prior.py ``MultiCLIP``): PIL bicubic resize of
the photo to 512x512 (uint8), scaled to [-1, 1]; kornia bicubic resize to 224x224 with
``align_corners=True`` and no antialiasing; back to [0, 1]; CLIP mean/std; OpenAI CLIP ViT-B/32
``encode_image`` (the 512-d projected embedding, used as is). ComfyUI's CLIPVisionEncode resizes with
antialiasing and other corner alignment, which moves the embedding; this path matches the official one.
"""
import numpy as np
import torch

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def official_pixels(images, size=224, load_size=512):
    """IMAGE [B, H, W, 3] in [0, 1] -> CLIP pixel values [B, 3, size, size] (float32)."""
    import kornia
    from PIL import Image

    out = []
    for img in images:
        arr = (img[..., :3].clamp(0, 1).cpu().numpy() * 255.0).round().astype(np.uint8)
        pil = Image.fromarray(arr).resize((load_size, load_size), resample=Image.BICUBIC)
        out.append(torch.from_numpy(np.asarray(pil, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1))
    x = torch.stack(out)
    x = kornia.geometry.resize(x, (size, size), interpolation="bicubic", align_corners=True, antialias=False)
    x = (x + 1.0) / 2.0
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def encode_reference(clip_vision, images, load_size=512):
    """-> ComfyUI CLIP_VISION_OUTPUT (``image_embeds`` [B, D]) of ``images`` with the official preprocessing
    (``load_size``: the PIL resize before the kernel resize; training uses its own resolution)."""
    import comfy.clip_vision
    import comfy.model_management

    size = int(getattr(clip_vision, "image_size", 224))
    pixels = official_pixels(images, size=size, load_size=load_size)
    comfy.model_management.load_model_gpu(clip_vision.patcher)
    with torch.no_grad():
        out = clip_vision.model(pixel_values=pixels.to(clip_vision.load_device).float(), intermediate_output=-2)
    result = comfy.clip_vision.Output()
    device = comfy.model_management.intermediate_device()
    result["last_hidden_state"] = out[0].to(device)
    result["penultimate_hidden_states"] = out[1].to(device)
    result["image_embeds"] = out[2].to(device)
    return result
