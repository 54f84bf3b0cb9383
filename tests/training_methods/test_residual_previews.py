"""Previews and the ID score of the residual-attention trainers (W+ Adapter Stage I / II, PIDiff): a preview is the
image the method's own Apply node makes with the trainer's current weights and a training photo's W+ code (ComfyUI's
sampler, bit for bit), and a job with ``preview_every`` writes previews/step_*.png, one ``id_scores.jsonl`` row per
preview and keeps ``best.pt`` at the best score. The tiny models give previews no face the tiny recognition model
finds, so the job test hands the loop a scorer that records what it is given and returns set scores (the real
``make_scorer`` returns None without a recognition pack, which the last test checks)."""
import os

import numpy as np
import pytest
import torch

from test_job_folder import _job

PREVIEW_STEPS = 3


def _mods():
    from comfyui_face_personalization.models_loader.methods.pidiff import train as pt
    from comfyui_face_personalization.models_loader.methods.wplus import train as wt
    from comfyui_face_personalization.models_loader.training import loop

    return wt, pt, loop


def _png(path):
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def _trainer(kind, sd15, photos, wcodes, shared_data):
    from fixtures import tiny

    from comfyui_face_personalization.models_loader.methods.wplus.adapter import load_wplus_adapter

    wt, pt, _ = _mods()
    mp, clip, vae = sd15
    pixels, masks, names = photos
    pixels = pixels[:2]
    common = dict(batch_size=1, lr=5e-3, preview_steps=PREVIEW_STEPS, preview_seed=11)
    if kind == "pidiff":
        return pt.PIDiffTrainer(mp, clip, vae, pixels, wcodes[:2], **common), "FP_ApplyStyleCrossAttention", 0.4, 0.0
    ex = [wt.Example(wcodes[i], ["a person on a bench"], masks[i], names[i]) for i in range(2)]
    if kind == "wplus1":
        return wt.WPlusAdapterTrainer(mp, clip, vae, pixels, ex, stage=1, **common), "ApplyResidualCrossAttention", 1.0, 0.2
    bank = wt.DirectionBank.from_folder(str(shared_data / "wplus"))
    init = load_wplus_adapter(tiny.ensure("wplus_adapter_sd15"))
    return (wt.WPlusAdapterTrainer(mp, clip, vae, pixels, ex, stage=2, init=init, directions=bank, **common),
            "ApplyResidualCrossAttention", 1.0, 0.2)


@pytest.mark.parametrize("kind", ["wplus1", "wplus2", "pidiff"])
def test_preview_is_the_apply_nodes_image_of_the_current_weights(kind, sd15, photos, wcodes, shared_data, comfy,
                                                                 tmp_path):
    from comfyui_face_personalization.models_loader.training.preview import generate

    wt, pt, loop = _mods()
    mp, clip, vae = sd15
    trainer, apply_node, strength, start = _trainer(kind, sd15, photos, wcodes, shared_data)
    assert trainer.preview_prompt == {"pidiff": "a photo of sks", "wplus1": "a photo of a face",
                                      "wplus2": "a person on a bench"}[kind]
    from comfyui_face_personalization.models_loader.training.protocol import step_generator

    opt = loop.make_optimizer(trainer)
    loop.optimizer_step(trainer, opt, [trainer.sample_inputs(0, 0, step_generator(1, 0, 0))])
    (png,) = trainer.preview(1, str(tmp_path))
    assert os.path.basename(png) == "step_000001.png"
    got = _png(png)
    assert got.shape == (64, 64, 3)

    def image(model):
        out = generate(model, clip, vae, trainer.preview_prompt, 11, PREVIEW_STEPS, 64)
        return (out[0].numpy() * 255.0).round().clip(0, 255).astype(np.uint8)

    node = comfy.node_classes[apply_node]()
    patched = getattr(node, node.FUNCTION)(mp, trainer.weights(), wcodes[:1], strength, start, 1.0)[0]
    assert np.array_equal(got, image(patched)), "the preview is not the Apply node's image of the current weights"
    assert not np.array_equal(got, image(mp)), "the preview does not show the patch"
    # previews follow training: the same trainer before its step makes another image
    fresh, *_ = _trainer(kind, sd15, photos, wcodes, shared_data)
    (before,) = fresh.preview(0, str(tmp_path))
    assert not np.array_equal(_png(before), got)


@pytest.mark.parametrize("method,params", [("wplus", {"stage": 1}), ("pidiff", {})])
def test_job_writes_previews_id_scores_and_keeps_best(sd15, photos, wcodes, tmp_path, method, params):
    from comfyui_face_personalization.models_loader.training import jobfiles, registry
    from comfyui_face_personalization.models_loader.training.loop import Loop
    from comfyui_face_personalization.models_loader.training.protocol import BaseModels

    mp, clip, vae = sd15
    spec, job_dir = _job(tmp_path, method, photos, wcodes, params)
    spec.steps, spec.preview_every, spec.preview_steps, spec.checkpoint_every = 3, 1, 2, 10
    trainer = registry.method_module(method).build_trainer(
        spec, BaseModels(model=mp, clip=clip, vae=vae, device=torch.device("cpu")), job_dir)
    scores = {1: 0.2, 2: 0.6, 3: 0.4}
    seen = []

    def scorer(files):
        assert len(files) == 1 and os.path.isfile(files[0])
        seen.append(os.path.basename(files[0]))
        return scores[len(seen)]

    assert Loop(trainer, spec, job_dir, id_scorer=scorer).run() == "done"
    names = [f"step_{s:06d}.png" for s in (1, 2, 3)]
    assert seen == names
    assert jobfiles.list_previews(job_dir) == names
    for n in names:
        assert _png(os.path.join(job_dir, jobfiles.PREVIEWS_DIR, n)).shape == (64, 64, 3)
    rows = jobfiles.read_jsonl(os.path.join(job_dir, jobfiles.ID_FILE))
    assert [(r["step"], r["id_score"], r["files"]) for r in rows] == [(s, scores[s], [names[s - 1]]) for s in (1, 2, 3)]
    st = jobfiles.read_status(job_dir)
    assert st["status"] == "done" and st["best_id_score"] == 0.6 and st["best_step"] == 2
    assert st["id_score"] == 0.4 and st["preview"] == names[-1]
    best = jobfiles.load_checkpoint(job_dir, jobfiles.BEST_CKPT)
    assert best is not None and int(best["step"]) == 2
    # the last preview sits beside the exported file
    previews = [o for o in st["outputs"] if o["kind"] == "preview"]
    assert previews and all(os.path.isfile(o["path"]) for o in previews)
    assert np.array_equal(_png(previews[0]["path"]), _png(os.path.join(job_dir, jobfiles.PREVIEWS_DIR, names[-1])))


def test_no_recognition_pack_means_no_score(photos, tmp_path):
    from comfyui_face_personalization.models_loader.training.idscore import make_scorer

    assert make_scorer("", []) is None
    assert make_scorer(str(tmp_path / "no_such_pack"), []) is None
