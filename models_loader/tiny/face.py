"""Tiny ONNX face models with the signatures insightface's ``model_zoo`` routes on.

* ``face_scrfd`` - SCRFD-signature detector: input ``[1, 3, H, W]`` (symbolic H, W), 9 rank-2 outputs
  (scores [n, 1], boxes [n, 4], keypoints [n, 10] at strides 8/16/32, 2 anchors), so insightface
  builds its ``SCRFD`` class. It is hand-wired, not random: a bright blob on a dark background
  (mean brightness over 32-px cells, 3x3 smoothed) scores high at stride 32, with a fixed 4-stride
  box and 5 landmarks placed like a face; a blank image gives no detection.
* ``face_arcface`` - ArcFace-signature recogniser: input ``[N, 3, 112, 112]``, one output ``[N, 512]``
  (random conv + linear, seeded), so insightface builds ``ArcFaceONNX``.

:func:`make_pack` writes them under the official file names into ``<root>/models/<name>/``
(``antelopev2`` or ``buffalo_l``, optionally in the zip's nested layout) so insightface's own
``FaceAnalysis`` loads them.
"""
import os
import shutil

from . import register, seeded_generator

PACK_FILES = {
    "antelopev2": {"face_scrfd": "scrfd_10g_bnkps.onnx", "face_arcface": "glintr100.onnx"},
    "buffalo_l": {"face_scrfd": "det_10g.onnx", "face_arcface": "w600k_r50.onnx"},
}
OPSET = 13

# landmark offsets from the anchor, in strides (x, y): eyes, nose, mouth corners
KPS_OFFSETS = [(-0.9, -0.5), (0.9, -0.5), (0.0, 0.3), (-0.75, 1.1), (0.75, 1.1)]
BOX_DIST = 2.5  # box half-size in strides


def _save(model, path):
    import onnx

    onnx.checker.check_model(model)
    with open(path, "wb") as f:
        f.write(model.SerializeToString())


def build_scrfd():
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    inits, nodes = [], []

    def const(name, arr):
        inits.append(numpy_helper.from_array(np.asarray(arr, dtype=np.float32), name))
        return name

    def i64(name, arr):
        inits.append(numpy_helper.from_array(np.asarray(arr, dtype=np.int64), name))
        return name

    const("gray_w", np.full((1, 3, 1, 1), 1.0 / 3.0))
    nodes.append(helper.make_node("Conv", ["input.1", "gray_w"], ["gray"], name="gray_conv"))
    i64("shape_1", [-1, 1])
    i64("shape_4", [-1, 4])
    i64("shape_10", [-1, 10])
    outputs = {"score": [], "bbox": [], "kps": []}
    for s in (8, 16, 32):
        nodes.append(helper.make_node("AveragePool", ["gray"], [f"pool{s}"], kernel_shape=[s, s], strides=[s, s],
                                      name=f"pool{s}"))
        if s == 32:
            nodes.append(helper.make_node("AveragePool", [f"pool{s}"], [f"smooth{s}"], kernel_shape=[3, 3],
                                          strides=[1, 1], pads=[1, 1, 1, 1], count_include_pad=0, name="smooth"))
            # keep local maxima only (one detection per blob), then 2 anchors: logit = 12 * (brightness - 0.45)
            nodes.append(helper.make_node("MaxPool", [f"smooth{s}"], ["localmax"], kernel_shape=[3, 3],
                                          strides=[1, 1], pads=[1, 1, 1, 1], name="localmax"))
            nodes.append(helper.make_node("Equal", [f"smooth{s}", "localmax"], ["is_peak"], name="is_peak"))
            nodes.append(helper.make_node("Cast", ["is_peak"], ["peak"], to=TensorProto.FLOAT, name="peak"))
            const("peak_gain", np.full((1,), 20.0))
            const("peak_off", np.full((1,), -20.0))
            nodes.append(helper.make_node("Mul", ["peak", "peak_gain"], ["peak_g"], name="peak_gain"))
            nodes.append(helper.make_node("Add", ["peak_g", "peak_off"], ["peak_pen"], name="peak_pen"))
            nodes.append(helper.make_node("Add", [f"smooth{s}", "peak_pen"], ["peaked"], name="peaked"))
            const(f"sw{s}", np.full((2, 1, 1, 1), 12.0))
            const(f"sb{s}", np.full((2,), -12.0 * 0.45))
            src = "peaked"
        else:
            const(f"sw{s}", np.zeros((2, 1, 1, 1)))
            const(f"sb{s}", np.full((2,), -12.0))
            src = f"pool{s}"
        nodes.append(helper.make_node("Conv", [src, f"sw{s}", f"sb{s}"], [f"logit{s}"], name=f"score_conv{s}"))
        nodes.append(helper.make_node("Sigmoid", [f"logit{s}"], [f"sig{s}"], name=f"sigmoid{s}"))
        # boxes / keypoints: constant distances (in strides) per anchor, channel order (anchor, value)
        box = np.tile(np.full(4, BOX_DIST), 2)
        kps = np.tile(np.asarray(KPS_OFFSETS, dtype=np.float32).reshape(-1), 2)
        const(f"bw{s}", np.zeros((8, 1, 1, 1)))
        const(f"bb{s}", box)
        const(f"kw{s}", np.zeros((20, 1, 1, 1)))
        const(f"kb{s}", kps)
        nodes.append(helper.make_node("Conv", [f"pool{s}", f"bw{s}", f"bb{s}"], [f"box{s}"], name=f"bbox_conv{s}"))
        nodes.append(helper.make_node("Conv", [f"pool{s}", f"kw{s}", f"kb{s}"], [f"kp{s}"], name=f"kps_conv{s}"))
        for kind, src, shape in (("score", f"sig{s}", "shape_1"), ("bbox", f"box{s}", "shape_4"),
                                 ("kps", f"kp{s}", "shape_10")):
            nodes.append(helper.make_node("Transpose", [src], [f"{kind}_t{s}"], perm=[0, 2, 3, 1], name=f"{kind}_t{s}"))
            out = f"{kind}_{s}"
            nodes.append(helper.make_node("Reshape", [f"{kind}_t{s}", shape], [out], name=f"{kind}_r{s}"))
            outputs[kind].append((out, int(shape.split("_")[1])))
    inp = helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, "height", "width"])
    outs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, [f"n{name}", width])
            for kind in ("score", "bbox", "kps") for name, width in outputs[kind]]
    graph = helper.make_graph(nodes, "tiny_scrfd", [inp], outs, initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                             producer_name="comfyui-face-personalization-tiny")


