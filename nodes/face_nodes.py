"""Face pipeline nodes: load/detect/embed/align/mask. Logic lives in models_loader/face/."""
import os

from ._common import FACE_ANALYSIS_TYPES, category
from ..models_loader import files, paths
from ..models_loader.face import align as _align
from ..models_loader.face import analysis as _analysis
from ..models_loader.face import detect as _detect
from ..models_loader.face import embed as _embed
from ..models_loader.face import mask as _mask
from ..models_loader.face import similarity as _similarity
from ..models_loader.face.types import FACE_ALIGN_TRANSFORM, FACE_EMBEDS, FACES

CAT = category("face")


NO_PACK = "(none installed: put antelopev2/ or buffalo_l/ with its .onnx files in models/insightface/models/)"


def pack_choices():
    """Installed insightface packs only; one explanatory entry when there is none."""
    try:
        packs = _analysis.installed_packs()
    except Exception:
        packs = []
    return packs or [NO_PACK]


def load_pack(model_pack, provider, det_size):
    if model_pack == NO_PACK:
        where = ", ".join(os.path.join(r, "models") for r in _analysis.insightface_roots())
        raise _analysis.FaceModelError(f"no insightface model pack installed: unzip antelopev2 (AdaFace/Arc2Face) or "
                                       f"buffalo_l into {where} (one folder per pack holding its .onnx files), "
                                       "then refresh the page")
    return _analysis.load_face_analysis(model_pack, provider, det_size)


class FP_FaceAnalysisLoader:
    @classmethod
    def INPUT_TYPES(cls):
        packs = pack_choices()
        return {"required": {
            "model_pack": (packs, {"default": packs[0], "tooltip": "insightface model pack folder in models/insightface/models/ (antelopev2: AdaFace/Arc2Face; buffalo_l). Only installed packs are listed."}),
            "provider": (_analysis.PROVIDER_CHOICES, {"default": "auto", "tooltip": "ONNX Runtime provider: auto picks CUDA / ROCm / CoreML / DirectML when available, else CPU."}),
            "det_size": ("INT", {"default": 640, "min": 128, "max": 2048, "step": 32, "tooltip": "Detection resolution for other packs calling .get() (Face Detect uses its own sizes). Higher = finds smaller faces, slower."}),
        }}

    RETURN_TYPES = ("FACE_ANALYSIS",)
    RETURN_NAMES = ("face_analysis",)
    FUNCTION = "execute"
    CATEGORY = CAT
    DESCRIPTION = ("Loads an insightface model pack (SCRFD detection + ArcFace recognition) from "
                   "models/insightface/models/<pack>/ and runs it on ONNX Runtime (insightface itself is not needed), "
                   "checking the folder first (nested zip layout, missing or corrupt files give clear errors). The "
                   "output also plugs into other packs' INSIGHTFACE inputs.")

    def execute(self, model_pack, provider, det_size):
        return (load_pack(model_pack, provider, det_size),)


class FP_OfflineFaceDetector:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "det_thresh": ("FLOAT", {"default": 0.5, "min": 0.05, "max": 0.99, "step": 0.01, "tooltip": "Minimum detection confidence. Higher = fewer false faces but may miss small or turned ones; lower = finds more."}),
            "max_faces": ("INT", {"default": 10, "min": 1, "max": 64, "tooltip": "Most faces looked for per image (higher = more, slower)."}),
        }}

    RETURN_TYPES = ("FACE_ANALYSIS",)
    RETURN_NAMES = ("face_analysis",)
    FUNCTION = "execute"
    CATEGORY = CAT
    DESCRIPTION = ("An offline face detector (MediaPipe face detection + face mesh, weights bundled in the "
                   "mediapipe==0.10.14 wheel, nothing to download). Gives boxes, 5 landmarks and scores like "
                   "insightface, but no identity embedding.")

    def execute(self, det_thresh, max_faces):
        from ..models_loader.face.offline import load_offline_detector

        return (load_offline_detector(det_thresh, max_faces),)


