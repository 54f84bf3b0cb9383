"""The CrossInit training step (engine: ComfyUI tokenizer + inline tokens + out-of-place encoder + the
generic loop's AdamW step) against an independent reference written here the way the official
``train_cross_init.py`` computes it: HF CLIPTokenizer with added ``<t>_v0 <t>_v1`` tokens, HF
``CLIPTextModel`` over the same weights with an extended embedding matrix, diffusers' ``DDPMScheduler``,
the VAE posterior sampled by hand, ``pairwise_distance`` written out with its eps, AdamW by hand."""
import copy
import hashlib
import json
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F



def _mods():
    from comfyui_face_personalization.models_loader.methods.crossinit import train as ci
    from comfyui_face_personalization.models_loader.training import loop

    return ci, loop

RES = 64
SCALE = 0.18215  # SD1.x / SD2.x latent scale factor
PAD = {"sd15": 49407, "sd2": 0}  # official tokenizers' pad ids (SD1 pads with EOS, SD2.1 with "!")
ENC_KEY = {"sd15": "clip_l", "sd2": "clip_h"}


# ------------------------------------------------------------------------------------------ reference

def _hf_text(clip, kind):
    """transformers CLIPTextModel over the CLIP's weights (config = ComfyUI's HF config json)."""
    from transformers import CLIPTextConfig, CLIPTextModel

    enc = getattr(clip.cond_stage_model, ENC_KEY[kind])
    import comfy.sd1_clip

    root = os.path.dirname(comfy.sd1_clip.__file__)
    cfg_file = {"sd15": os.path.join(root, "sd1_clip_config.json"),
                "sd2": os.path.join(root, "text_encoders", "sd2_clip_config.json")}[kind]
    cfg = CLIPTextConfig.from_json_file(cfg_file)
    cfg._attn_implementation = "eager"
    model = CLIPTextModel(cfg).eval()
    tm = getattr(model, "text_model", model)  # transformers 5 flattens CLIPTextModel
    sd = {k[len("text_model."):]: v.float() for k, v in enc.transformer.state_dict().items() if k.startswith("text_model.")}
    missing, unexpected = tm.load_state_dict(sd, strict=False)
    assert not [m for m in missing if "position_ids" not in m] and not unexpected, (missing, unexpected)
    tm.requires_grad_(False)
    return tm, enc


def _ref_ids(clip, kind, texts):
    """Official tokenization: HF tokenizer + added placeholder tokens, padded to 77 with the official pad id."""
    from comfyui_face_personalization.models_loader.textspace.trigger import sub_tokenizers as _sub_tokenizers

    hf_tok = copy.deepcopy(_sub_tokenizers(clip.tokenizer)[0][1].tokenizer)
    n0 = len(hf_tok)
    assert hf_tok.add_tokens(["<t>_v0", "<t>_v1"]) == 2
    ids = []
    for t in texts:
        row = hf_tok(t)["input_ids"]
        ids.append(row + [PAD[kind]] * (77 - len(row)))
    return torch.tensor(ids), [n0, n0 + 1]


def _ref_cond(hf, kind, ids, placeholder_ids, learned):
    w = hf.embeddings.token_embedding.weight
    table = torch.cat([w, learned], 0)  # the official resize_token_embeddings + init rows
    h = hf.embeddings(inputs_embeds=table[ids])
    n = h.shape[1]
    mask = torch.full((n, n), torch.finfo(h.dtype).min).triu(1)[None, None].expand(h.shape[0], 1, n, n)
    states = []
    for layer in hf.encoder.layers:
        h = layer(h, mask)
        h = h[0] if isinstance(h, tuple) else h
        states.append(h)
    # SD1: last_hidden_state; SD2.1 (diffusers' 23-layer encoder): layer 23 of 24, both after final LayerNorm
    return hf.final_layer_norm(states[-1] if kind == "sd15" else states[-2])


def _ref_pixels(path, flip):
    from PIL import Image, ImageOps

    im = Image.open(path).convert("RGB").resize((RES, RES), resample=Image.BICUBIC)
    if flip:
        im = ImageOps.mirror(im)
    return torch.from_numpy((np.array(im).astype(np.uint8) / 127.5 - 1.0).astype(np.float32)).permute(2, 0, 1)


