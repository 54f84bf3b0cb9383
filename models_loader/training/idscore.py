"""ArcFace identity score of preview images vs the training photos (the pack's Face Similarity)."""
import logging

import numpy as np
import torch

log = logging.getLogger(__name__)


def _load_images(paths):
    from PIL import Image

    arrs = []
    for p in paths:
        with Image.open(p) as im:
            arrs.append(torch.from_numpy(np.array(im.convert("RGB")).astype(np.float32) / 255.0))
    return arrs


def make_scorer(pack_dir, photo_paths):
    """A function ``files -> mean ID score`` (None when no face is found), or None with a logged note
    when the face models are missing or cannot embed the training photos."""
    if not pack_dir:
        log.info("ID score off: the job has no face-recognition pack (connect an insightface FaceAnalysis)")
        return None
    try:
        from ..face import analysis, similarity
        from ..face.detect import detect_faces

        fa = analysis.load_face_analysis(pack_dir, provider="CPU")
        refs = []
        for img in _load_images(photo_paths):
            bundle = detect_faces(img[None], fa, "largest", if_no_face="skip")
            if bundle.faces:
                refs.append(bundle.embeddings())
        if not refs:
            log.info("ID score off: no face found in the training photos by %s", pack_dir)
            return None
        reference = torch.cat(refs)
    except Exception as exc:  # the score is a bonus: never fail a training job over it
        log.info("ID score off: %s", exc)
        return None

    def score(files):
        vals = []
        for img in _load_images(files):
            s = similarity.identity_scores(img[None], reference, fa)[0]
            if s is not None:
                vals.append(s)
        return float(sum(vals) / len(vals)) if vals else None

    return score
