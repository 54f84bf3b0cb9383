"""The offline (mediapipe, wheel-bundled weights) detector on the shared real photos."""
import numpy as np
import pytest
import torch
from PIL import Image

from face_helpers import load_image, shared_photos


def test_finds_face_in_every_shared_photo(shared_data, offline_detector):
    from comfyui_face_personalization.models_loader.face.detect import detect_faces

    photos = shared_photos(shared_data)
    assert len(photos) >= 10
    for p in photos:
        img = load_image(p)
        b = detect_faces(img, offline_detector, "largest")
        assert len(b) == 1, p.name
        f = b.faces[0]
        h, w = img.shape[1:3]
        x1, y1, x2, y2 = f.bbox.tolist()
        assert 0.08 * w < x2 - x1 < w and f.score > 0.5, (p.name, f.bbox, f.score)
        # landmarks: inside the box, eyes above the mouth, image-left eye left of image-right eye
        k = f.kps
        assert ((k[:, 0] >= x1 - 2) & (k[:, 0] <= x2 + 2) & (k[:, 1] >= y1 - 2) & (k[:, 1] <= y2 + 2)).all(), p.name
        assert k[0, 0] < k[1, 0] and k[3, 0] < k[4, 0] and k[:2, 1].max() < k[3:, 1].min(), p.name
        assert f.embedding is None


@pytest.mark.parametrize("stem", ["apr14-2016", "apr28-2019", "jun19-2017", "nov02-2019", "oct07-2015", "wiki"])
def test_box_inside_shared_face_mask(shared_data, offline_detector, stem):
    from comfyui_face_personalization.models_loader.face.detect import detect_faces

    d = shared_data / "faces" / "identity_set_a"
    img = load_image(d / f"{stem}.jpg")
    mask = torch.from_numpy(np.asarray(Image.open(d / f"{stem}_mask.png").convert("L")) > 127)
    b = detect_faces(img, offline_detector, "largest")
    x1, y1, x2, y2 = [int(round(v)) for v in b.faces[0].bbox.tolist()]
    box = mask[max(y1, 0):y2, max(x1, 0):x2]
    # the masks cover head + hair; the box's lower corners may reach past the jaw onto background
    assert box.float().mean() > 0.8, f"only {box.float().mean():.2f} of the face box is inside the mask"
    ys, xs = torch.nonzero(mask, as_tuple=True)
    tol = 0.05 * (x2 - x1)
    assert xs.min() - tol <= x1 and x2 <= xs.max() + tol and ys.min() - tol <= y1, (stem, (x1, y1, x2, y2))
    assert mask[(y1 + y2) // 2, (x1 + x2) // 2]
    for x, y in b.faces[0].kps.round().long().tolist():   # every landmark on the masked person
        assert mask[y, x]


def test_multiple_faces_and_index(shared_data, offline_detector):
    """The in-the-wild photo has several people: 'all' returns them, 'index' counts left to right."""
    from comfyui_face_personalization.models_loader.face.detect import detect_faces

    img = load_image(shared_data / "faces" / "wplus_in_the_wild_1.jpg")
    every = detect_faces(img, offline_detector, "all")
    assert len(every) >= 2
    largest = detect_faces(img, offline_detector, "largest").faces[0]
    assert largest.area == max(f.area for f in every.faces)
    xs = sorted(float(f.bbox[0] + f.bbox[2]) for f in every.faces)
    first = detect_faces(img, offline_detector, "index", index=0).faces[0]
    assert float(first.bbox[0] + first.bbox[2]) == pytest.approx(xs[0])


def test_no_face_error_and_skip(offline_detector):
    from comfyui_face_personalization.models_loader.face.detect import NoFaceError, detect_faces

    imgs = torch.full((3, 96, 96, 3), 0.5)
    with pytest.raises(NoFaceError, match="no face found in image 1 of 3"):
        detect_faces(imgs, offline_detector)
    b = detect_faces(imgs, offline_detector, if_no_face="skip")
    assert len(b) == 0 and b.skipped == [0, 1, 2]


def test_retry_sizes_and_settings_not_written(comfy):
    """Sizes 640 -> 320 -> 256 are tried in order, as arguments: the shared detector is not mutated."""
    from comfyui_face_personalization.models_loader.face.detect import detect_faces

    class Det:
        det_thresh = 0.77
        input_size = (640, 640)

        def __init__(self):
            self.calls = []

        def detect(self, img, input_size=None, max_num=0, metric="default", det_thresh=None):
            self.calls.append((input_size, det_thresh))
            if input_size[0] != 256:
                return np.zeros((0, 5), np.float32), np.zeros((0, 5, 2), np.float32)
            kps = np.array([[[10, 10], [20, 10], [15, 15], [11, 20], [19, 20]]], np.float32)
            return np.array([[5, 5, 25, 25, 0.9]], np.float32), kps

    class FA:
        def __init__(self):
            self.det_model = Det()
            self.models = {"detection": self.det_model}

    fa = FA()
    b = detect_faces(torch.rand(1, 32, 32, 3), fa, det_thresh=0.3)
    assert [c[0] for c in fa.det_model.calls] == [(640, 640), (320, 320), (256, 256)]
    assert all(c[1] == 0.3 for c in fa.det_model.calls)
    assert fa.det_model.det_thresh == 0.77 and fa.det_model.input_size == (640, 640)
    assert len(b) == 1 and b.faces[0].kps[1, 0] == 20


def test_duck_typed_get_only_object(comfy):
    """A foreign analysis with only .get(img) (returns dict-like faces) works, embedding included."""
    from comfyui_face_personalization.models_loader.face.detect import detect_faces
    from comfyui_face_personalization.models_loader.face.embed import face_embeds

    class Foreign:
        def get(self, img):
            emb = np.arange(512, dtype=np.float32)
            return [{"bbox": np.array([1, 1, 20, 20]), "kps": np.ones((5, 2)), "det_score": 0.9, "embedding": emb}]

    b = detect_faces(torch.rand(2, 24, 24, 3), Foreign())
    e = face_embeds(b, "mean")
    ref = torch.arange(512, dtype=torch.float32)
    torch.testing.assert_close(e[0], ref / ref.norm())
