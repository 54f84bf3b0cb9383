"""e4e encoder: official key layout (strict), independent functional oracles for the backbone and
the style head, in-graph loading and batched / deterministic encoding, and bad checkpoints.

The full-size model (267M parameters, random weights) forwards at 256x256 in only one test
(test_graph_encode_batched_matches_single); the oracles run on cheap pieces."""
from pathlib import Path
import argparse
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from harness.comfy_host import PromptFailed

E4E_ENCODER_KEYS = 621
E4E_ENCODER_PARAMS = 267_136_704  # methods.md: the official encoder's parameter count


def _e4e():
    from comfyui_face_personalization.models_loader.methods.wplus import e4e

    return e4e


@pytest.fixture(scope="module")
def e4e_ckpt(e4e_path):
    return torch.load(str(e4e_path), map_location="cpu", weights_only=True)


# ------------------------------------------------------------------ key layout

def test_checkpoint_layout_and_strict_key_coverage(e4e_ckpt, e4e_encoder):
    """The generated file has the official layout; every encoder.* key is consumed, none is missing,
    decoder.* keys are ignored, and the loaded tensors are the file's tensors."""
    assert set(e4e_ckpt) == {"state_dict", "opts", "latent_avg"}
    assert isinstance(e4e_ckpt["opts"], dict) and e4e_ckpt["opts"]["encoder_type"] == "Encoder4Editing"
    assert tuple(e4e_ckpt["latent_avg"].shape) == (18, 512)
    sd = e4e_ckpt["state_dict"]
    enc_keys = {k[len("encoder."):] for k in sd if k.startswith("encoder.")}
    assert any(k.startswith("decoder.") for k in sd)
    assert len(enc_keys) == E4E_ENCODER_KEYS

    net_sd = e4e_encoder.net.state_dict()
    assert set(net_sd) == enc_keys  # strict: nothing missing, nothing unexpected
    n_params = sum(p.numel() for p in e4e_encoder.net.parameters())
    assert n_params == E4E_ENCODER_PARAMS
    for k in enc_keys:
        assert torch.equal(net_sd[k], sd["encoder." + k]), k
    # the official Encoder4Editing names, spot-checked
    for k in ("input_layer.0.weight", "input_layer.2.weight", "body.3.shortcut_layer.0.weight",
              "body.23.res_layer.5.fc2.weight", "styles.17.convs.10.weight", "styles.0.linear.bias",
              "latlayer1.weight", "latlayer2.bias"):
        assert k in enc_keys, k
    assert torch.equal(e4e_encoder.latent_avg, e4e_ckpt["latent_avg"])
    assert not any(p.requires_grad for p in e4e_encoder.net.parameters())


def test_safetensors_variant_loads_same_weights(e4e_encoder):
    from fixtures import tiny

    enc2 = _e4e().load_e4e(str(tiny.ensure("e4e_safetensors")))
    sd1, sd2 = e4e_encoder.net.state_dict(), enc2.net.state_dict()
    assert set(sd1) == set(sd2)
    for k in sd1:
        assert sd2[k].dtype == sd1[k].dtype  # fp16 file -> fp32 module
        expect = sd1[k].half().float() if sd1[k].is_floating_point() else sd1[k]
        assert torch.equal(sd2[k], expect), k
    assert torch.equal(enc2.latent_avg, e4e_encoder.latent_avg)
    assert enc2.net.encoder_type == "Encoder4Editing"


# ------------------------------------------------------------------ independent oracles

def _bn(x, sd, p):
    return F.batch_norm(x, sd[p + "running_mean"], sd[p + "running_var"], sd[p + "weight"], sd[p + "bias"],
                        training=False, momentum=0.0, eps=1e-5)


def _ref_unit(x, sd, p, in_c, depth, stride):
    """bottleneck_IR_SE written out functionally."""
    if in_c == depth:
        short = x[:, :, ::stride, ::stride]  # MaxPool2d(kernel 1, stride)
    else:
        short = _bn(F.conv2d(x, sd[p + "shortcut_layer.0.weight"], stride=stride), sd, p + "shortcut_layer.1.")
    r = _bn(x, sd, p + "res_layer.0.")
    r = F.conv2d(r, sd[p + "res_layer.1.weight"], padding=1)
    r = F.prelu(r, sd[p + "res_layer.2.weight"])
    r = F.conv2d(r, sd[p + "res_layer.3.weight"], stride=stride, padding=1)
    r = _bn(r, sd, p + "res_layer.4.")
    s = r.mean(dim=(2, 3), keepdim=True)
    s = torch.sigmoid(F.conv2d(torch.relu(F.conv2d(s, sd[p + "res_layer.5.fc1.weight"])), sd[p + "res_layer.5.fc2.weight"]))
    return r * s + short


