"""The contract suite's method table: for every registered method, how to switch it on/off on a MODEL+CLIP
and which prompt carries it. Everything goes through the method registry (models_loader.methods.registry)."""
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

PROMPT = "a photo of {} person"
NEG = "blurry"
T_STAGE = 600.0  # a timestep where every method is on (PersonaMagic's mapper stage, RCA past its start)
TRIGGERS = {"crossinit": "<ci>", "adaface": "<ada>", "personamagic": "<persona>"}


@pytest.fixture(scope="module")
def base(comfy):
    import comfy.sd
    from fixtures import tiny

    model, clip, _ = comfy.sd.load_checkpoint_guess_config(str(tiny.ensure("sd15")))[:3]
    return model, clip


@pytest.fixture(scope="module")
def assets(comfy, shared_data):
    from fixtures import tiny
    from comfyui_face_personalization.models_loader.methods.registry import method

    wcode = torch.load(str(sorted((shared_data / "wplus" / "wcodes").glob("*.pth"))[0]), weights_only=True,
                       map_location="cpu").float()
    face = torch.load(str(shared_data / "adaface" / "mean_emb_keanureeves.pt"), map_location="cpu",
                      weights_only=True).float()
    return {
        "wplus_rca": (method("wplus_rca").load(str(tiny.ensure("wplus_adapter_sd15"))), wcode),
        "pidiff_sca": (method("pidiff_sca").load(str(tiny.ensure("pidiff_sd15"))), wcode),
        "crossinit": (method("crossinit").load()[:64], None),  # a slice of the names list keeps it fast
        "adaface": (method("adaface").load(str(tiny.ensure("adaface_pt")), str(tiny.ensure("adaface_arc2face"))), face),
        "personamagic": (method("personamagic").load(str(tiny.ensure("personamagic_mapper"))), None),
    }


class Stack:
    """Apply methods in order to (MODEL, CLIP); ``context()`` gives the cond/uncond contexts to feed the UNet."""

    def __init__(self, base, assets):
        self.model, self.clip = base
        self.assets = assets
        self.words = []
        self.staged = None  # (asset, on) of a PersonaMagic in the stack: its CONDITIONING is made last

    def apply(self, name, on=True, strength=None):
        from comfyui_face_personalization.models_loader.methods.registry import METHODS

        m = METHODS[name]
        asset, extra = self.assets[name]
        if m.kind == "attention_patch":
            kw = dict(m.off) if not on else ({} if strength is None else {"strength": strength})
            self.model = m.build(self.model, self.clip, asset, extra, start_percent=0.0, **kw).model
        elif m.kind == "text_tokens":
            args = (TRIGGERS[name],) + ((extra,) if extra is not None else ())
            self.clip = m.build(self.model, self.clip, asset, *args).clip
            if on:  # off: the trigger word is not in the prompt
                self.words.append(TRIGGERS[name])
        else:
            self.staged = (name, on)
        return self

    def context(self):
        """(MODEL, cond context [1, L, D], uncond context [1, L, D])."""
        import nodes
        from comfyui_face_personalization.models_loader.methods.registry import METHODS

        model, words = self.model, sorted(self.words)  # one prompt whatever the apply order
        if self.staged is not None:
            name, on = self.staged
            if on:
                words.append(TRIGGERS[name])
            p = METHODS[name].build(model, self.clip, self.assets[name][0], PROMPT.format(" ".join(words) or "a"),
                                    TRIGGERS[name])
            model, cond = p.model, p.positive[0][0]
        else:
            cond = nodes.CLIPTextEncode().encode(self.clip, PROMPT.format(" ".join(words) or "a"))[0][0][0]
        uncond = nodes.CLIPTextEncode().encode(self.clip, NEG)[0][0][0]
        return model, cond, uncond


@pytest.fixture
def stack(base, assets):
    return lambda: Stack(base, assets)


def eps(model, cond, uncond, cou=(0, 1), batch=1, t=T_STAGE, dm=None, dtype=torch.float32, seed=11, **extra):
    """One denoise call as the sampler makes it: one chunk per entry of ``cou`` of ``batch`` rows each."""
    ms = model.get_model_object("model_sampling")
    sigma = ms.sigma(torch.tensor([t]))
    x = torch.cat([torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(seed + i)) for i in range(batch)])
    x = torch.cat([x] * len(cou))
    ctx = torch.cat([(cond if c == 0 else uncond).expand(batch, -1, -1) for c in cou])
    to = dict(model.model_options["transformer_options"])
    to["cond_or_uncond"] = list(cou)
    to["sigmas"] = sigma.expand(x.shape[0]).float()
    to.update(extra)
    dm = dm or model.model.diffusion_model
    with torch.no_grad():
        return dm(x.to(dtype), timesteps=torch.full((x.shape[0],), t), context=ctx.to(dtype), transformer_options=to).float()