@torch.no_grad()
def _ref_latents(vae, paths, photo, flip, eps):
    fsm = vae.first_stage_model
    rows = []
    for i in range(len(photo)):
        px = _ref_pixels(paths[int(photo[i])], bool(flip[i]))[None]
        moments = fsm.quant_conv(fsm.encoder(px))
        mean, logvar = moments.float().chunk(2, dim=1)
        std = torch.exp(0.5 * logvar.clamp(-30.0, 20.0))
        rows.append(mean + std * eps[i:i + 1])
    return torch.cat(rows) * SCALE


def reference_loss(base, kind, hf, paths, learned, init, inputs, ref_texts):
    from diffusers import DDPMScheduler

    sched = DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    x0 = _ref_latents(base.vae, paths, inputs["photo"], inputs["flip"], inputs["posterior_eps"])
    t = inputs["timesteps"].long()
    noisy = sched.add_noise(x0, inputs["noise"], t)
    ids, ph = _ref_ids(base.clip, kind, ref_texts)
    cond = _ref_cond(hf, kind, ids, ph, learned)
    pred = base.model.model.diffusion_model(noisy, t.float(), context=cond)
    mse = ((pred.float() - inputs["noise"]) ** 2).mean()
    reg = ((learned - init + 1e-6) ** 2).sum(-1).sqrt().mean() * 1e-5
    return mse, reg


class RefAdamW:
    def __init__(self, p, lr, b1=0.9, b2=0.999, eps=1e-8, wd=1e-2):
        self.p, self.lr, self.b1, self.b2, self.eps, self.wd = p.clone(), lr, b1, b2, eps, wd
        self.m = torch.zeros_like(p)
        self.v = torch.zeros_like(p)
        self.t = 0

    def step(self, g):
        self.t += 1
        self.p = self.p * (1 - self.lr * self.wd)
        self.m = self.b1 * self.m + (1 - self.b1) * g
        self.v = self.b2 * self.v + (1 - self.b2) * g * g
        mh = self.m / (1 - self.b1 ** self.t)
        vh = self.v / (1 - self.b2 ** self.t)
        self.p = self.p - self.lr * mh / (vh.sqrt() + self.eps)
        return self.p


# ------------------------------------------------------------------------------------------ helpers

def _digest(*modules):
    h = hashlib.sha256()
    for m in modules:
        for k, v in sorted(m.state_dict().items()):
            h.update(k.encode())
            h.update(v.detach().cpu().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes() if v.numel() else b"")
    return h.hexdigest()


