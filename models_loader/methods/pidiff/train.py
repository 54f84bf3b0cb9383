"""PIDiff per-identity fine-tuning (paper ``002_*`` §3.3 and §4.1; no public code).

What the paper states, and this trainer's defaults: only the mapping network F and the SCA projections
W_q', W_k', W_v' train; W_q', W_k', W_v' start from the UNet's W_q, W_k, W_v of the same cross-attention
layer (or, optionally, from an official ``wplus_adapter.bin``); random templates with a pseudo-word
("an image of S*", "a cropped photo of S*", ...); ε-MSE with t uniform over the 1000 DDPM steps; W+ codes
of ≥ 6 photos of the identity with random Gaussian noise added; text dropped with p 0.3 (""), the visual
prompt dropped with p 0.5 (W+ = zeros through F, the W+ Adapter's convention), independent draws;
AdamW lr 1e-4, weight decay 0.01, batch 4, 600 steps; SD 1.5; λ = 1 in training.

Not in the paper (choices of this pack, documented in the node tooltips): the noise std on W+ (0.05), the
F initialisation when not starting from a W+ Adapter file (torch's default Linear/LayerNorm init, like the
W+ Adapter's ``WProjModel``), the pseudo-word ("sks") and the template list beyond the two quoted.

The training forward is the same as the W+ Adapter's (:mod:`..wplus.train`): ComfyUI's UNet with the inference
callback of the shared residual cross-attention running the trainable modules.
"""
import json

import torch
import torch.nn.functional as F

from ...training import diffusion, jobfiles
from ..wplus import train as wt

TEMPLATES = ("an image of {}", "a cropped photo of {}", "a photo of {}", "a close-up photo of {}", "a portrait of {}",
             "a good photo of {}", "a bright photo of {}", "the photo of {}", "a rendering of {}", "a face of {}")
OFFICIAL = {"steps": 600, "batch_size": 4, "lr": 1e-4, "weight_decay": 1e-2, "drop_text": 0.3, "drop_visual": 0.5,
            "wplus_noise": 0.05, "pseudo_word": "sks"}