class FP_FaceDetect:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "image": ("IMAGE", {"tooltip": "Image batch to find faces in."}),
            "face_analysis": (FACE_ANALYSIS_TYPES, {"tooltip": "FP_FaceAnalysisLoader, FP_OfflineFaceDetector, or another pack's insightface loader."}),
            "select": (_detect.SELECT_MODES, {"default": "largest", "tooltip": "Per image: the largest face, the face at 'index' (left to right), or all faces."}),
            "index": ("INT", {"default": 0, "min": 0, "max": 63, "tooltip": "Face index (from 0, left to right) when select is 'index'."}),
            "if_no_face": (["error", "skip"], {"default": "error", "tooltip": "Stop with an error naming the image, or skip images without a face."}),
            "det_thresh": ("FLOAT", {"default": 0.5, "min": 0.05, "max": 0.99, "step": 0.01, "tooltip": "Detection confidence threshold. Higher = fewer false faces but may miss small or turned ones; lower = finds more."}),
        }}

    RETURN_TYPES = (FACES,)
    RETURN_NAMES = ("faces",)
    FUNCTION = "execute"
    CATEGORY = CAT
    DESCRIPTION = ("Finds faces in an image batch (retrying detection sizes 640, 320, 256) and returns FACES: "
                   "box, 5 landmarks, score and, when the analysis has a recognition model, an ArcFace embedding.")

    def execute(self, image, face_analysis, select, index, if_no_face, det_thresh):
        return (_detect.detect_faces(image, face_analysis, select, index, if_no_face, det_thresh=det_thresh),)


class FP_FaceEmbed:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "faces": (FACES, {"tooltip": "Faces from FP_FaceDetect."}),
            "mode": (_embed.EMBED_MODES, {"default": "per_face", "tooltip": "One embedding per face, or the normalised mean (one identity from several photos)."}),
        }, "optional": {
            "face_analysis": (FACE_ANALYSIS_TYPES, {"tooltip": "Optional: recompute embeddings with this analysis' recognition model (needs 'image')."}),
            "image": ("IMAGE", {"tooltip": "The images the faces were detected on (only with face_analysis)."}),
        }}

    RETURN_TYPES = (FACE_EMBEDS,)
    RETURN_NAMES = ("face_embeds",)
    FUNCTION = "execute"
    CATEGORY = CAT
    DESCRIPTION = "ArcFace identity embeddings [N, 512] (L2-normalised) of detected faces, per face or their mean."

    def execute(self, faces, mode, face_analysis=None, image=None):
        if face_analysis is not None:
            if image is None:
                raise ValueError("FP_FaceEmbed: connect 'image' together with 'face_analysis'")
            faces = _embed.compute_embeddings(image, faces, face_analysis)
        return (_embed.face_embeds(faces, mode),)


class FP_SaveFaceEmbeds:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "face_embeds": (FACE_EMBEDS, {"tooltip": "Embeddings to save."}),
            "filename": ("STRING", {"default": "my_face.safetensors", "tooltip": "File name in models/face_embeds (.safetensors or .pt; a sub-path there is allowed)."}),
        }, "optional": {
            "overwrite": ("BOOLEAN", {"default": False, "tooltip": "Replace an existing file; otherwise a numbered "
                                      "name (_00001, ...) is used."}),
        }}

    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("path",)
    FUNCTION = "execute"
    OUTPUT_NODE = True
    CATEGORY = CAT
    DESCRIPTION = "Saves FACE_EMBEDS to models/face_embeds so FP_LoadFaceEmbeds can reuse an identity without photos."

    def execute(self, face_embeds, filename, overwrite=False):
        def write(p):
            _embed.save_embeds(face_embeds, os.path.basename(p), os.path.dirname(p))

        path = files.write_file("face_embeds", filename, write, overwrite, ext=".safetensors",
                                allowed_ext=(".safetensors", ".pt"), what="Save Face Embeds")
        return files.saved(path)