def _inputs(seed, photo, flip, templates, timesteps):
    g = torch.Generator().manual_seed(seed)
    b = len(photo)
    return {"photo": torch.tensor(photo), "flip": torch.tensor(flip),
            "posterior_eps": torch.randn(b, 4, RES // 8, RES // 8, generator=g),
            "noise": torch.randn(b, 4, RES // 8, RES // 8, generator=g),
            "timesteps": torch.tensor(timesteps), "templates": templates}


def _split(ci, inputs, trigger):
    """Per-sample micro-batches (grad accumulation 2 × batch 1 = the reference's batch of 2)."""
    out = []
    for i in range(len(inputs["photo"])):
        out.append({"photo": inputs["photo"][i:i + 1], "flip": inputs["flip"][i:i + 1],
                    "posterior_eps": inputs["posterior_eps"][i:i + 1], "noise": inputs["noise"][i:i + 1],
                    "timesteps": inputs["timesteps"][i:i + 1],
                    "prompts": [ci.TEMPLATES[inputs["templates"][i]].format(ci.PHRASE.format(trigger))]})
    return out


def test_templates_are_the_official_list(comfy):
    ci, _ = _mods()
    assert len(ci.TEMPLATES) == 81 and len(set(ci.TEMPLATES)) == 57
    assert ci.TEMPLATES[0] == "a photo of a {}" and ci.TEMPLATES[27] == "an illustration of a {}"
    assert ci.TEMPLATES[-1] == "a depiction of a small {}"
    assert ci.TEMPLATES[0].format(ci.PHRASE.format("<t>_v0 <t>_v1")) == "a photo of a face of <t>_v0 <t>_v1 person"


@pytest.mark.parametrize("kind", ["sd15", "sd2"])
def test_crossinit_step_matches_reference(base_models, face_photos, kind):
    ci, loop = _mods()
    base = base_models(kind)
    photos = torch.stack([ci.load_photo(p, RES) for p in face_photos])
    trainer = ci.CrossInitTrainer(base.model, base.clip, base.vae, photos, trigger="<t>", lr=0.000625 * 8,
                                  batch=1, resolution=RES)
    # exactly the official trainable set: the two placeholder rows of the one text encoder
    tr = trainer.trainable()
    width = {"sd15": 768, "sd2": 1024}[kind]
    assert list(tr) == [ENC_KEY[kind]] and tuple(tr[ENC_KEY[kind]].shape) == (2, width)
    opt = loop.make_optimizer(trainer)
    assert type(opt) is torch.optim.AdamW and len(opt.param_groups) == 1
    g = opt.param_groups[0]
    assert g["lr"] == pytest.approx(0.005) and g["betas"] == (0.9, 0.999) and g["eps"] == 1e-8
    assert g["weight_decay"] == 1e-2
    frozen = (base.model.model, base.clip.cond_stage_model, base.vae.first_stage_model)
    before = _digest(*frozen)

    init = trainer.init[ENC_KEY[kind]].clone()
    hf, _ = _hf_text(base.clip, kind)
    ref_opt = RefAdamW(init, lr=0.005)
    learned = init.clone()
    steps = [_inputs(1, [0, 1], [False, True], [0, 40], [10, 900]),
             _inputs(2, [1, 1], [True, False], [62, 5], [500, 250]),
             _inputs(3, [0, 0], [False, False], [80, 13], [999, 0])]
    for k, inputs in enumerate(steps):
        res = loop.optimizer_step(trainer, opt, _split(ci, inputs, "<t>"), accum=2)
        ref_texts = [ci.TEMPLATES[i].format("face of <t>_v0 <t>_v1 person") for i in inputs["templates"]]
        leaf = learned.clone().requires_grad_(True)
        mse, reg = reference_loss(base, kind, hf, face_photos, leaf, init, inputs, ref_texts)
        grad, = torch.autograd.grad(mse + reg, leaf)
        if k == 0:
            assert res.terms["mse"] == pytest.approx(float(mse.detach()), rel=1e-5)
            assert res.terms["reg"] == pytest.approx(float(reg.detach()), rel=1e-5)
            assert res.terms["loss"] == pytest.approx(float((mse + reg).detach()), rel=1e-5)
            eg = res.grads[ENC_KEY[kind]]
            assert (eg - grad).abs().max() <= 1e-4 * grad.abs().max(), "gradient differs from the reference"
            assert float(reg.detach()) > 0  # pairwise_distance's eps: not zero at learned == init
        learned = ref_opt.step(grad)
        if k in (0, 2):
            diff = (res.after[ENC_KEY[kind]] - learned).abs().max()
            assert diff <= 2e-2 * 0.005, f"after {k + 1} AdamW steps the tokens differ by {diff}"
    assert _digest(*frozen) == before, "a frozen weight changed"


@pytest.mark.parametrize("kind", ["sd15", "sd2", "sdxl"])
def test_trainer_encoding_equals_comfyui_encoding(base_models, kind):
    """The trainer's differentiable encoding of a training prompt (its rows inserted out of place) equals
    ComfyUI's own encode_from_tokens of that prompt with the same rows applied as inference applies them."""
    from comfyui_face_personalization.models_loader.textspace import trigger as clip_tokens

    ci, _ = _mods()
    base = base_models(kind)
    clip = base.clip
    vec = {k: torch.randn(2, w, generator=torch.Generator().manual_seed(3)) * 0.02
           for k, w in clip_tokens.encoder_specs(clip)}
    trainer = ci.CrossInitTrainer(base.model, clip, base.vae, torch.zeros(1, 3, RES, RES), trigger="<t>", init=vec,
                                  resolution=RES)
    patched = clip_tokens.apply_trigger(clip, "<t>", vec)
    text = "a photo of a face of <t> person"
    with torch.no_grad():
        ref_cond, ref_pooled = patched.encode_from_tokens(patched.tokenize(text), return_pooled=True)
        cond, pooled = trainer.encode([text])
    assert cond.shape == ref_cond.shape
    assert (cond - ref_cond).abs().max() <= 1e-5 * ref_cond.abs().max()
    if kind == "sdxl":
        assert (pooled - ref_pooled).abs().max() <= 1e-5 * ref_pooled.abs().max()