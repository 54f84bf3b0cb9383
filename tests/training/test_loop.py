"""The generic loop on the CrossInit trainer (in-process, tiny SD1.5 at 64 px): cancel -> checkpoint
(weights_only) -> resume gives bit-identical final weights to an uninterrupted run; loss falls; the
exported files load in FP_LoadIdentityEmbedding and change the conditioning."""
import os

import torch

RES = 64


def _trainer(base, photos, out):
    from comfyui_face_personalization.models_loader.methods.crossinit import train as ci

    px = torch.stack([ci.load_photo(p, RES) for p in photos])
    return ci.CrossInitTrainer(base.model, base.clip, base.vae, px, trigger="<face>", lr=0.08, batch=1,
                               resolution=RES, output_dirs={"crossinit": str(out / "crossinit"),
                                                            "embeddings": str(out / "embeddings")})


def _spec(job_id, steps, name="t"):
    from comfyui_face_personalization.models_loader.training.spec import JobSpec

    return JobSpec(job_id=job_id, method="crossinit", name=name, base_model="", steps=steps, seed=5, batch=1,
                   grad_accum=2, learning_rate=0.08, resolution=RES, checkpoint_every=2)


def test_cancel_resume_is_bit_identical_and_exports(base_models, face_photos, tmp_path):
    from comfyui_face_personalization.models_loader.training import jobfiles
    from comfyui_face_personalization.models_loader.training.loop import Loop

    base = base_models("sd15")
    steps = 4
    a = _trainer(base, face_photos, tmp_path / "a")
    (tmp_path / "ja").mkdir()
    assert Loop(a, _spec("ja", steps, "a"), str(tmp_path / "ja")).run() == "done"

    b = _trainer(base, face_photos, tmp_path / "b")
    jb = tmp_path / "jb"
    jb.mkdir()
    orig = b.sample_inputs

    def cancel_during_third(step, micro, g):  # the flag is seen before step 4: 3 steps done
        if step == 2 and micro == 0 and not hasattr(b, "_cancelled"):
            b._cancelled = True
            jobfiles.set_flag(str(jb), jobfiles.CANCEL_FLAG)
        return orig(step, micro, g)

    b.sample_inputs = cancel_during_third
    assert Loop(b, _spec("jb", steps, "b"), str(jb)).run() == "cancelled"
    ckpt = jobfiles.load_checkpoint(str(jb))  # weights_only=True
    assert ckpt["step"] == 3 and set(ckpt["trainable"]) == {"clip_l"} and "state" in ckpt["optimizer"]
    jobfiles.set_flag(str(jb), jobfiles.CANCEL_FLAG, False)
    c = _trainer(base, face_photos, tmp_path / "b")  # a fresh process would start like this
    assert Loop(c, _spec("jb", steps, "b"), str(jb)).run() == "done"
    assert torch.equal(a.trainable()["clip_l"], c.trainable()["clip_l"]), "resume is not bit-identical"
    la = [r["loss"] for r in jobfiles.read_jsonl(str(tmp_path / "ja" / "loss.jsonl"))]
    lb = [r["loss"] for r in jobfiles.read_jsonl(str(jb / "loss.jsonl"))]
    assert la == lb and len(la) == steps

    st = jobfiles.read_status(str(tmp_path / "ja"))
    kinds = {o["kind"]: o["path"] for o in st["outputs"]}
    official = torch.load(kinds["official"], weights_only=True)
    assert set(official) == {"<face>_v0", "<face>_v1"} and official["<face>_v0"].shape == (768,)
    assert torch.equal(torch.stack([official["<face>_v0"], official["<face>_v1"]]), a.trainable()["clip_l"].detach())


def test_loss_falls_and_output_changes_conditioning(base_models, face_photos, tmp_path):
    from comfyui_face_personalization.models_loader.methods.crossinit import train as ci
    from comfyui_face_personalization.models_loader.training import loop
    from comfyui_face_personalization.models_loader.training.protocol import step_generator
    from comfyui_face_personalization.models_loader.textspace import apply_trigger

    base = base_models("sd15")
    t = _trainer(base, face_photos, tmp_path)
    opt = loop.make_optimizer(t)
    fixed = [t.sample_inputs(0, m, step_generator(1, 0, m)) for m in range(2)]

    def loss():
        with torch.no_grad():
            return sum(float(t.loss_terms(i)["loss"]) for i in fixed) / 2

    before = loss()
    for _ in range(6):
        loop.optimizer_step(t, opt, fixed)
    after = loss()
    assert after < before, (before, after)
    out = ci.export_files(t.vectors(), "<face>", "falls", {"method": "crossinit"},
                          {"crossinit": str(tmp_path / "ci"), "embeddings": str(tmp_path / "emb")})
    ident = ci.load_result(out)
    clip = base.clip
    text = "a photo of <face> person"
    c0 = apply_trigger(clip, "<face>", t.init).encode_from_tokens(apply_trigger(clip, "<face>", t.init).tokenize(text))
    c1 = apply_trigger(clip, "<face>", ident["vectors"]).encode_from_tokens(apply_trigger(clip, "<face>", ident["vectors"]).tokenize(text))
    assert not torch.allclose(c0, c1)
    assert os.path.isfile(os.path.join(tmp_path, "emb", "falls.safetensors"))
