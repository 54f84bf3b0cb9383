"""Small API-format prompt builders shared by tests, demo and benches."""


def txt2img(ckpt, text="a photo of a person", negative="blurry", width=64, height=64, steps=2, seed=0,
            cfg=5.0, sampler="euler", scheduler="normal", prefix="fp_test", batch=1):
    return {
        "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "pos": {"class_type": "CLIPTextEncode", "inputs": {"text": text, "clip": ["ckpt", 1]}},
        "neg": {"class_type": "CLIPTextEncode", "inputs": {"text": negative, "clip": ["ckpt", 1]}},
        "latent": {"class_type": "EmptyLatentImage", "inputs": {"width": width, "height": height, "batch_size": batch}},
        "sample": {"class_type": "KSampler", "inputs": {
            "model": ["ckpt", 0], "positive": ["pos", 0], "negative": ["neg", 0], "latent_image": ["latent", 0],
            "seed": seed, "steps": steps, "cfg": cfg, "sampler_name": sampler, "scheduler": scheduler, "denoise": 1.0}},
        "decode": {"class_type": "VAEDecode", "inputs": {"samples": ["sample", 0], "vae": ["ckpt", 2]}},
        "save": {"class_type": "SaveImage", "inputs": {"images": ["decode", 0], "filename_prefix": prefix}},
    }


# the two W+-code apply nodes: class_type, name of the input that takes the loaded weights
_WPLUS_APPLY = {"wplus": ("ApplyResidualCrossAttention", "wplus_adapter"),
                "pidiff": ("FP_ApplyStyleCrossAttention", "pidiff")}


def apply_wplus(p, method, weights, wplus, strength, start_percent, node_id="apply"):
    """Add the W+ Adapter (``method`` "wplus") or PIDiff ("pidiff") apply node on the checkpoint's MODEL, with the
    ``weights`` and ``wplus`` links, and sample with it."""
    class_type, weights_input = _WPLUS_APPLY[method]
    p[node_id] = {"class_type": class_type, "inputs": {
        "model": ["ckpt", 0], weights_input: weights, "wplus": wplus, "strength": strength,
        "start_percent": start_percent, "end_percent": 1.0}}
    p["sample"]["inputs"]["model"] = [node_id, 0]
    return p


def train_and_wait(p, class_type, inputs):
    """Add a training node ("train") and the Training Result ("result") that waits for its job: link
    ``["result", 0]`` to use the trained asset."""
    p["train"] = {"class_type": class_type, "inputs": inputs}
    p["result"] = {"class_type": "FP_TrainingResult", "inputs": {"job": ["train", 0], "cancel_job_on_interrupt": False}}
    return p