class PIDiffTrainer(wt.ResidualTrainerBase):
    method = "pidiff"

    def __init__(self, model_patcher, clip, vae, pixels, wplus, init=None, batch_size=4, lr=1e-4, weight_decay=1e-2,
                 drop_text=0.3, drop_visual=0.5, wplus_noise=0.05, pseudo_word="sks", templates=TEMPLATES, seed=0,
                 device="cpu", output_dirs=None, gradient_checkpointing=False, preview_prompt=None, preview_steps=20,
                 preview_seed=0):
        self.cfg = dict(OFFICIAL, batch_size=int(batch_size), lr=float(lr), weight_decay=float(weight_decay),
                        drop_text=float(drop_text), drop_visual=float(drop_visual), wplus_noise=float(wplus_noise),
                        pseudo_word=str(pseudo_word))
        self.templates = tuple(templates)
        self.device = torch.device(device)
        self.output_dirs = dict(output_dirs or {})
        self.checkpointing = bool(gradient_checkpointing)
        self.patcher = model_patcher
        self.model = model_patcher.model
        w = wplus.detach().float().reshape(-1, 18, 512)
        if w.shape[0] != pixels.shape[0]:
            raise ValueError(f"{pixels.shape[0]} photos but {w.shape[0]} W+ codes: one code per photo")
        self.wplus = w
        self.clip, self.vae = clip, vae
        self.resolution = int(pixels.shape[-1])
        self.preview_prompt = preview_prompt or f"a photo of {self.cfg['pseudo_word']}"
        self.preview_steps, self.preview_seed = int(preview_steps), int(preview_seed)
        self.source = wt.LatentSource(vae, self.model, pixels, self.device)
        self.prompts = wt.PromptEncoder(clip, self.model, tuple(pixels.shape[-2:]), self.device)
        self.acp = diffusion.alphas_cumprod(self.model).to(self.device)
        self.kind = diffusion.prediction_type(self.model)
        self.mapping, self.adapter = wt.initial_modules(self.model, init, seed, self.device)
        self.transformer_options, self.holder = wt.residual_training_options(model_patcher, self.adapter,
                                                                             "pidiff_sca_train")

    def trainable(self):
        """PIDiff file keys: ``mapping.*`` (F) and ``sca.{n}.to_q|to_k|to_v.weight``."""
        out = {f"mapping.{k}": p for k, p in self.mapping.named_parameters()}
        for n, layer in enumerate(self.adapter):
            out[f"sca.{n}.to_q.weight"] = layer.to_q_wplus.weight
            out[f"sca.{n}.to_k.weight"] = layer.to_k_wplus.weight
            out[f"sca.{n}.to_v.weight"] = layer.to_v_wplus.weight
        return out

    def sample_inputs(self, step, micro, generator):
        g, b = generator, self.cfg["batch_size"]
        inp = self.first_draws(self.wplus.shape[0], g)
        inp.update({
            "wplus": self.wplus[inp["index"]],
            "wplus_noise": torch.randn((b, 18, 512), generator=g) * self.cfg["wplus_noise"],
            "drop_text": torch.rand((b,), generator=g, dtype=torch.float64) < self.cfg["drop_text"],
            "drop_wplus": torch.rand((b,), generator=g, dtype=torch.float64) < self.cfg["drop_visual"],
        })
        texts = [self.templates[wt._randint(g, 0, len(self.templates) - 1)].format(self.cfg["pseudo_word"])
                 for _ in range(b)]
        inp["prompts"] = ["" if d else t for t, d in zip(texts, inp["drop_text"].tolist())]
        return inp

    def loss_terms(self, inputs):
        dev = self.device
        x_t, t, target, ctx, y = self.noised(inputs)
        w = (inputs["wplus"] + inputs["wplus_noise"]).to(dev)
        w = torch.where(inputs["drop_wplus"].to(dev).view(-1, 1, 1), torch.zeros_like(w), w)
        self.holder.tokens = self.mapping(w)
        pred = wt.unet_forward(self.model, x_t, t, ctx, self.transformer_options, y, self.checkpointing)
        # the tokens stay in the holder: with gradient checkpointing the backward pass re-runs the UNet blocks, and
        # their residual attention reads them again (the next micro-batch sets its own)
        mse = F.mse_loss(pred.float(), target.float(), reduction="mean")
        return {"loss": mse, "mse": mse}

    def weights(self):
        return wt.weights_of(self.mapping, self.adapter, "pidiff")

    def export(self, name, meta):
        from safetensors.torch import save_file

        from .weights import FORMAT, FORMAT_VERSION, to_state_dict

        path, meta_path = jobfiles.fresh_output_paths(self.output_dirs["pidiff"], name, (".safetensors", ".json"))
        md = jobfiles.string_metadata(meta)
        md.update({"format": FORMAT, "format_version": FORMAT_VERSION, "lambda": "0.4",
                   "base_model": str((meta or {}).get("base_model", ""))})
        save_file(to_state_dict(self.weights()), path, metadata=md)
        with open(meta_path, "w", encoding="utf-8") as f:
            json.dump(dict(meta or {}), f, indent=1)
        return [{"path": path, "folder": "pidiff", "name": f"{name}.safetensors", "kind": "safetensors"},
                {"path": meta_path, "folder": "pidiff", "name": None, "kind": "metadata"}]

    def preview(self, step, out_dir):
        """One image with FP_ApplyStyleCrossAttention's patch (strength 0.4, the paper's inference value) of the
        current F + SCA weights and photo 0's W+ code."""
        return wt.residual_preview(self, "pidiff_sca", self.wplus[:1], self.preview_prompt, step, out_dir)


RESULT_TYPE = "PIDIFF"


def build_trainer(spec, base, job_dir):
    from ...training.spec import photo_paths
    from ..wplus.adapter import load_wplus_adapter

    p = spec.params
    files = photo_paths(spec, job_dir)
    pixels = torch.stack([wt.load_image(f, spec.resolution) for f in files])
    codes = wt.load_codes(job_dir, p, len(files))
    init = load_wplus_adapter(p["init_file"]) if p.get("init_file") else None
    return PIDiffTrainer(base.model, base.clip, base.vae, pixels, codes, init=init, batch_size=spec.batch,
                         lr=spec.learning_rate, weight_decay=float(p.get("weight_decay", 1e-2)),
                         drop_text=float(p.get("drop_text", 0.3)), drop_visual=float(p.get("drop_visual", 0.5)),
                         wplus_noise=float(p.get("wplus_noise", 0.05)), pseudo_word=p.get("pseudo_word", "sks"),
                         seed=spec.seed, device=base.device, output_dirs=spec.output_dirs,
                         gradient_checkpointing=spec.gradient_checkpointing, preview_prompt=p.get("preview_prompt"),
                         preview_steps=spec.preview_steps, preview_seed=spec.seed)


def load_result(outputs):
    from .weights import load_pidiff

    return load_pidiff(jobfiles.written_safetensors(outputs, "PIDiff"))