class FP_LoadFaceEmbeds:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "embeds_file": (paths.list_files("face_embeds") or ["none"], {"tooltip": "A .pt/.safetensors file in models/face_embeds (e.g. mean_emb_*.pt)."}),
        }, "optional": {
            "path": ("STRING", {"default": "", "tooltip": "A file name in models/face_embeds or ComfyUI's input folder, or a path inside ComfyUI's folders; overrides embeds_file when set."}),
        }}

    RETURN_TYPES = (FACE_EMBEDS,)
    RETURN_NAMES = ("face_embeds",)
    FUNCTION = "execute"
    CATEGORY = CAT
    DESCRIPTION = "Loads ArcFace embeddings ([N, 512] or [512], e.g. AdaFace's mean_emb_*.pt) as L2-normalised FACE_EMBEDS."

    def execute(self, embeds_file, path=""):
        path = (path or "").strip()
        if path:
            return (_embed.load_embeds(files.confined_read_path(path, ("face_embeds",), what="Load Face Embeds path")),)
        if embeds_file == "none":
            raise ValueError(f"no embeddings file: put one into {paths.model_dir('face_embeds')} or set 'path'")
        return (_embed.load_embeds(paths.resolve("face_embeds", embeds_file)),)


class FP_FaceAlign:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "image": ("IMAGE", {"tooltip": "The images the faces were detected on."}),
            "faces": (FACES, {"tooltip": "Faces from FP_FaceDetect; one crop per face."}),
            "template": (list(_align.TEMPLATES), {"default": _align.default_template(), "tooltip":
                         "ffhq official (dlib-68): the exact FFHQ alignment e4e and the W+ Adapter were trained "
                         "with (dlib 68 landmarks; needs pip install dlib-bin face-recognition-models; the default "
                         "when installed). ffhq: a fast 5-point approximation of it (about 15 px off at 512 px). "
                         "arcface: the 112 px recognition crop."}),
            "size": ("INT", {"default": 512, "min": 64, "max": 2048, "step": 8, "tooltip": "Crop size: 256/512/1024 for ffhq, 112 for arcface."}),
            "padding": (list(_align.PADDING_MODES), {"default": "reflect", "tooltip": "How to fill where the crop leaves the photo: reflect = mirrored (with the official alignment: FFHQ's blurred mirror border); zeros = black (the W+ Adapter script's choice); border = repeat the edge pixels (5-point only; the official alignment leaves it black)."}),
        }}

    RETURN_TYPES = ("IMAGE", FACE_ALIGN_TRANSFORM)
    RETURN_NAMES = ("aligned", "transform")
    FUNCTION = "execute"
    CATEGORY = CAT
    DESCRIPTION = ("Aligns each face for the encoders: the official FFHQ alignment from dlib's 68 landmarks (as e4e and "
                   "the W+ Adapter), its 5-point approximation, or the ArcFace crop; outputs the crops plus the "
                   "transform for FP_FacePasteBack.")

    def execute(self, image, faces, template, size, padding):
        return _align.align_faces(image, faces, template, size, padding)


class FP_FacePasteBack:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "image": ("IMAGE", {"tooltip": "The original images."}),
            "aligned": ("IMAGE", {"tooltip": "The (edited) aligned crops, one per face, any square size."}),
            "transform": (FACE_ALIGN_TRANSFORM, {"tooltip": "From FP_FaceAlign."}),
            "feather": ("INT", {"default": 16, "min": 0, "max": 256, "tooltip": "Soft edge width in crop pixels. Higher = smoother, wider blend into the photo; 0 = hard edge."}),
        }}

    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("image",)
    FUNCTION = "execute"
    CATEGORY = CAT
    DESCRIPTION = "Warps aligned face crops back into the original images with the inverse alignment transform."

    def execute(self, image, aligned, transform, feather):
        return (_align.paste_back(image, aligned, transform, feather),)


class FP_FaceMask:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "faces": (FACES, {"tooltip": "Faces from FP_FaceDetect."}),
            "image": ("IMAGE", {"tooltip": "Images the faces were found in (sets the mask size)."}),
            "shape": (_mask.MASK_SHAPES, {"default": "convex_hull", "tooltip": "Hull of landmark-derived face outline, an ellipse, or the box."}),
            "grow": ("FLOAT", {"default": 1.0, "min": 0.5, "max": 3.0, "step": 0.05, "tooltip": "Size of the mask around the face centre. Higher = a larger region (1 = the face outline)."}),
            "feather": ("FLOAT", {"default": 8.0, "min": 0.0, "max": 256.0, "step": 0.5, "tooltip": "Soft edge width in pixels. Higher = a softer, wider edge; 0 = hard edge."}),
        }}

    RETURN_TYPES = ("MASK",)
    RETURN_NAMES = ("mask",)
    FUNCTION = "execute"
    CATEGORY = CAT
    DESCRIPTION = "A face MASK per image (union of its faces) from landmarks or boxes, feathered."

    def execute(self, faces, image, shape, grow, feather):
        _detect.check_images(image, "FP_FaceMask")
        return (_mask.face_mask(faces, shape, grow, feather, image.shape[1], image.shape[2]),)


