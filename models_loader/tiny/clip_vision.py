"""Tiny CLIP vision model of the ViT-B/32 family (patch 32, 224 px, quick_gelu, 512-d projection: the
image-embedding width PersonaMagic's bypass takes), reduced width/depth. HF
``CLIPVisionModelWithProjection`` layout, as ``openai/clip-vit-base-patch32`` ships it."""
from . import init_params_, register, seeded_generator

TINY_VITB32 = dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=1,
                   patch_size=32, image_size=224, projection_dim=512, hidden_act="quick_gelu", layer_norm_eps=1e-5)


def build_vitb32(kind="clip_vision_vitb32"):
    import torch
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    model = CLIPVisionModelWithProjection(CLIPVisionConfig(**TINY_VITB32)).eval()
    gen = seeded_generator(kind)
    init_params_(model, gen, std=0.05)
    with torch.no_grad():  # non-trivial norms/biases so a wrong mapping cannot pass a comparison
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.add_(torch.randn(p.shape, generator=gen) * 0.05)
    return model


@register("clip_vision_vitb32", "clip_vision_vitb32_tiny.safetensors", version=1)
def _gen_vitb32(path):
    import safetensors.torch

    sd = {k: v.contiguous() for k, v in build_vitb32().state_dict().items() if "position_ids" not in k}
    safetensors.torch.save_file(sd, str(path))
