"""FP_TrainPIDiff and FP_TrainWPlusAdapter in the in-process ComfyUI executor (no server): bad input is refused
before any job is made, with messages naming what is wrong; a real graph submits a job (worker subprocess), waits
in FP_TrainingResult, and the trained file is listed by the loader without a restart, loads in the inference node
and changes what the model generates."""
import shutil

import numpy as np
import pytest
import torch

FROM_UNET = "(none: copy the UNet's own attention)"


@pytest.fixture(scope="module")
def e4e_name(install_model):
    return install_model("e4e", "e4e")


@pytest.fixture(scope="module")
def photo_dir(comfy_home, shared_data):
    d = comfy_home / "input" / "residual_train_photos"
    d.mkdir(parents=True, exist_ok=True)
    for name in ("celebahq_28017.jpg", "celebahq_28021.jpg"):
        shutil.copyfile(shared_data / "faces" / name, d / name)
    return d


def _inputs(node, ckpt, e4e_name, folder, name, **over):
    common = {"ckpt_name": ckpt, "face_analysis": ["det", 0], "e4e": ["e4e", 0], "name": name,
              "init_from": FROM_UNET, "preset": "custom", "steps": 2, "learning_rate": 1e-3, "batch_size": 1,
              "whiten_background": True, "grad_accum": 1, "resolution": 64, "seed": 3, "precision": "fp32",
              "gradient_checkpointing": False, "checkpoint_every": 10, "if_no_face": "error",
              "pause_while_generating": False, "mode": "run", "photo_folder": str(folder)}
    if node == "FP_TrainPIDiff":
        common.update(pseudo_word="sks", drop_text=0.3, drop_face=0.5, wplus_noise=0.05)
    else:
        common.update(stage="Stage I (faces)", caption="a photo of a person")
    common.update(over)
    return {"det": {"class_type": "FP_OfflineFaceDetector", "inputs": {"det_thresh": 0.5, "max_faces": 10}},
            "e4e": {"class_type": "LoadE4EEncoder", "inputs": {"encoder_name": e4e_name}},
            "train": {"class_type": node, "inputs": common}}


def _error(comfy, prompt):
    out = comfy.run(prompt, expect_error=True)
    assert "execution_error" in out, out
    return out["execution_error"]["exception_message"]


def _jobs(comfy):
    import os

    import folder_paths

    root = os.path.join(folder_paths.get_user_directory(), "fp_training", "jobs")
    return sorted(os.listdir(root)) if os.path.isdir(root) else []


@pytest.mark.parametrize("node", ["FP_TrainPIDiff", "FP_TrainWPlusAdapter"])
def test_bad_input_is_refused_before_a_job_exists(comfy, comfy_home, tiny_sd15, e4e_name, photo_dir, node):
    from PIL import Image
    from safetensors.torch import save_file

    before = _jobs(comfy)
    empty = comfy_home / "input" / f"empty_{node}"
    empty.mkdir(exist_ok=True)
    assert "no training photos" in _error(comfy, _inputs(node, tiny_sd15, e4e_name, empty, "bad_empty"))
    noface = comfy_home / "input" / f"noface_{node}"
    noface.mkdir(exist_ok=True)
    Image.fromarray(np.full((96, 96, 3), 128, np.uint8)).save(noface / "gray_wall.png")
    msg = _error(comfy, _inputs(node, tiny_sd15, e4e_name, noface, "bad_noface"))
    assert "no face found in" in msg and "gray_wall.png" in msg and "skip" in msg
    fake = comfy_home / "models" / "checkpoints" / f"not_sd_{node}.safetensors"
    save_file({"foo.weight": torch.zeros(2)}, str(fake))
    msg = _error(comfy, _inputs(node, fake.name, e4e_name, photo_dir, "bad_family"))
    assert fake.name in msg and "SD1.x" in msg
    # an output that exists is never overwritten
    folder, ext = ("pidiff", ".safetensors") if node == "FP_TrainPIDiff" else ("wplus", ".bin")
    taken = comfy_home / "models" / folder / f"taken_{node}{ext}"
    taken.parent.mkdir(parents=True, exist_ok=True)
    taken.write_bytes(b"keep me")
    msg = _error(comfy, _inputs(node, tiny_sd15, e4e_name, photo_dir, f"taken_{node}"))
    assert "exists" in msg and taken.name in msg
    assert taken.read_bytes() == b"keep me"
    if node == "FP_TrainPIDiff":
        assert "one word" in _error(comfy, _inputs(node, tiny_sd15, e4e_name, photo_dir, "x", pseudo_word="two words"))
    else:
        stage2 = _inputs(node, tiny_sd15, e4e_name, photo_dir, "x", stage="Stage II (in the wild)")
        assert "Stage I adapter" in _error(comfy, stage2)
    assert _jobs(comfy) == before, "a refused input must not leave a job behind"