def build_arcface():
    import onnx  # noqa: F401
    import torch
    from onnx import TensorProto, helper, numpy_helper

    g = seeded_generator("face_arcface")
    w1 = torch.randn(16, 3, 8, 8, generator=g) * (1.0 / (3 * 64) ** 0.5)
    w2 = torch.randn(16 * 14 * 14, 512, generator=g) * (1.0 / (16 * 14 * 14) ** 0.5)
    inits = [numpy_helper.from_array(w1.numpy(), "conv_w"), numpy_helper.from_array(torch.zeros(16).numpy(), "conv_b"),
             numpy_helper.from_array(w2.numpy(), "fc_w"), numpy_helper.from_array(torch.zeros(512).numpy(), "fc_b")]
    nodes = [helper.make_node("Conv", ["input.1", "conv_w", "conv_b"], ["c1"], strides=[8, 8], name="conv0"),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu0"),
             helper.make_node("Flatten", ["r1"], ["f1"], axis=1, name="flatten0"),
             helper.make_node("Gemm", ["f1", "fc_w", "fc_b"], ["683"], name="fc0")]
    inp = helper.make_tensor_value_info("input.1", TensorProto.FLOAT, ["None", 3, 112, 112])
    out = helper.make_tensor_value_info("683", TensorProto.FLOAT, ["None", 512])
    graph = helper.make_graph(nodes, "tiny_arcface", [inp], [out], initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                             producer_name="comfyui-face-personalization-tiny")


@register("face_scrfd", "tiny_scrfd.onnx", version=1)
def _gen_scrfd(path):
    _save(build_scrfd(), path)


@register("face_arcface", "tiny_arcface.onnx", version=1)
def _gen_arcface(path):
    _save(build_arcface(), path)


def make_pack(root, name="antelopev2", nested=False, detection=True, recognition=True, link=True):
    """Put the tiny models into ``<root>/models/<name>/`` (``.../<name>/<name>/`` if ``nested``)
    under the official file names; returns the folder. ``root`` is an insightface root
    (ComfyUI's ``models/insightface``)."""
    from . import ensure

    folder = os.path.join(str(root), "models", name)
    if nested:
        folder = os.path.join(folder, name)
    os.makedirs(folder, exist_ok=True)
    files = PACK_FILES.get(name, PACK_FILES["antelopev2"])
    for kind, fname in files.items():
        if (kind == "face_scrfd" and not detection) or (kind == "face_arcface" and not recognition):
            continue
        dst = os.path.join(folder, fname)
        if os.path.lexists(dst):
            continue
        src = str(ensure(kind))
        if link:
            os.symlink(src, dst)
        else:
            shutil.copyfile(src, dst)
    return folder
