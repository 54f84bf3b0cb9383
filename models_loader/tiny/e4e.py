"""Full-size e4e checkpoints (random weights) with the official key layout of
``e4e_ffhq_encode.pt``: ``{'state_dict': {'encoder.*' (621 keys), 'decoder.*' (two stand-in keys,
ignored by the loader)}, 'opts': plain dict, 'latent_avg': [18,512]}`` saved with ``torch.save``;
plus a safetensors variant (``encoder.*`` + ``latent_avg`` in fp16, options in the header).

"Tiny" only in the sense of the factory: the encoder is the real 267M-parameter IR-SE50 e4e, because
the key layout and the forward pass are what the tests check. ~1 GiB (pt) / 0.5 GiB (safetensors).
"""
from . import register, seeded_generator

OPTS = {
    "exp_dir": "experiments/ffhq_encode",
    "dataset_type": "ffhq_encode",
    "encoder_type": "Encoder4Editing",
    "batch_size": 8,
    "test_batch_size": 4,
    "learning_rate": 0.0001,
    "optim_name": "ranger",
    "train_decoder": False,
    "start_from_latent_avg": True,
    "lpips_type": "alex",
    "lpips_lambda": 0.8,
    "id_lambda": 0.5,
    "l2_lambda": 1.0,
    "w_discriminator_lambda": 0.1,
    "delta_norm": 2,
    "delta_norm_lambda": 0.0002,
    "progressive_steps": [0, 20000, 22000, 24000, 26000, 28000, 30000, 32000, 34000, 36000, 38000,
                          40000, 42000, 44000, 46000, 48000, 50000, 52000],
    "progressive_start": None,
    "progressive_step_every": 2000,
    "stylegan_weights": "pretrained_models/stylegan2-ffhq-config-f.pt",
    "stylegan_size": 1024,
    "checkpoint_path": None,
    "max_steps": 200000,
    "device": "cuda:0",
}


def random_e4e_state(gen):
    """Random but well-scaled weights for every ``Encoder4Editing`` tensor (non-trivial BN statistics,
    PReLU slopes and biases, so a wrong key mapping changes the output)."""
    import torch

    from ..methods.wplus.e4e import Encoder4Editing

    with torch.device("meta"):
        shapes = {k: (v.shape, v.dtype) for k, v in Encoder4Editing().state_dict().items()}
    out = {}
    for name, (shape, dtype) in shapes.items():
        leaf = name.rsplit(".", 1)[-1]
        if leaf == "num_batches_tracked":
            out[name] = torch.tensor(1000, dtype=torch.long)
            continue
        r = torch.randn(shape, generator=gen)
        if name.endswith("linear.weight"):  # EqualLinear: N(0,1), scaled by 1/sqrt(in) in forward
            t = r
        elif len(shape) == 4:  # conv: variance-preserving
            fan_in = shape[1] * shape[2] * shape[3]
            t = r * (1.0 / fan_in) ** 0.5
            if ".res_layer.3." in name:  # last conv of a residual branch: keep the 24-unit sum bounded
                t = t * 0.5
        elif leaf == "running_var":
            t = 1.0 + 0.2 * torch.rand(shape, generator=gen)
        elif leaf == "running_mean":
            t = 0.1 * r
        elif leaf == "weight" and ".res_layer.2." in name or name == "input_layer.2.weight":  # PReLU
            t = 0.25 + 0.05 * r
        elif leaf == "weight":  # BatchNorm gamma
            t = 1.0 + 0.1 * r
        else:  # biases (BatchNorm beta, conv, EqualLinear)
            t = 0.05 * r
        out[name] = t.to(dtype)
    return out


@register("e4e", "tiny_e4e_ffhq_encode.pt", version=1)
def _gen_pt(path):
    import torch

    gen = seeded_generator("e4e")
    sd = {f"encoder.{k}": v for k, v in random_e4e_state(gen).items()}
    # a couple of StyleGAN2 decoder keys, as in the official file: the loader must ignore them
    sd["decoder.input.input"] = torch.randn(1, 512, 4, 4, generator=gen)
    sd["decoder.style.1.weight"] = torch.randn(512, 512, generator=gen)
    latent_avg = (0.5 * torch.randn(512, generator=gen)).repeat(18, 1)  # official: [512] repeated to [18,512]
    torch.save({"state_dict": sd, "opts": dict(OPTS), "latent_avg": latent_avg}, str(path))


@register("e4e_safetensors", "tiny_e4e_ffhq_encode.safetensors", version=1)
def _gen_st(path):
    import safetensors.torch
    import torch

    from . import ensure

    ckpt = torch.load(str(ensure("e4e")), map_location="cpu", weights_only=True)
    sd = {k: (v.half() if v.is_floating_point() else v).contiguous()
          for k, v in ckpt["state_dict"].items() if k.startswith("encoder.")}
    sd["latent_avg"] = ckpt["latent_avg"].float().contiguous()
    safetensors.torch.save_file(sd, str(path), metadata={"encoder_type": "Encoder4Editing", "start_from_latent_avg": "true"})