def _sample(comfy, model, clip, seed=5):
    ks = comfy.node_classes["KSampler"]()
    enc = comfy.node_classes["CLIPTextEncode"]()
    pos, neg = enc.encode(clip, "a photo of a person")[0], enc.encode(clip, "blurry")[0]
    latent = {"samples": torch.zeros(1, 4, 8, 8)}
    return ks.sample(model, seed, 2, 5.0, "euler", "normal", pos, neg, latent)[0]["samples"]


GRAPHS = {
    "FP_TrainPIDiff": ("pidiff", "FP_LoadPIDiff", "pidiff_name", "FP_ApplyStyleCrossAttention", "pidiff", 0.4),
    "FP_TrainWPlusAdapter": ("wplus", "FP_LoadWPlusAdapter", "adapter_name", "ApplyResidualCrossAttention",
                             "wplus_adapter", 1.0),
}


@pytest.mark.parametrize("node", list(GRAPHS))
def test_graph_trains_then_generates_with_the_trained_asset(comfy, comfy_home, sd15, tiny_sd15, e4e_name, photo_dir,
                                                            wcodes, node):
    from comfyui_face_personalization.models_loader.methods.wplus.train import WPLUS_FILE
    from safetensors.torch import load_file

    folder, loader, loader_input, apply, socket, strength = GRAPHS[node]
    name = f"graph_{folder}"
    prompt = _inputs(node, tiny_sd15, e4e_name, photo_dir, name)
    prompt["ckpt"] = {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": tiny_sd15}}
    prompt["result"] = {"class_type": "FP_TrainingResult", "inputs": {"job": ["train", 0],
                                                                      "cancel_job_on_interrupt": False}}
    prompt["apply"] = {"class_type": apply, "inputs": {"model": ["ckpt", 0], socket: ["result", 0],
                                                       "wplus": ["wenc", 0], "strength": strength,
                                                       "start_percent": 0.0, "end_percent": 1.0}}
    prompt["photo"] = {"class_type": "LoadImage", "inputs": {"image": "celebahq_28017.jpg"}}
    shutil.copyfile(photo_dir / "celebahq_28017.jpg", comfy_home / "input" / "celebahq_28017.jpg")
    prompt["faces"] = {"class_type": "FP_FaceDetect", "inputs": {"image": ["photo", 0], "face_analysis": ["det", 0],
                                                                 "select": "largest", "index": 0,
                                                                 "if_no_face": "error", "det_thresh": 0.5}}
    prompt["align"] = {"class_type": "FP_FaceAlign", "inputs": {"image": ["photo", 0], "faces": ["faces", 0],
                                                                "template": "ffhq", "size": 256, "padding": "reflect"}}
    prompt["wenc"] = {"class_type": "WPlusEncode", "inputs": {"e4e": ["e4e", 0], "image": ["align", 0],
                                                              "average_batch": True, "batch_size": 4}}
    prompt["pos"] = {"class_type": "CLIPTextEncode", "inputs": {"text": "a photo of a person", "clip": ["ckpt", 1]}}
    prompt["neg"] = {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["ckpt", 1]}}
    prompt["latent"] = {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}}
    prompt["sample"] = {"class_type": "KSampler", "inputs": {
        "model": ["apply", 0], "positive": ["pos", 0], "negative": ["neg", 0], "latent_image": ["latent", 0],
        "seed": 0, "steps": 2, "cfg": 5.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}}
    prompt["decode"] = {"class_type": "VAEDecode", "inputs": {"samples": ["sample", 0], "vae": ["ckpt", 2]}}
    prompt["save"] = {"class_type": "SaveImage", "inputs": {"images": ["decode", 0], "filename_prefix": name}}
    outputs = comfy.run(prompt)
    assert comfy.output_files(outputs), "the graph generated no image"
    text = outputs["train"]["text"][0]
    job_id = text.split()[2]
    import os

    import folder_paths

    from comfyui_face_personalization.models_loader.training import jobfiles

    job_dir = os.path.join(folder_paths.get_user_directory(), "fp_training", "jobs", job_id)
    st = jobfiles.read_status(job_dir)
    assert st["status"] == "done" and st["step"] == 2, st
    # previews every checkpoint_every steps and at the end (the method's Apply node on the current weights), one
    # id_scores row each (no score: the offline detector has no recognition model), the last one beside the file
    assert jobfiles.list_previews(job_dir) == ["step_000002.png"]
    assert [(r["step"], r["id_score"]) for r in jobfiles.read_jsonl(os.path.join(job_dir, jobfiles.ID_FILE))] == [(2, None)]
    assert [o for o in st["outputs"] if o["kind"] == "preview"]
    # the job's W+ codes came from the pack's e4e on the aligned photos (two photos, one code each)
    codes = load_file(os.path.join(job_dir, WPLUS_FILE))["wplus"]
    assert codes.shape == (2, 18, 512) and torch.isfinite(codes).all()
    # listed in the loader's dropdown without a restart, loads there, and changes what the model generates
    files = comfy.node_classes[loader].INPUT_TYPES()["required"][loader_input][0]
    listed = [f for f in files if f.startswith(name + ".")]
    assert listed, f"{name} not in {loader}'s list {files}"
    asset = getattr(comfy.node_classes[loader](), comfy.node_classes[loader].FUNCTION)(listed[0])[0]
    mp, clip, _ = sd15
    applier = comfy.node_classes[apply]()
    patched = getattr(applier, applier.FUNCTION)(mp, asset, wcodes[:1], strength, 0.0, 1.0)[0]
    plain = _sample(comfy, mp, clip)
    with_asset = _sample(comfy, patched, clip)
    assert torch.isfinite(with_asset).all()
    assert (with_asset - plain).abs().max() > 1e-4, "the trained asset does not change the output"
    off = getattr(applier, applier.FUNCTION)(mp, asset, wcodes[:1], 0.0, 0.0, 1.0)[0]
    assert torch.equal(_sample(comfy, off, clip), plain), "strength 0 must leave the model unchanged"
    # metadata beside the file
    import json

    meta = json.load(open(os.path.join(os.path.dirname(folder_paths.get_full_path(folder, listed[0])), name + ".json")))
    assert meta["method"] == folder and meta["steps"] == 2 and meta["base_model"] == tiny_sd15
    assert len(meta["photos"]) == 2