def _ref_backbone(x, sd):
    units = []
    for in_c, depth, n in ((64, 64, 3), (64, 128, 4), (128, 256, 14), (256, 512, 3)):
        units += [(in_c, depth, 2)] + [(depth, depth, 1)] * (n - 1)
    assert len(units) == 24
    x = F.prelu(_bn(F.conv2d(x, sd["input_layer.0.weight"], padding=1), sd, "input_layer.1."), sd["input_layer.2.weight"])
    taps = {}
    for i, u in enumerate(units):
        x = _ref_unit(x, sd, f"body.{i}.", *u)
        taps[i] = x
    return taps[6], taps[20], taps[23]


def _ref_style(x, sd, i):
    """GradualStyleBlock: log2(spatial) strided convs + LeakyReLU(0.01), then EqualLinear (lr_mul 1)."""
    spatial = 16 if i < 3 else 32 if i < 7 else 64
    p = f"styles.{i}."
    for k in range(int(math.log2(spatial))):
        x = F.leaky_relu(F.conv2d(x, sd[f"{p}convs.{2 * k}.weight"], sd[f"{p}convs.{2 * k}.bias"], stride=2, padding=1), 0.01)
    x = x.reshape(x.shape[0], 512)
    return x @ (sd[p + "linear.weight"] / math.sqrt(512)).t() + sd[p + "linear.bias"]


