"""Build the training workflows of PIDiff, the W+ Adapter (Stage I, Stage II) and Cross Initialization (full preset)
and write them as UI JSON into workflows/. Each trains in the background, waits in FP_TrainingResult and generates
with the trained asset.

Run: cd tests && $FP_PY training/make_workflows_adapters.py [out_dir]
tests/test_workflows.py runs them with the training node shrunk (preset "custom", 1 step at 64 px).
"""
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from harness import workflow  # noqa: E402
from harness.graphs import apply_wplus, train_and_wait, txt2img  # noqa: E402
from training.make_workflows import train_crossinit  # noqa: E402

from fixtures import tiny  # noqa: E402

SD15, SD2, E4E, STAGE1_FILE = tiny.file_names("sd15", "sd2", "e4e", "wplus_adapter_sd15")

ENGINE = {"grad_accum": 2, "resolution": 512, "seed": 0, "precision": "fp32", "gradient_checkpointing": True,
          "checkpoint_every": 100, "if_no_face": "error", "pause_while_generating": True, "mode": "run",
          "photo_folder": ""}


def _photo_to_wplus(p, image):
    """photo -> detect -> FFHQ align -> e4e: the W+ code the generation uses (the identity just trained)."""
    p["photo"] = {"class_type": "LoadImage", "inputs": {"image": image}}
    p["det"] = {"class_type": "FP_OfflineFaceDetector", "inputs": {"det_thresh": 0.5, "max_faces": 10}}
    p["e4e"] = {"class_type": "LoadE4EEncoder", "inputs": {"encoder_name": E4E}}
    p["faces"] = {"class_type": "FP_FaceDetect", "inputs": {"image": ["photo", 0], "face_analysis": ["det", 0],
                                                            "select": "largest", "index": 0, "if_no_face": "error",
                                                            "det_thresh": 0.5}}
    p["align"] = {"class_type": "FP_FaceAlign", "inputs": {"image": ["photo", 0], "faces": ["faces", 0],
                                                           "template": "ffhq", "size": 256, "padding": "reflect"}}
    p["wplus"] = {"class_type": "WPlusEncode", "inputs": {"e4e": ["e4e", 0], "image": ["align", 0],
                                                          "average_batch": True, "batch_size": 4}}


def train_pidiff():
    p = txt2img(SD15, text="a photo of a person wearing a red shirt, in a garden", negative="blurry, low quality",
                prefix="train_pidiff", cfg=7.5)
    _photo_to_wplus(p, "celebahq_28017.jpg")
    train_and_wait(p, "FP_TrainPIDiff", dict(ENGINE, **{
        "ckpt_name": SD15, "face_analysis": ["det", 0], "e4e": ["e4e", 0], "name": "my_pidiff", "pseudo_word": "sks",
        "init_from": "(none: copy the UNet's own attention)", "preset": "paper", "steps": 600, "learning_rate": 1e-4,
        "batch_size": 4, "drop_text": 0.3, "drop_face": 0.5, "wplus_noise": 0.05, "whiten_background": True,
        "images": ["photo", 0]}))
    return apply_wplus(p, "pidiff", ["result", 0], ["wplus", 0], 0.4, 0.0)


def _train_wplus(stage, image, init, text, prefix, name):
    p = txt2img(SD15, text=text, negative="blurry, low quality", prefix=prefix, cfg=7.5)
    _photo_to_wplus(p, image)
    train_and_wait(p, "FP_TrainWPlusAdapter", dict(ENGINE, **{
        "ckpt_name": SD15, "face_analysis": ["det", 0], "e4e": ["e4e", 0], "name": name, "stage": stage,
        "init_from": init, "preset": "short", "steps": 2000, "learning_rate": 1e-4, "batch_size": 16,
        "caption": "a photo of a person", "whiten_background": True, "images": ["photo", 0]}))
    p["train"]["inputs"]["grad_accum"] = 8
    return apply_wplus(p, "wplus", ["result", 0], ["wplus", 0], 1.0, 0.2)


