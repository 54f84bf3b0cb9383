"""Where a person finds each node: the Add Node menu category (by task first, then method) and the
search aliases (words people coming from other face packs type).

Categories run in the order of a workflow: ``1 faces`` (detect, align, embed), ``2 identity`` (turn
photos into an identity: W+ codes, embeddings), ``3 apply`` (patch MODEL/CLIP with it), ``4 check``
(ID score, diagnostics); training keeps ``face_personalization/training``. A node not listed here keeps
the category its class declares (it must still sit under ``face_personalization/``).

Aliases are set as the ``SEARCH_ALIASES`` class attribute, the V1 node field ComfyUI reports in
/object_info as ``search_aliases`` and the frontend's node search indexes (ComfyUI PR #12010, frontend
PR #8223, both after ComfyUI 0.3.75 / frontend 1.32.9, which search only node IDs and display names).
"""

ROOT = "face_personalization"

FACES = "1 faces"
WPLUS_CODES = "2 identity/W+ code (W+ Adapter, PIDiff)"
CROSSINIT_ID = "2 identity/Cross Initialization"
PERSONAMAGIC_ID = "2 identity/PersonaMagic"
APPLY = "3 apply"
CHECK = "4 check"

# what people search for when they want "my face in the picture", from the packs they know
FACE_ID = ["faceid", "ipadapter face", "pulid", "instantid", "photomaker", "identity", "face swap", "likeness"]
DETECT = ["insightface", "face detection", "face analysis", "antelopev2", "buffalo_l", "retinaface", "scrfd"]

PLACES = {
    # 1 faces
    "FP_FaceAnalysisLoader": (FACES, DETECT + ["load insightface", "face model"]),
    "FP_OfflineFaceDetector": (FACES, ["mediapipe", "face detection", "offline detector"]),
    "FP_FaceDetect": (FACES, DETECT + ["find faces", "face landmarks"]),
    "FP_FaceAlign": (FACES, ["face crop", "align face", "ffhq", "arcface crop", "dlib"]),
    "FP_FaceEmbed": (FACES, ["arcface", "face embedding", "identity", "faceid embeds"]),
    "FP_FaceMask": (FACES, ["face mask", "face segmentation", "face region"]),
    "FP_FacePasteBack": (FACES, ["paste face", "face restore paste", "uncrop face"]),
    "FP_WhitenBackground": (FACES, ["white background", "remove background", "w+ adapter preprocessing"]),
    "FP_SaveFaceEmbeds": (FACES, ["save identity", "save arcface", "faceid embeds"]),
    "FP_LoadFaceEmbeds": (FACES, ["load identity", "load arcface", "faceid embeds", "mean_emb"]),
    # 2 identity
    "LoadE4EEncoder": (WPLUS_CODES, ["e4e", "encoder4editing", "stylegan encoder", "gan inversion"]),
    "WPlusEncode": (WPLUS_CODES, ["e4e", "stylegan", "gan inversion", "photo to w+", "identity"]),
    "FP_LoadWPlus": (WPLUS_CODES, ["w+ code", "latent code", "stylegan latent", "identity"]),
    "FP_SaveWPlus": (WPLUS_CODES, ["w+ code", "save latent", "save identity"]),
    "FP_WPlusInterpolate": (WPLUS_CODES, ["mix faces", "blend identities", "morph", "lerp"]),
    "FP_WPlusStyleMix": (WPLUS_CODES, ["style mixing", "mix faces", "stylegan"]),
    "FP_WPlusBatch": (WPLUS_CODES, ["batch codes", "several identities"]),
    "FP_LoadWPlusDirection": (WPLUS_CODES, ["interfacegan", "ganspace", "age", "smile", "edit direction"]),
    "DeltaWEdit": (WPLUS_CODES, ["face edit", "age", "smile", "interfacegan", "ganspace", "attribute edit"]),
    "CrossInitEmbedding": (CROSSINIT_ID, ["celebrity init", "textual inversion", "trigger word", "identity"]),
    "FP_LoadIdentityEmbedding": (CROSSINIT_ID, ["textual inversion", "learned_embeds", "embedding", "identity"]),
    "FP_SaveIdentityEmbedding": (CROSSINIT_ID, ["save embedding", "textual inversion", "embedding:"]),
    "FP_PersonaMagicReferenceEncode": (PERSONAMAGIC_ID, ["clip vision", "reference photo", "image embedding"]),
    "FP_LoadCLIPVisionAnySize": (PERSONAMAGIC_ID, ["clip vision", "vit-b/32", "image encoder"]),
    # 3 apply
    "FP_LoadWPlusAdapter": (f"{APPLY}/W+ Adapter", FACE_ID + ["w+ adapter", "wplus", "stylegan"]),
    "ApplyResidualCrossAttention": (f"{APPLY}/W+ Adapter", FACE_ID + ["w+ adapter", "wplus", "apply face"]),
    "FP_LoadPIDiff": (f"{APPLY}/PIDiff", FACE_ID + ["pidiff", "style cross attention"]),
    "FP_ApplyStyleCrossAttention": (f"{APPLY}/PIDiff", FACE_ID + ["pidiff", "apply face"]),
    "FP_LoadPersonaMagic": (f"{APPLY}/PersonaMagic", FACE_ID + ["personamagic", "textual inversion"]),
    "StageRegulatedTI": (f"{APPLY}/PersonaMagic", FACE_ID + ["personamagic", "apply face", "trigger word"]),
    "FP_SavePersonaMagicMapper": (f"{APPLY}/PersonaMagic", ["personamagic", "save mapper", "safetensors"]),
    "FP_LoadAdaFace": (f"{APPLY}/AdaFace", FACE_ID + ["adaface", "arc2face"]),
    "AdaFaceInvert": (f"{APPLY}/AdaFace", FACE_ID + ["adaface", "arc2face", "apply face", "animatediff face"]),
    "FP_ApplyIdentityEmbedding": (f"{APPLY}/Cross Initialization", FACE_ID + ["cross initialization",
                                                                               "crossinit", "trigger word"]),
    # 4 check
    "FP_FaceSimilarity": (CHECK, ["id score", "face similarity", "arcface cosine", "likeness score", "compare faces"]),
    "FP_Diagnostics": (CHECK, ["diagnostics", "troubleshoot", "missing model", "onnxruntime", "versions"]),
}

# words a category path stands for, for nodes without their own aliases (e.g. training nodes)
_PATH_WORDS = {"training": ["train", "finetune", "fine-tune", "identity"], "wplus": ["w+ adapter", "wplus"],
               "pidiff": ["pidiff"], "adaface": ["adaface"], "personamagic": ["personamagic"],
               "crossinit": ["cross initialization", "crossinit"], "face": ["face"]}


def _default_aliases(category):
    words = []
    for part in category.lower().split("/")[1:]:
        for key, extra in _PATH_WORDS.items():
            if key in part.replace(" ", "").replace("+", "plus"):
                words += extra
    return words + ["face personalization", "identity"]


def place(node_id, cls):
    """Set ``cls.CATEGORY`` and ``cls.SEARCH_ALIASES`` (keeping aliases the class declares itself)."""
    if node_id in PLACES:
        sub, aliases = PLACES[node_id]
        cls.CATEGORY = f"{ROOT}/{sub}"
    else:
        aliases = _default_aliases(getattr(cls, "CATEGORY", ROOT))
    own = list(cls.__dict__.get("SEARCH_ALIASES", []))
    cls.SEARCH_ALIASES = list(dict.fromkeys(own + aliases))
