"""Finding and understanding the pack's nodes, driven from the node registry ComfyUI loaded: every node sits
in a category under the pack's root (by task first), has search aliases, and every input has a plain-language
tooltip (no paper notation); numeric inputs say what a higher value does. The long-running functions report
progress to ComfyUI's progress bar."""
import re

import pytest
import torch

ROOT = "face_personalization/"
# paper notation: products of symbols (ada*s, strength*d), (1-s), softmax/sqrt/^T, h_text-style subscripts,
# primed projections (W_q', Q'K')
PAPER = re.compile(r"[A-Za-z_)]\*[A-Za-z_(]|\(1 ?- ?[a-z]\)|softmax|sqrt\(|\^T|\bh_[a-z]+|\b[A-Z]_?[a-z]?'(?!s\b)|\blambda\b")
HIGHER = re.compile(r"\b(higher|lower|larger|smaller|more|less|stronger|weaker|bigger)\b|\b0 = ", re.I)
FACE_SEARCHES = ("faceid", "pulid", "instantid", "ipadapter face", "identity")


def _inputs(cls):
    types = cls.INPUT_TYPES()
    for group in ("required", "optional"):
        for name, spec in (types.get(group) or {}).items():
            yield name, spec[0], (spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {})


def test_every_node_sits_under_the_pack_root_by_task(pack):
    for node_id, cls in pack.NODE_CLASS_MAPPINGS.items():
        assert cls.CATEGORY.startswith(ROOT), f"{node_id}: category {cls.CATEGORY!r} is outside {ROOT}"
    listed = [c for c in {cls.CATEGORY.split("/")[1] for cls in pack.NODE_CLASS_MAPPINGS.values()}]
    for task in ("1 faces", "2 identity", "3 apply", "4 check"):
        assert task in listed, f"no node in {ROOT}{task}"


def test_every_node_has_search_aliases_and_face_searches_find_the_apply_nodes(pack):
    hits = {word: [] for word in FACE_SEARCHES}
    for node_id, cls in pack.NODE_CLASS_MAPPINGS.items():
        aliases = getattr(cls, "SEARCH_ALIASES", None)
        assert aliases and all(isinstance(a, str) and a for a in aliases), f"{node_id}: no SEARCH_ALIASES"
        for word in FACE_SEARCHES:
            if word in aliases:
                hits[word].append(node_id)
    for word, nodes in hits.items():
        assert nodes, f"a search for {word!r} finds no node of the pack"
    for apply_node in ("ApplyResidualCrossAttention", "FP_ApplyStyleCrossAttention", "AdaFaceInvert",
                       "StageRegulatedTI", "FP_ApplyIdentityEmbedding"):
        assert apply_node in hits["faceid"] and apply_node in hits["pulid"], apply_node


def test_tooltips_are_plain_language(pack):
    problems = []
    for node_id, cls in pack.NODE_CLASS_MAPPINGS.items():
        if PAPER.search(cls.DESCRIPTION):
            problems.append(f"{node_id} description: {PAPER.search(cls.DESCRIPTION).group(0)!r}")
        training = cls.CATEGORY.startswith(ROOT + "training")
        for name, kind, opts in _inputs(cls):
            tip = opts.get("tooltip") or ""
            if not tip:
                problems.append(f"{node_id}.{name}: no tooltip")
            elif PAPER.search(tip):
                problems.append(f"{node_id}.{name}: paper notation {PAPER.search(tip).group(0)!r} in {tip!r}")
            elif kind == "FLOAT" and not training and not HIGHER.search(tip):
                problems.append(f"{node_id}.{name}: does not say what a higher value does: {tip!r}")
    assert not problems, "\n".join(problems)


def test_paper_notation_pattern_catches_the_old_tooltips():
    for old in ("ada*s + pad*(1-s)", "in every layer h_text queries 4 tokens", "lambda of f_text + lambda*SCA",
                "softmax(Q'K'^T/sqrt(d))V'", "(1-t)*a + t*b", "W_q', W_k'"):
        assert PAPER.search(old), old
    for plain in ("Higher = stronger likeness (0 = model unchanged).", "W+ code(s) [B,18,512]",
                  "batch_size/grad_accum images", "PersonaMagic's bypass", "B's fine colour", "e4e_ffhq_encode.pt"):
        assert not PAPER.search(plain), plain


# ---- progress bars --------------------------------------------------------------------------------

@pytest.fixture
def progress_calls():
    """Calls of ComfyUI's progress hook (value, total) while the test runs."""
    import comfy.utils

    calls = []
    old = comfy.utils.PROGRESS_BAR_HOOK
    comfy.utils.set_progress_bar_global_hook(lambda value, total, preview=None, node_id=None: calls.append((value, total)))
    yield calls
    comfy.utils.set_progress_bar_global_hook(old)


def test_detection_over_a_batch_shows_progress(pack, progress_calls):
    from comfyui_face_personalization.models_loader.face import detect

    class OneFacePerImage:  # the insightface FaceAnalysis.get() protocol
        def get(self, img):
            return [{"bbox": [8, 8, 40, 40], "kps": [[16, 20], [32, 20], [24, 28], [18, 34], [30, 34]],
                     "det_score": 0.9}]

    bundle = detect.detect_faces(torch.rand(5, 64, 64, 3), OneFacePerImage())
    assert len(bundle.faces) == 5
    assert progress_calls[-1] == (5, 5), progress_calls
    assert len(progress_calls) == 5  # one update per image


def test_adaface_encode_shows_progress(comfy, install_model, progress_calls):
    from fixtures import tiny

    from comfyui_face_personalization.models_loader.methods.adaface import load

    ada = load.load_adaface(str(tiny.ensure("adaface_pt")), str(tiny.ensure("adaface_arc2face")))
    progress_calls.clear()
    ada.encode(torch.nn.functional.normalize(torch.randn(1, 512), dim=-1))
    assert progress_calls == [(1, 2), (2, 2)]


def test_crossinit_name_encode_shows_progress(comfy, tiny_sd15, progress_calls):
    from comfyui_face_personalization.models_loader.methods.crossinit import core

    clip = comfy.node_classes["CheckpointLoaderSimple"]().load_checkpoint(tiny_sd15)[1]
    names = core.load_names()
    progress_calls.clear()
    core.cross_init_vectors(clip, names)
    total = len(names) + 1  # SD1.5: one encoder
    assert progress_calls[-1] == (total, total)
    assert 10 <= len(progress_calls) <= 101  # throttled to percentage steps