class FP_WhitenBackground:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "image": ("IMAGE", {"tooltip": "Images (e.g. aligned faces)."}),
            "mask": ("MASK", {"tooltip": "Face mask (1 = keep)."}),
            "blur": ("FLOAT", {"default": 8.0, "min": 0.0, "max": 256.0, "step": 0.5, "tooltip": "Mask blur in pixels. Higher = a softer transition from face to white."}),
        }}

    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("image",)
    FUNCTION = "execute"
    CATEGORY = CAT
    DESCRIPTION = "W+ Adapter preprocessing: keeps the masked face and paints the rest white (soft where the mask is soft)."

    def execute(self, image, mask, blur):
        return (_mask.whiten_background(image, mask, blur),)


class FP_FaceSimilarity:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "image": ("IMAGE", {"tooltip": "Images to score (e.g. the sampler's output, decoded)."}),
            "reference": (FACE_EMBEDS, {"tooltip": "The identity: FP_FaceEmbed / FP_LoadFaceEmbeds output "
                                                   "(several rows are averaged into one identity)."}),
            "face_analysis": (FACE_ANALYSIS_TYPES, {"tooltip": "An insightface analysis with a recognition model "
                                                               "(antelopev2 or buffalo_l)."}),
            "det_thresh": ("FLOAT", {"default": 0.5, "min": 0.05, "max": 0.99, "step": 0.01,
                                     "tooltip": "Detection confidence threshold. Higher = fewer false faces, lower = finds more."}),
        }}

    RETURN_TYPES = ("FLOAT", "STRING")
    RETURN_NAMES = ("mean_similarity", "report")
    FUNCTION = "execute"
    OUTPUT_NODE = True
    CATEGORY = CAT
    DESCRIPTION = ("ArcFace identity similarity (cosine, -1..1) of the largest face in each image to the reference "
                   "identity: the papers' ID score, to compare methods, strengths or seeds. Images without a face are "
                   "reported as 'no face' and left out of the mean instead of stopping the run.")

    def execute(self, image, reference, face_analysis, det_thresh):
        scores = _similarity.identity_scores(image, reference, face_analysis, det_thresh)
        mean, report = _similarity.summary(scores)
        return {"ui": {"text": [report]}, "result": (mean, report)}


NODE_CLASS_MAPPINGS = {
    "FP_FaceSimilarity": FP_FaceSimilarity,
    "FP_FaceAnalysisLoader": FP_FaceAnalysisLoader,
    "FP_OfflineFaceDetector": FP_OfflineFaceDetector,
    "FP_FaceDetect": FP_FaceDetect,
    "FP_FaceEmbed": FP_FaceEmbed,
    "FP_SaveFaceEmbeds": FP_SaveFaceEmbeds,
    "FP_LoadFaceEmbeds": FP_LoadFaceEmbeds,
    "FP_FaceAlign": FP_FaceAlign,
    "FP_FacePasteBack": FP_FacePasteBack,
    "FP_FaceMask": FP_FaceMask,
    "FP_WhitenBackground": FP_WhitenBackground,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "FP_FaceSimilarity": "Face Similarity (ArcFace ID score)",
    "FP_FaceAnalysisLoader": "Face Analysis Loader (insightface)",
    "FP_OfflineFaceDetector": "Offline Face Detector (mediapipe)",
    "FP_FaceDetect": "Face Detect",
    "FP_FaceEmbed": "Face Embed (ArcFace)",
    "FP_SaveFaceEmbeds": "Save Face Embeds",
    "FP_LoadFaceEmbeds": "Load Face Embeds",
    "FP_FaceAlign": "Face Align (FFHQ / ArcFace)",
    "FP_FacePasteBack": "Face Paste Back",
    "FP_FaceMask": "Face Mask",
    "FP_WhitenBackground": "Whiten Background",
}