def test_wplus_stage2_export_reads_captions_and_masks(comfy, comfy_home, tiny_sd15, e4e_name, install_model,
                                                      shared_data):
    """Stage II from an image folder: <photo>.txt captions and <photo>_mask.png masks go into the job folder, the
    direction bank is checked, and 'export job only' writes a resumable job plus its accelerate command."""
    import json
    import os

    from PIL import Image

    from comfyui_face_personalization.models_loader import paths

    init = install_model("wplus_adapter_sd15", "wplus")
    directions = paths.model_dir("wplus_directions")
    os.makedirs(directions, exist_ok=True)
    for rel in ("att_direction_scale.pth", "ganspace/ffhq_pca.pt", "ganspace/ganspace_configs.csv"):
        shutil.copyfile(shared_data / "wplus" / rel, os.path.join(directions, os.path.basename(rel)))
    folder = comfy_home / "input" / "stage2_photos"
    folder.mkdir(exist_ok=True)
    shutil.copyfile(shared_data / "faces" / "wplus_in_the_wild_1.jpg", folder / "wild.jpg")
    (folder / "wild.txt").write_text("two people on a bench\n\na person in a park\n")
    w, h = Image.open(folder / "wild.jpg").size
    Image.new("L", (w, h), 255).save(folder / "wild_mask.png")  # all face: the mask file wins over the pipeline
    prompt = _inputs("FP_TrainWPlusAdapter", tiny_sd15, e4e_name, folder, "stage2_export",
                     stage="Stage II (in the wild)", init_from=init, mode="export job only")
    out = comfy.run(prompt)
    job_dir = out["train"]["text"][0].split()[2]
    assert "accelerate launch" in out["train"]["text"][0]
    cfg = json.load(open(os.path.join(job_dir, "config.json")))
    assert cfg["method"] == "wplus" and cfg["params"]["stage"] == 2
    assert cfg["params"]["captions"] == [["two people on a bench", "a person in a park"]]
    assert cfg["params"]["init_file"].endswith(init) and cfg["params"]["directions_dir"] == directions
    assert len(cfg["photos"]) == 1 and len(cfg["masks"]) == 1
    mask = np.asarray(Image.open(os.path.join(job_dir, cfg["masks"][0])).convert("L"))
    assert mask.shape == (64, 64) and mask.min() == 255
    status = json.load(open(os.path.join(job_dir, "status.json")))
    assert status["status"] == "resumable"
