"""Identity similarity: ArcFace cosine between the largest face of each image and a reference identity.

The standard check of face-personalization results (the papers' "ID similarity"), and a signal for
picking seeds or stopping a training run early. Images without a face score ``None`` instead of failing.
"""
import torch

from .embed import as_face_embeds, mean_embedding


def identity_scores(images, reference, analysis, det_thresh=0.5):
    """-> list with one float in [-1, 1] per image (None where no face was found).

    ``reference``: FACE_EMBEDS [N, 512]; several rows are one identity (their normalised mean)."""
    from .detect import describe, detect_faces, recognition_model

    ref = mean_embedding(as_face_embeds(reference, "reference face_embeds"))[0]
    if recognition_model(analysis) is None:
        raise ValueError(f"{describe(analysis)} has no recognition (ArcFace) model, so it cannot score identity; "
                         "load antelopev2 or buffalo_l with FP_FaceAnalysisLoader")
    bundle = detect_faces(images, analysis, "largest", if_no_face="skip", det_thresh=det_thresh)
    scores = [None] * bundle.num_images
    if bundle.faces:
        for face, emb in zip(bundle.faces, bundle.embeddings()):
            scores[face.image_index] = float(torch.dot(emb, ref))
    return scores


def summary(scores):
    """(mean over images with a face or 0.0, one-line-per-image report)."""
    found = [s for s in scores if s is not None]
    lines = [f"image {i + 1}: " + ("no face" if s is None else f"{s:.4f}") for i, s in enumerate(scores)]
    mean = sum(found) / len(found) if found else 0.0
    lines.append(f"mean over {len(found)} of {len(scores)} images with a face: {mean:.4f}")
    return mean, "\n".join(lines)