def _file_sd(ckpt):
    """encoder weights straight from the checkpoint file (not from our module)."""
    return {k[len("encoder."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("encoder.")}


def test_backbone_matches_functional_reference(e4e_encoder, e4e_ckpt):
    sd = _file_sd(e4e_ckpt)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = e4e_encoder.net.features(x)
        ref = _ref_backbone(x, sd)
    for name, a, b in zip(("c1", "c2", "c3"), ours, ref):
        assert a.shape == b.shape, name
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4, msg=name)
    assert ours[0].shape[1:] == (128, 16, 16) and ours[1].shape[1:] == (256, 8, 8) and ours[2].shape[1:] == (512, 4, 4)


def test_style_head_and_wplus_structure(e4e_encoder, e4e_ckpt, monkeypatch):
    """FPN + 18 GradualStyleBlocks + w[:,0] = w0, w[:,i] = w0 + delta_i, + latent_avg, with the backbone
    features replaced by random tensors of the 256x256 shapes (cheap)."""
    g = torch.Generator().manual_seed(2)
    c1, c2, c3 = (torch.randn(1, 128, 64, 64, generator=g), torch.randn(1, 256, 32, 32, generator=g),
                  torch.randn(1, 512, 16, 16, generator=g))
    monkeypatch.setattr(e4e_encoder.net, "features", lambda x: (c1, c2, c3))
    images = torch.rand(1, 256, 256, 3, generator=g)
    ours = e4e_encoder.encode(images)

    sd = _file_sd(e4e_ckpt)
    with torch.no_grad():
        up = lambda a, b: F.interpolate(a, size=b.shape[-2:], mode="bilinear", align_corners=True) + b  # noqa: E731
        p2 = up(c3, F.conv2d(c2, sd["latlayer1.weight"], sd["latlayer1.bias"]))
        p1 = up(p2, F.conv2d(c1, sd["latlayer2.weight"], sd["latlayer2.bias"]))
        w0 = _ref_style(c3, sd, 0)
        rows = [w0]
        for i in range(1, 18):
            rows.append(w0 + _ref_style(c3 if i < 3 else p2 if i < 7 else p1, sd, i))
        ref = torch.stack(rows, 1) + e4e_ckpt["latent_avg"][None]
    assert ours.shape == (1, 18, 512) and ours.dtype == torch.float32
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(ours[:, 0], ours[:, 1])  # the deltas are really applied


def test_preprocess_normalisation_and_resize(comfy):
    e4e = _e4e()
    x = torch.rand(1, 256, 256, 3)
    out = e4e.preprocess(x)
    torch.testing.assert_close(out, ((x * 255 - 127.5) / 127.5).permute(0, 3, 1, 2))
    # resize reference: the official e4e transform, PIL Resize((256, 256)) (bilinear) on the uint8 photo
    import numpy as np
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    for h, w in ((512, 512), (300, 400), (128, 128)):
        img = (torch.rand(h, w, 3, generator=g) * 255).round().to(torch.uint8)
        pil = Image.fromarray(img.numpy()).resize((256, 256), Image.BILINEAR)
        ref = torch.from_numpy(np.array(pil)).float().div(255).permute(2, 0, 1)[None] * 2 - 1
        ours = e4e.preprocess(img.float()[None] / 255)
        assert ours.shape == (1, 3, 256, 256)
        diff = (ours - ref).abs()
        # PIL rounds its output to uint8: at most one grey level (2/255 in [-1, 1]) apart, ~0.3 level on average
        assert diff.max().item() <= 2 / 255 + 1e-5, (h, w, diff.max().item() * 127.5)
        assert diff.mean().item() <= 0.5 * 2 / 255, (h, w, diff.mean().item() * 127.5)
    with pytest.raises(ValueError, match=r"\[B,H,W,3\]"):
        e4e.preprocess(torch.rand(3, 256, 256))


# ------------------------------------------------------------------ encode (cheap stand-in network)

class _FakeNet(torch.nn.Module):
    """Stand-in with the Encoder4Editing interface: code = per-channel image means tiled (cheap)."""
    style_count = 18
    encoder_type = "Encoder4Editing"

    def __init__(self):
        super().__init__()
        self.calls = []

    def forward(self, x):
        self.calls.append(x.shape[0])
        m = x.mean(dim=(2, 3))  # [B,3]
        return m.repeat(1, 171)[:, :512].unsqueeze(1).repeat(1, 18, 1) * torch.arange(1, 19).view(1, 18, 1)


def test_encode_images_mask_chunks_and_average(comfy):
    e4e = _e4e()
    net = _FakeNet()
    avg = torch.randn(18, 512)
    enc = e4e.E4EEncoder(net, avg)
    g = torch.Generator().manual_seed(3)
    img = torch.rand(3, 64, 64, 3, generator=g)
    mask = (torch.rand(1, 32, 32, generator=g) > 0.5).float()
    out = e4e.encode_images(enc, img, mask=mask, batch_size=2)
    assert net.calls == [2, 1]
    m = F.interpolate(mask[:, None], size=(64, 64), mode="bilinear")[:, 0, ..., None]
    whitened = img * m + (1 - m)
    x = F.interpolate(whitened.permute(0, 3, 1, 2), size=(256, 256), mode="bilinear", antialias=True) * 2 - 1
    ref = net(x) + avg
    torch.testing.assert_close(out, ref)
    mean = e4e.encode_images(enc, img, mask=mask, average_batch=True)
    torch.testing.assert_close(mean, ref.mean(0, keepdim=True))
    with pytest.raises(ValueError, match="masks for 3 images"):
        e4e.encode_images(enc, img, mask=torch.ones(2, 64, 64))
    with pytest.raises(ValueError, match="E4E_ENCODER"):
        e4e.encode_images(object(), img)


# ------------------------------------------------------------------ in ComfyUI, full size

def _png(comfy_home, name, seed):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:64, 0:64]
    arr = np.stack([(xx * 4 + seed * 40) % 256, (yy * 4) % 256, rng.integers(0, 256, (64, 64))], -1).astype(np.uint8)
    path = comfy_home / "input" / name
    Image.fromarray(arr).save(path)
    return torch.from_numpy(arr.astype(np.float32) / 255.0)[None]


