"""The job spec: ``<job dir>/config.json``, human-readable, everything a worker (ComfyUI's or
``accelerate launch``'s) needs to run a job with no ComfyUI server around.

Paths are absolute. ``params`` holds the method's own hyper-parameters (e.g. CrossInit's
``trigger_word``, ``reg_weight``); the engine's options are top-level fields.
"""
import dataclasses
import json
import os
import re
from typing import Any, Dict, List, Optional

SPEC_FILE = "config.json"
PRECISIONS = ("fp32", "bf16", "fp16")
JOB_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,79}$")


@dataclasses.dataclass
class JobSpec:
    job_id: str
    method: str
    name: str                                   # output name (files in the method's model folder)
    base_model: str                             # absolute path of the checkpoint trained on
    base_model_name: str = ""                   # as the user picked it (metadata)
    family: str = ""                            # SD15 / SD20 / SDXL ... (checked by the node)
    photos: List[str] = dataclasses.field(default_factory=list)   # files inside the job dir (photos/...)
    masks: List[str] = dataclasses.field(default_factory=list)
    params: Dict[str, Any] = dataclasses.field(default_factory=dict)
    steps: int = 25
    seed: int = 0
    batch: int = 1                              # samples per micro-batch
    grad_accum: int = 1                         # micro-batches per optimiser step
    learning_rate: float = 1e-3
    resolution: int = 512
    precision: str = "fp32"                     # autocast dtype; trainables stay fp32
    gradient_checkpointing: bool = False
    cache_latents: bool = True
    checkpoint_every: int = 50
    preview_every: int = 0                      # 0: previews off
    preview_steps: int = 20                     # sampler steps of one preview image
    output_dirs: Dict[str, str] = dataclasses.field(default_factory=dict)  # model folder -> absolute dir
    face_pack_dir: str = ""                     # insightface pack for the ID score ('' = off)
    comfyui_path: str = ""                      # ComfyUI root (for comfy.* imports in the worker)
    cpu: bool = False                           # force CPU in the worker (ComfyUI ran with --cpu)
    base_overrides: str = ""                    # file in the job dir: the graph's LoRA/merge patches baked (baked.py)
    created: str = ""

    @property
    def effective_batch(self) -> int:
        return self.batch * self.grad_accum

    def validate(self):
        if not JOB_ID_RE.match(self.job_id):
            raise ValueError(f"invalid job id {self.job_id!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        for field in ("steps", "batch", "grad_accum", "resolution"):
            if int(getattr(self, field)) < 1:
                raise ValueError(f"{field} must be at least 1, got {getattr(self, field)}")
        if self.resolution % 8:
            raise ValueError(f"resolution must be a multiple of 8, got {self.resolution}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning rate must be positive, got {self.learning_rate}")
        return self

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=False)

    def save(self, job_dir):
        from .jobfiles import atomic_write_text

        atomic_write_text(os.path.join(job_dir, SPEC_FILE), self.to_json())

    @classmethod
    def from_dict(cls, data: dict) -> "JobSpec":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown job config fields {unknown}")
        return cls(**data).validate()

    @classmethod
    def load(cls, job_dir) -> "JobSpec":
        path = os.path.join(job_dir, SPEC_FILE)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no {SPEC_FILE} in job folder {job_dir}")
        with open(path, encoding="utf-8") as f:
            return cls.from_dict(json.load(f))


def photo_paths(spec: JobSpec, job_dir) -> List[str]:
    return [p if os.path.isabs(p) else os.path.join(job_dir, p) for p in spec.photos]


def optional(value, default=None) -> Optional[Any]:
    return default if value in (None, "") else value