def train_wplus_stage1():
    return _train_wplus("Stage I (faces)", "celebahq_28017.jpg", "(none: copy the UNet's own attention)",
                        "a photo of a face", "train_wplus_stage1", "my_wplus_stage1")


def train_wplus_stage2():
    return _train_wplus("Stage II (in the wild)", "wplus_in_the_wild_1.jpg", STAGE1_FILE,
                        "a person reading a book in a library", "train_wplus_stage2", "my_wplus_stage2")


def train_crossinit_full():
    return train_crossinit(SD2, "train_crossinit_full", "my_face_full", "full", 320, 0.005)


_WAIT = ("The job runs in the background (training panel; ComfyUI keeps serving other prompts); **Training Result** "
         "waits for it, then the sampler generates with what it trained. Leave the bottom half out to train only.")

NOTES = {
    "train_pidiff": f"""## Train PIDiff on one person
1. **LoadImage**: a clear photo of the person; the paper uses 6 or more: put them in a folder and set
   `photo_folder` on *Train PIDiff* (inside ComfyUI's input folder).
2. **Checkpoint** (both loaders): SD 1.5 (the paper's model). **Load e4e Encoder**: `e4e_ffhq_encode.pt` in `models/e4e/`.
3. Preset **paper**: 600 steps, batch 4, lr 1e-4, text/face dropped 30 %/50 %. `init_from` can start from the
   official `wplus_adapter.bin` in `models/wplus/`.
4. {_WAIT} The result is `models/pidiff/<name>.safetensors` (Load PIDiff lists it); generate at strength 0.4.
""",
    "train_wplus_stage1": f"""## Train a W+ Adapter, Stage I (faces)
1. **LoadImage** / `photo_folder`: aligned-able face photos (each is detected and aligned like FFHQ).
2. **Checkpoint**: SD 1.5. **Load e4e Encoder**: `e4e_ffhq_encode.pt` in `models/e4e/`.
3. Preset **short**: the official recipe (lr 1e-4, batch 16, drop rates 0.05) for 2000 steps; **official** is
   1,000,000 steps (days on 8 GPUs): set *mode* to `export job only` and run the printed `accelerate launch` command.
4. {_WAIT} The result is `models/wplus/<name>.bin` (official layout) and `.safetensors` (Load W+ Adapter lists them).
""",
    "train_wplus_stage2": f"""## Train a W+ Adapter, Stage II (in the wild)
1. **init_from**: the Stage I adapter to start from (`models/wplus/`, e.g. one trained with Stage I).
2. **LoadImage** / `photo_folder`: in-the-wild pictures of people. In a folder, `<photo>.txt` holds its captions
   (one a line) and `<photo>_mask.png` its face mask; otherwise *caption* and the face-pipeline mask are used.
3. Needs the W+ direction bank in `models/wplus/directions/`: `att_direction_scale.pth`, `ffhq_pca.pt`,
   `ganspace_configs.csv` (from the W+ Adapter and e4e repositories).
4. Loss = noise MSE + 2.0 disentangle + 1.0 preserve (train_wild.py); `w_proj` stays frozen. {_WAIT}
""",
    "train_crossinit_full": f"""## Train a face identity (Cross Initialization, full preset)
1. **LoadImage**: a clear photo of ONE person (more photos: `photo_folder` on the train node).
2. **Checkpoint** (both loaders): SD 2.1-base, the official model (`v2-1_512-ema-pruned.safetensors`); SD1.5/SDXL work too.
3. Preset **full**: the official 320 steps, lr 0.005 (0.000625 x batch 8), AdamW weight decay 0.01 (~6 min on an A800).
4. {_WAIT} The result is `models/crossinit/<name>/learned_embeds.bin` and `models/embeddings/<name>.safetensors`;
   write the trigger word (`<face>`) in the prompt.
""",
}

BUILDERS = {"train_pidiff": train_pidiff, "train_wplus_stage1": train_wplus_stage1,
            "train_wplus_stage2": train_wplus_stage2, "train_crossinit_full": train_crossinit_full}


def main(out_dir=None):
    return workflow.write_builders(BUILDERS, out_dir=out_dir, notes=NOTES)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None)
