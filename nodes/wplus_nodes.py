"""W+ space nodes: e4e encoder, W+ codes (load / save / interpolate / style-mix) and latent edits."""
import os

from ._common import category
from ..models_loader import files, paths
from ..models_loader.methods.wplus import codes as wcodes
from ..models_loader.methods.wplus import e4e as we4e
from ..models_loader.methods.wplus import edits as wedits

CAT = category("wplus")
PATH_ENTRY = "(use path below)"
OVERRIDE_ENTRY = "(use direction_override)"
ROW_MODES = ["preset", "custom"]


def _rows_input(default_start, default_end, what):
    return {
        "start_row": ("INT", {"default": default_start, "min": 0, "max": 17,
                              "tooltip": f"First W+ row {what} (0-3 coarse: pose/face shape, 4-7 middle: features/"
                                         "expression, 8-17 fine: colour/texture)."}),
        "end_row": ("INT", {"default": default_end, "min": 1, "max": 18,
                            "tooltip": f"End of the row range {what} (exclusive, up to 18)."}),
    }


class LoadE4EEncoder:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "encoder_name": (paths.list_files("e4e"), {
                "tooltip": "e4e encoder in models/e4e: the official e4e_ffhq_encode.pt (omertov/encoder4editing) "
                           "or a safetensors file with the same 'encoder.*' keys and 'latent_avg'. Loaded "
                           "without executing pickled code."}),
        }}

    RETURN_TYPES = ("E4E_ENCODER",)
    RETURN_NAMES = ("e4e",)
    FUNCTION = "load"
    CATEGORY = CAT
    DESCRIPTION = ("Loads the e4e (Encoder4Editing, IR-SE50) image encoder that maps an FFHQ-aligned face "
                   "photo to a StyleGAN2-FFHQ W+ code [18,512], the identity input of the W+ Adapter and PIDiff. "
                   "Pure PyTorch (no compiled CUDA ops); only the encoder.* weights and latent_avg are used.")

    def load(self, encoder_name):
        return (we4e.load_e4e(paths.resolve("e4e", encoder_name)),)


class WPlusEncode:
    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "e4e": ("E4E_ENCODER", {"tooltip": "The encoder from Load e4e Encoder."}),
                "image": ("IMAGE", {"tooltip": "Face photo(s), already FFHQ-aligned (use the face pipeline's "
                                               "FP_FaceAlign node on ordinary photos). Resized to 256x256 "
                                               "(antialiased) as e4e expects; every batch item is encoded."}),
                "average_batch": ("BOOLEAN", {"default": False,
                                              "tooltip": "Average the codes of all images into one identity "
                                                         "[1,18,512] (several photos of the same person)."}),
            },
            "optional": {
                "mask": ("MASK", {"tooltip": "Optional face mask (1 = face). The background is painted white "
                                             "(soft where the mask is soft) before encoding, as the W+ Adapter's preprocessing "
                                             "does; batch 1 applies to every image."}),
                "batch_size": ("INT", {"default": 4, "min": 1, "max": 64,
                                       "tooltip": "Images per encoder forward pass (memory vs speed); the "
                                                  "result does not depend on it."}),
            },
        }

    RETURN_TYPES = ("WPLUS",)
    RETURN_NAMES = ("wplus",)
    FUNCTION = "encode"
    CATEGORY = CAT
    DESCRIPTION = ("Encodes FFHQ-aligned face images with e4e into W+ codes [B,18,512] (w = w0 + per-row deltas "
                   "+ latent_avg). The input must already be aligned like FFHQ (eyes and mouth at the FFHQ "
                   "positions): run FP_FaceAlign first on ordinary photos. Optional mask whitens the background.")

    def encode(self, e4e, image, average_batch=False, mask=None, batch_size=4):
        return (we4e.encode_images(e4e, image, mask=mask, average_batch=average_batch, batch_size=batch_size),)


