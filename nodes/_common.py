"""Small helpers shared by the thin node classes."""

CATEGORY = "face_personalization"


def category(sub: str) -> str:
    return f"{CATEGORY}/{sub}"


# Socket types other face packs use for an insightface FaceAnalysis object; our inputs accept
# all of them (ComfyUI matches comma-separated union types) so a graph can reuse its loader.
FACE_ANALYSIS_TYPES = "FACE_ANALYSIS,INSIGHTFACE,FACEANALYSIS"
