"""Extra ONNX models for the insightface-equality tests (built in the test, a few KB each).

* ``random_scrfd``: an SCRFD-signature detector with random 1x1-conv heads over average-pooled
  input, so scores, box distances and landmark offsets vary per anchor (the tiny fixture's are
  constant): many overlapping candidates, which exercises decoding, sorting and NMS. Layouts:
  9 outputs (3 strides, 2 anchors) or 15 outputs (5 strides, 1 anchor), rank 2 or batched rank 3.
* ``mxnet_style_arcface``: an ArcFace-signature model whose first nodes are named ``Sub``/``Mul`` (the
  converted MXNet models normalise inside the graph, so insightface feeds raw 0..255 pixels).
"""
import numpy as np
from onnx import TensorProto, helper, numpy_helper


def _model(nodes, inputs, outputs, inits, name):
    import onnx

    graph = helper.make_graph(nodes, name, inputs, outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.checker.check_model(model)
    return model


def random_scrfd(path, five_levels=False, batched=False, seed=0):
    rng = np.random.default_rng(seed)
    strides = (8, 16, 32, 64, 128) if five_levels else (8, 16, 32)
    anchors = 1 if five_levels else 2
    inits, nodes, outs = [], [], {"score": [], "bbox": [], "kps": []}

    def const(name, arr, dtype=np.float32):
        inits.append(numpy_helper.from_array(np.asarray(arr, dtype=dtype), name))
        return name

    for s in strides:
        nodes.append(helper.make_node("AveragePool", ["input.1"], [f"p{s}"], kernel_shape=[s, s], strides=[s, s]))
        for kind, width, act in (("score", 1, "Sigmoid"), ("bbox", 4, "Softplus"), ("kps", 10, None)):
            c = width * anchors
            w = rng.normal(0, 1.5, (c, 3, 1, 1))
            b = {"score": rng.normal(0.5, 1.0, c), "bbox": rng.normal(1.0, 0.3, c), "kps": rng.normal(0, 1.0, c)}[kind]
            nodes.append(helper.make_node("Conv", [f"p{s}", const(f"w_{kind}{s}", w), const(f"b_{kind}{s}", b)],
                                          [f"c_{kind}{s}"]))
            src = f"c_{kind}{s}"
            if act:
                nodes.append(helper.make_node(act, [src], [f"a_{kind}{s}"]))
                src = f"a_{kind}{s}"
            nodes.append(helper.make_node("Transpose", [src], [f"t_{kind}{s}"], perm=[0, 2, 3, 1]))
            shape = [1, -1, width] if batched else [-1, width]
            out = f"{kind}_{s}"
            nodes.append(helper.make_node("Reshape", [f"t_{kind}{s}", const(f"sh_{kind}{s}", shape, np.int64)], [out]))
            outs[kind].append((out, width))
    inp = helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, "h", "w"])
    rank = (lambda n, w: [1, f"n{n}", w]) if batched else (lambda n, w: [f"n{n}", w])
    outputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, rank(n, w))
               for kind in ("score", "bbox", "kps") for n, w in outs[kind]]
    model = _model(nodes, [inp], outputs, inits, "random_scrfd")
    with open(path, "wb") as f:
        f.write(model.SerializeToString())
    return str(path)


def mxnet_style_arcface(path, seed=0):
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array(np.full((1, 3, 1, 1), 127.5, np.float32), "mean"),
             numpy_helper.from_array(np.full((1, 3, 1, 1), 1 / 128.0, np.float32), "scale"),
             numpy_helper.from_array(rng.normal(0, 0.2, (8, 3, 8, 8)).astype(np.float32), "conv_w"),
             numpy_helper.from_array(rng.normal(0, 0.01, (8 * 14 * 14, 512)).astype(np.float32), "fc_w")]
    nodes = [helper.make_node("Sub", ["data", "mean"], ["x0"], name="_minus0"),
             helper.make_node("Mul", ["x0", "scale"], ["x1"], name="_mul0"),
             helper.make_node("Conv", ["x1", "conv_w"], ["c"], strides=[8, 8], name="conv0"),
             helper.make_node("Flatten", ["c"], ["f"], axis=1, name="flat0"),
             helper.make_node("MatMul", ["f", "fc_w"], ["fc1"], name="fc1")]
    inp = helper.make_tensor_value_info("data", TensorProto.FLOAT, [1, 3, 112, 112])
    out = helper.make_tensor_value_info("fc1", TensorProto.FLOAT, [1, 512])
    model = _model(nodes, [inp], [out], inits, "mxnet_arcface")
    with open(path, "wb") as f:
        f.write(model.SerializeToString())
    return str(path)