class FP_LoadWPlus:
    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "code": (paths.list_files("wplus_codes") + [PATH_ENTRY], {
                    "tooltip": "W+ code file in models/wplus/codes (.pt/.pth tensor [1,18,512] as the official "
                               "e4e / W+ Adapter codes, .npy or .safetensors). Pick the last entry to use the path below."}),
            },
            "optional": {
                "path": ("STRING", {"default": "", "tooltip": "Optional name in models/wplus/codes, or a path inside "
                                                               "ComfyUI's folders, that overrides the dropdown when not empty."}),
            },
        }

    RETURN_TYPES = ("WPLUS",)
    RETURN_NAMES = ("wplus",)
    FUNCTION = "load"
    CATEGORY = CAT
    DESCRIPTION = ("Loads a StyleGAN2-FFHQ W+ code [B,18,512] from a file (for example the e4e codes shipped "
                   "with the W+ Adapter demo), so a face can be reused without the encoder.")

    @staticmethod
    def _path(code, path=""):
        choice = (path or "").strip() or code
        if choice == PATH_ENTRY:
            raise ValueError("Load W+ Code: the dropdown is set to use the path, but the path is empty")
        return paths.resolve("wplus_codes", choice)

    @classmethod
    def IS_CHANGED(cls, code, path=""):
        try:
            p = cls._path(code, path)
            return f"{p}:{os.path.getmtime(p)}"
        except Exception:
            return float("nan")

    def load(self, code, path=""):
        return (wcodes.load_wplus(self._path(code, path)),)


class FP_SaveWPlus:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "wplus": ("WPLUS", {"tooltip": "W+ code(s) [B,18,512] to save (all batch items in one file)."}),
            "filename": ("STRING", {"default": "wplus_code", "tooltip": "File name (without extension) in "
                                    "models/wplus/codes, or a sub-path there."}),
            "format": (list(wcodes.FORMATS), {"default": "pt", "tooltip": "pt/pth: torch tensor [B,18,512] as the "
                                              "official codes; npy: numpy float32; safetensors: key 'wplus'."}),
            "overwrite": ("BOOLEAN", {"default": False, "tooltip": "Replace an existing file; otherwise a "
                                                                   "numbered name (_00001, ...) is used."}),
        }}

    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("path",)
    FUNCTION = "save"
    OUTPUT_NODE = True
    CATEGORY = CAT
    DESCRIPTION = ("Saves W+ codes to models/wplus/codes so Load W+ Code can reuse them; "
                   "returns the written path.")

    def save(self, wplus, filename, format="pt", overwrite=False):
        path = wcodes.save_wplus_named(wplus, filename, wcodes.FORMATS[format], files.target_dir("wplus_codes"), overwrite)
        return files.saved(path)


class FP_WPlusInterpolate:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "wplus_a": ("WPLUS", {"tooltip": "Code at t = 0."}),
            "wplus_b": ("WPLUS", {"tooltip": "Code at t = 1 (a batch of 1 broadcasts against the other batch)."}),
            "t": ("FLOAT", {"default": 0.5, "min": -1.0, "max": 2.0, "step": 0.01,
                            "tooltip": "How far from A towards B: 0 = A, 1 = B, 0.5 = halfway. Higher = more like B; "
                                       "values outside 0..1 exaggerate the difference."}),
        }}

    RETURN_TYPES = ("WPLUS",)
    RETURN_NAMES = ("wplus",)
    FUNCTION = "interpolate"
    CATEGORY = CAT
    DESCRIPTION = "Blends two W+ codes (identity morphing) on all 18 rows: t = 0 gives A, 1 gives B."

    def interpolate(self, wplus_a, wplus_b, t):
        return (wcodes.interpolate(wplus_a, wplus_b, t),)


class FP_WPlusStyleMix:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "wplus_a": ("WPLUS", {"tooltip": "Base code: rows outside the range come from here."}),
            "wplus_b": ("WPLUS", {"tooltip": "Donor code: rows start_row..end_row-1 come from here."}),
            **_rows_input(8, 18, "taken from wplus_b"),
        }}

    RETURN_TYPES = ("WPLUS",)
    RETURN_NAMES = ("wplus",)
    FUNCTION = "mix"
    CATEGORY = CAT
    DESCRIPTION = ("StyleGAN style mixing: copies W+ rows start..end-1 of code B into code A (default 8..18: "
                   "B's fine colour/texture on A's shape and features).")

    def mix(self, wplus_a, wplus_b, start_row, end_row):
        return (wcodes.style_mix(wplus_a, wplus_b, start_row, end_row),)


class FP_WPlusBatch:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "wplus_a": ("WPLUS", {"tooltip": "First code(s): batch items 0..A-1 of the result."}),
            "wplus_b": ("WPLUS", {"tooltip": "Appended code(s)."}),
        }}

    RETURN_TYPES = ("WPLUS",)
    RETURN_NAMES = ("wplus",)
    FUNCTION = "batch"
    CATEGORY = CAT
    DESCRIPTION = ("Concatenates W+ codes into one batch [A+B,18,512], e.g. an edit sweep that the W+ Adapter "
                   "applies one code per generated image.")

    def batch(self, wplus_a, wplus_b):
        return (wcodes.concat(wplus_a, wplus_b),)