def test_graph_encode_batched_matches_single(comfy, comfy_home, e4e_name, e4e_encoder, tmp_path):
    """LoadE4EEncoder -> WPlusEncode (batch of 2, constant mask 0.7) in a real graph equals two single
    encodes of the whitened images (deterministic across calls and batch sizes)."""
    a = _png(comfy_home, "wplus_enc_a.png", 1)
    b = _png(comfy_home, "wplus_enc_b.png", 2)
    out_file = Path(comfy.pack.models_loader.files.target_dir("wplus_codes")) / "codes_batched"  # saves stay in models/
    prompt = {
        "enc": {"class_type": "LoadE4EEncoder", "inputs": {"encoder_name": e4e_name}},
        "ia": {"class_type": "LoadImage", "inputs": {"image": "wplus_enc_a.png"}},
        "ib": {"class_type": "LoadImage", "inputs": {"image": "wplus_enc_b.png"}},
        "batch": {"class_type": "ImageBatch", "inputs": {"image1": ["ia", 0], "image2": ["ib", 0]}},
        "mask": {"class_type": "SolidMask", "inputs": {"value": 0.7, "width": 64, "height": 64}},
        "encode": {"class_type": "WPlusEncode", "inputs": {"e4e": ["enc", 0], "image": ["batch", 0], "mask": ["mask", 0],
                                                           "average_batch": False, "batch_size": 2}},
        "save": {"class_type": "FP_SaveWPlus", "inputs": {"wplus": ["encode", 0], "filename": str(out_file),
                                                         "format": "safetensors", "overwrite": True}},
    }
    outputs = comfy.run(prompt)
    assert outputs["save"]["text"] == ["saved " + str(out_file) + ".safetensors"]
    import safetensors.torch

    batched = safetensors.torch.load_file(str(out_file) + ".safetensors")["wplus"]
    assert batched.shape == (2, 18, 512) and batched.dtype == torch.float32
    singles = torch.cat([e4e_encoder.encode(img * 0.7 + 0.3) for img in (a, b)])
    torch.testing.assert_close(batched, singles, rtol=0, atol=1e-5)
    assert (batched[0] - batched[1]).abs().max() > 1e-3  # different images, different codes
    assert torch.isfinite(batched).all()


# ------------------------------------------------------------------ bad checkpoints

def test_wrong_checkpoint_in_graph(comfy, comfy_home, tiny_sd15):
    e4e_dir = comfy_home / "models" / "e4e"
    e4e_dir.mkdir(parents=True, exist_ok=True)
    link = e4e_dir / "not_e4e_sd15.safetensors"
    if not link.exists():
        link.symlink_to(comfy_home / "models" / "checkpoints" / tiny_sd15)
    prompt = {
        "enc": {"class_type": "LoadE4EEncoder", "inputs": {"encoder_name": link.name}},
        "img": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0}},
        "encode": {"class_type": "WPlusEncode", "inputs": {"e4e": ["enc", 0], "image": ["img", 0], "average_batch": False}},
        "save": {"class_type": "FP_SaveWPlus", "inputs": {"wplus": ["encode", 0], "filename": "never", "format": "pt",
                                                         "overwrite": True}},
    }
    with pytest.raises(PromptFailed, match=r"not an e4e encoder: expected keys encoder\.input_layer"):
        comfy.run(prompt)


def test_wrong_checkpoints_direct(comfy, tmp_path):
    e4e = _e4e()
    adapter = tmp_path / "wplus_adapter.pt"
    torch.save({"w_proj": {"proj_0.weight": torch.zeros(4, 8)}, "wplus_adapter": {"1.to_q_wplus.weight": torch.zeros(4, 4)}}, adapter)
    with pytest.raises(ValueError, match=r"wplus_adapter\.pt is not an e4e encoder: expected keys encoder\.input_layer.*w_proj"):
        e4e.load_e4e(str(adapter))
    pickled = tmp_path / "namespace.pt"
    torch.save({"opts": argparse.Namespace(a=1)}, pickled)
    with pytest.raises(ValueError, match="refused to unpickle"):
        e4e.load_e4e(str(pickled))
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"definitely not a checkpoint")
    with pytest.raises(ValueError, match="not a torch checkpoint"):
        e4e.load_e4e(str(garbage))


def test_truncated_state_dict_reports_missing_keys(e4e_encoder, tmp_path):
    e4e = _e4e()
    sd = {f"encoder.{k}": v for k, v in e4e_encoder.net.state_dict().items() if not k.startswith("styles.5.")}
    with pytest.raises(ValueError, match=r"missing \['styles\.5\."):
        e4e.build_from_state_dict({k[8:]: v for k, v in sd.items()}, e4e_encoder.latent_avg, {}, "cut.pt")
    few = {k: v for k, v in e4e_encoder.net.state_dict().items() if not k.startswith("styles.17.")}
    with pytest.raises(ValueError, match="predicts 17 W\\+ rows"):
        e4e.build_from_state_dict(few, None, {}, "cars.pt")
