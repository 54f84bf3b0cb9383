"""The job folder: one place for every file name and its atomic read/write.

Layout (``<jobs root>/<job id>/``)::

    config.json      the JobSpec (human-readable)
    status.json      {status, step, total, loss, lr, eta_s, it_s, error, outputs, best_id_score, ...} (atomic)
    loss.jsonl       one line per optimiser step: {step, loss, terms, lr, time}
    id_scores.jsonl  one line per preview: {step, id_score, files}
    log.txt          the worker's stdout/stderr
    photos/          the training photos (face crops) the job uses
    previews/        step_000010.png ...
    checkpoints/     last.pt, best.pt  (torch.save; loads with weights_only=True)
    cancel, pause    flag files (present = requested); checked between optimiser steps

The trained assets a method exports go elsewhere (``spec.output_dirs``); :func:`fresh_output_paths` and
:func:`string_metadata` are the part of every export that is the same.
"""
import json
import os
import tempfile
import time

STATUS_FILE = "status.json"
LOSS_FILE = "loss.jsonl"
ID_FILE = "id_scores.jsonl"
LOG_FILE = "log.txt"
CANCEL_FLAG = "cancel"
PAUSE_FLAG = "pause"
PHOTOS_DIR = "photos"
PREVIEWS_DIR = "previews"
CHECKPOINTS_DIR = "checkpoints"
LAST_CKPT = "last.pt"
BEST_CKPT = "best.pt"

STATUSES = ("queued", "running", "paused", "cancelling", "cancelled", "failed", "done", "resumable")
FINAL = ("cancelled", "failed", "done")


def atomic_write_text(path, text):
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".tmp-", suffix=os.path.basename(path))
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def read_json(path, default=None):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (FileNotFoundError, json.JSONDecodeError):
        return default


def read_status(job_dir):
    return read_json(os.path.join(job_dir, STATUS_FILE), {}) or {}


def write_status(job_dir, **fields):
    """Merge ``fields`` into status.json (atomic replace)."""
    status = read_status(job_dir)
    status.update(fields)
    status["updated"] = time.time()
    atomic_write_text(os.path.join(job_dir, STATUS_FILE), json.dumps(status, indent=1))
    return status


def read_jsonl(path, limit=None):
    rows = []
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                line = line.strip()
                if line:
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError:  # a line cut by a crash
                        pass
    except FileNotFoundError:
        return []
    return rows[-limit:] if limit else rows


def append_jsonl(path, row):
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")
        f.flush()


def truncate_jsonl(path, max_step):
    """Keep rows with step <= max_step (a resumed run rewrites the steps after its checkpoint)."""
    rows = [r for r in read_jsonl(path) if int(r.get("step", 0)) <= max_step]
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))


def flag(job_dir, name):
    return os.path.exists(os.path.join(job_dir, name))


def set_flag(job_dir, name, on=True):
    path = os.path.join(job_dir, name)
    if on:
        with open(path, "w") as f:
            f.write(str(time.time()))
    elif os.path.exists(path):
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def checkpoint_path(job_dir, which=LAST_CKPT):
    return os.path.join(job_dir, CHECKPOINTS_DIR, which)


def save_checkpoint(job_dir, state, which=LAST_CKPT):
    import torch

    path = checkpoint_path(job_dir, which)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    torch.save(state, tmp)
    os.replace(tmp, path)
    return path


def load_checkpoint(job_dir, which=LAST_CKPT):
    """The checkpoint dict, loaded tensor-only (weights_only=True), or None when there is none."""
    import torch

    path = checkpoint_path(job_dir, which)
    if not os.path.isfile(path):
        return None
    return torch.load(path, map_location="cpu", weights_only=True)


def list_checkpoints(job_dir):
    d = os.path.join(job_dir, CHECKPOINTS_DIR)
    if not os.path.isdir(d):
        return []
    return sorted(f for f in os.listdir(d) if f.endswith(".pt"))


def list_previews(job_dir):
    d = os.path.join(job_dir, PREVIEWS_DIR)
    if not os.path.isdir(d):
        return []
    return sorted(f for f in os.listdir(d) if f.lower().endswith(".png"))


def fresh_output_paths(out_dir, name, exts):
    """``out_dir/<name><ext>`` for each of ``exts``, none of which may exist: training never overwrites a file
    (``FileExistsError`` names the first that exists). Makes ``out_dir``."""
    os.makedirs(out_dir, exist_ok=True)
    paths = [os.path.join(out_dir, f"{name}{ext}") for ext in exts]
    for p in paths:
        if os.path.exists(p):
            raise FileExistsError(f"{p} exists; training never overwrites a file, choose another output name")
    return paths


def string_metadata(meta):
    """safetensors metadata of an export: strings as they are, every other value as JSON."""
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in (meta or {}).items()}


def written_safetensors(outputs, what):
    """Path of the safetensors file a finished job wrote (its outputs list), or a clear error naming ``what``."""
    for o in outputs:
        if o.get("kind") == "safetensors":
            return o["path"]
    raise FileNotFoundError(f"the job wrote no {what} file")