def _direction_input(with_override=False):
    return (wedits.list_choices() + ([OVERRIDE_ENTRY] if with_override else []), {
        "tooltip": "Direction file in models/wplus/directions: InterFaceGAN boundary .pt [1,512] (e4e "
                   "interfacegan_directions: age, smile, pose), latent direction .npy [18,512] (W+ Adapter "
                   "latent_directions), or 'ganspace:<name>' presets (listed when ganspace_configs.csv and "
                   "ffhq_pca.pt are in that folder)."})


class FP_LoadWPlusDirection:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"direction": _direction_input()}}

    RETURN_TYPES = ("WPLUS_DIRECTION",)
    RETURN_NAMES = ("direction",)
    FUNCTION = "load"
    CATEGORY = CAT
    DESCRIPTION = ("Loads a W+ edit direction (InterFaceGAN, latent direction or a GANSpace preset) for "
                   "Delta-W Edit's optional direction input.")

    def load(self, direction):
        return (wedits.resolve_choice(direction),)


class DeltaWEdit:
    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "wplus": ("WPLUS", {"tooltip": "W+ code(s) [B,18,512] to edit (each batch item separately)."}),
                "direction": _direction_input(with_override=True),
                "strength": ("FLOAT", {"default": 3.0, "min": -100.0, "max": 100.0, "step": 0.1,
                                       "tooltip": "How far to move along the direction. Higher = a stronger edit "
                                                  "(e.g. older, more smiling). InterFaceGAN / latent direction: adds "
                                                  "strength times the direction (negative "
                                                  "reverses, 0 = unchanged). GANSpace: the target coordinate in "
                                                  "standard deviations along the component, replacing the csv's "
                                                  "strength column (as the W+ Adapter demo does); 0 moves to the "
                                                  "mean, it is not 'no edit'."}),
                "rows": (ROW_MODES, {"default": "preset",
                                     "tooltip": "preset: InterFaceGAN all 18 rows (official), latent directions "
                                                "rows 0-7 (W+ Adapter demo), GANSpace the preset's start/end. "
                                                "custom: use start_row/end_row."}),
                **_rows_input(0, 18, "edited when rows = custom"),
            },
            "optional": {
                "direction_override": ("WPLUS_DIRECTION", {"tooltip": "A direction from Load W+ Direction; "
                                                                      "replaces the dropdown when connected."}),
            },
        }

    RETURN_TYPES = ("WPLUS",)
    RETURN_NAMES = ("wplus",)
    FUNCTION = "edit"
    CATEGORY = CAT
    DESCRIPTION = ("Edits W+ codes along a semantic direction exactly as the official code: InterFaceGAN and "
                   "latent directions add strength times the direction to the chosen rows; GANSpace (e4e get_delta) sets the "
                   "row-0 coordinate on a PCA component to strength std and adds that delta to the preset rows.")

    def edit(self, wplus, direction, strength, rows="preset", start_row=0, end_row=18, direction_override=None):
        if direction_override is not None:
            d = direction_override
        elif direction == OVERRIDE_ENTRY:
            raise ValueError("Delta-W Edit: direction is set to use direction_override, but nothing is connected to it")
        else:
            d = wedits.resolve_choice(direction)
        start, end = (None, None) if rows == "preset" else (start_row, end_row)
        return (wedits.apply_edit(wplus, d, strength, start, end),)


NODE_CLASS_MAPPINGS = {
    "LoadE4EEncoder": LoadE4EEncoder,
    "WPlusEncode": WPlusEncode,
    "FP_LoadWPlus": FP_LoadWPlus,
    "FP_SaveWPlus": FP_SaveWPlus,
    "FP_WPlusInterpolate": FP_WPlusInterpolate,
    "FP_WPlusStyleMix": FP_WPlusStyleMix,
    "FP_WPlusBatch": FP_WPlusBatch,
    "FP_LoadWPlusDirection": FP_LoadWPlusDirection,
    "DeltaWEdit": DeltaWEdit,
}

NODE_DISPLAY_NAME_MAPPINGS = {
    "LoadE4EEncoder": "Load e4e Encoder",
    "WPlusEncode": "W+ Encode (e4e)",
    "FP_LoadWPlus": "Load W+ Code",
    "FP_SaveWPlus": "Save W+ Code",
    "FP_WPlusInterpolate": "W+ Interpolate",
    "FP_WPlusStyleMix": "W+ Style Mix",
    "FP_WPlusBatch": "W+ Batch",
    "FP_LoadWPlusDirection": "Load W+ Direction",
    "DeltaWEdit": "Delta-W Edit (W+)",
}
