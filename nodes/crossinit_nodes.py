"""Cross Initialization and identity-embedding files: nodes that patch a CLIP with a trigger word."""
import os

from ._common import category
from ._textspace import IDENTITY, TriggerNode, build_tokens, trigger_inputs
from ..models_loader import files, paths, textspace
from ..models_loader.methods.registry import method


def _identity_files():
    out = []
    for folder in ("crossinit", "embeddings"):
        try:
            out += [f"{folder}/{f}" for f in paths.list_files(folder)]
        except Exception:  # folder not registered in this ComfyUI
            pass
    return out or ["(no files in models/crossinit or models/embeddings)"]


def _resolve_identity_file(choice):
    folder, _, name = choice.partition("/")
    if folder not in ("crossinit", "embeddings") or not name:
        raise FileNotFoundError(f"{choice!r}: pick a file from models/crossinit or models/embeddings "
                                "(official learned_embeds.bin, or a .safetensors saved by FP_SaveIdentityEmbedding)")
    return paths.resolve(folder, name)


class CrossInitEmbedding(TriggerNode):
    DESCRIPTION = ("Cross Initialization (CVPR 2024): computes the official initial identity embedding (mean of the "
                   "first two BPE tokens of 691 celebrity names, run through this CLIP's text encoder, rows 1..2 after "
                   "the final LayerNorm) and maps a trigger word to those two tokens. Works for SD1.x, SD2.x and SDXL "
                   "(one pair of vectors per encoder). Use the trigger word in any CLIPTextEncode; the UNet is untouched.")
    CATEGORY = category("crossinit")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": trigger_inputs("Text encoder(s) of an SD1.x, SD2.x or SDXL checkpoint."),
            "optional": {
                "names_file": ("STRING", {"default": "", "tooltip": "Optional names list (one 'First Last' per line): "
                                          "a file name in ComfyUI's input folder, or a path inside ComfyUI's folders. "
                                          "Empty: the official wiki_names_v2.txt shipped with the pack."}),
            },
        }

    def execute(self, clip, trigger_word, names_file=""):
        textspace.check_trigger(trigger_word)  # before the 691-name encode
        names = files.confined_read_path(names_file, what="names_file") if names_file.strip() else None
        return build_tokens("crossinit", clip, method("crossinit").load(names), trigger_word)


class FP_LoadIdentityEmbedding(TriggerNode):
    DESCRIPTION = ("Loads an identity embedding (official Cross Initialization learned_embeds.bin with '<id>_v0/_v1' "
                   "tokens, or a file saved by Save Identity Embedding / a textual-inversion file) from models/crossinit "
                   "or models/embeddings and maps a trigger word in the prompt to its tokens. The embedding must match "
                   "the CLIP's width (SD1.x 768, SD2.x 1024, SDXL 768+1280).")
    CATEGORY = category("crossinit")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": trigger_inputs("Text encoder to patch with the trigger word.", {
            "embedding_file": (_identity_files(), {"tooltip": "File in models/crossinit or models/embeddings "
                                                   "(.bin/.pt loaded tensor-only, or .safetensors)."})})}

    def execute(self, clip, embedding_file, trigger_word):
        textspace.check_trigger(trigger_word)
        identity = textspace.load_identity_file(_resolve_identity_file(embedding_file))
        return textspace.apply_identity(clip, trigger_word, identity["vectors"], "file", what=f"embedding {embedding_file}",
                                        name=identity["name"])


class FP_ApplyIdentityEmbedding:
    DESCRIPTION = ("Maps a trigger word in the prompt to the tokens of an IDENTITY_EMBEDDING (from Cross Initialization, "
                   "AdaFace or a loaded file) on another CLIP, e.g. to reuse one identity in several branches.")
    CATEGORY = category("crossinit")
    RETURN_TYPES = ("CLIP",)
    RETURN_NAMES = ("clip",)
    FUNCTION = "execute"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": trigger_inputs("Text encoder to patch with the trigger word.", {
            "identity_embedding": (IDENTITY, {"tooltip": "Identity tokens to insert for the trigger word."})})}

    def execute(self, clip, identity_embedding, trigger_word):
        patched, _ = textspace.apply_identity(clip, trigger_word, identity_embedding["vectors"],
                                              identity_embedding.get("method", "file"))
        return (patched,)


class FP_SaveIdentityEmbedding:
    DESCRIPTION = ("Saves an identity embedding into models/embeddings as <name>.safetensors in the format ComfyUI's "
                   "'embedding:<name>' prompt syntax reads (one [N, D] tensor; per-encoder clip_l/clip_g for SDXL), so "
                   "plain CLIPTextEncode can use it without this pack.")
    CATEGORY = category("crossinit")
    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("path",)
    FUNCTION = "execute"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "identity_embedding": (IDENTITY, {"tooltip": "Identity tokens to save."}),
                "name": ("STRING", {"default": "my_face", "tooltip": "File name (without extension) in models/embeddings; "
                                    "use it in prompts as embedding:<name>."}),
                "overwrite": ("BOOLEAN", {"default": False, "tooltip": "Replace an existing file of that name; "
                                          "otherwise a numbered name (_00001, ...) is used."}),
            },
        }

    def execute(self, identity_embedding, name, overwrite=False):
        path = files.write_file("embeddings", name, lambda p: textspace.save_identity_file(identity_embedding, p),
                                overwrite, ext=".safetensors", what="Save Identity Embedding")
        stem = os.path.relpath(path, files.target_dir("embeddings"))[:-len(".safetensors")].replace(os.sep, "/")
        return files.saved(path, f"use it in a prompt as embedding:{stem}")


NODE_CLASS_MAPPINGS = {
    "CrossInitEmbedding": CrossInitEmbedding,
    "FP_LoadIdentityEmbedding": FP_LoadIdentityEmbedding,
    "FP_ApplyIdentityEmbedding": FP_ApplyIdentityEmbedding,
    "FP_SaveIdentityEmbedding": FP_SaveIdentityEmbedding,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "CrossInitEmbedding": "Cross Initialization Embedding",
    "FP_LoadIdentityEmbedding": "Load Identity Embedding (CrossInit / file)",
    "FP_ApplyIdentityEmbedding": "Apply Identity Embedding to CLIP",
    "FP_SaveIdentityEmbedding": "Save Identity Embedding (embedding:)",
}
