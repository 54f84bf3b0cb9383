"""Bad values at every node boundary, driven from the node registry (issue 11, bad inputs).

For every node of the pack (as ComfyUI registered it) and every FLOAT input: NaN, +Inf, -Inf and a
value outside its declared range; for every tensor-typed input (IMAGE, MASK, LATENT, WPLUS,
FACE_EMBEDS, IDENTITY_EMBEDDING): NaN, Inf, an empty batch and a wrong rank. The node's FUNCTION
(wrapped by the registry) is called directly with otherwise-default inputs; inputs of other socket
types (MODEL, CLIP, ...) get an inert placeholder, since the boundary check must refuse before the
node body runs. Every case must raise the pack's NodeInputError naming the node and the input, never
a raw torch error. The node x bad-input matrix is printed (run with -s to see it).
"""
import math

import pytest
import torch

TENSOR_KINDS = ("IMAGE", "MASK", "LATENT", "WPLUS", "FACE_EMBEDS", "IDENTITY_EMBEDDING")
FLOAT_CASES = ("nan", "+inf", "-inf", "range")
TENSOR_CASES = ("nan", "inf", "empty", "rank")


def _good_tensor(kind):
    return {
        "IMAGE": lambda: torch.rand(1, 16, 16, 3),
        "MASK": lambda: torch.ones(1, 16, 16),
        "LATENT": lambda: {"samples": torch.zeros(1, 4, 8, 8)},
        "WPLUS": lambda: torch.zeros(1, 18, 512),
        "FACE_EMBEDS": lambda: torch.randn(1, 512),
        "IDENTITY_EMBEDDING": lambda: {"vectors": torch.randn(2, 768)},
    }[kind]()


def _bad_tensor(kind, case):
    good = _good_tensor(kind)
    t = good["samples"] if kind == "LATENT" else good["vectors"] if kind == "IDENTITY_EMBEDDING" else good
    if case == "nan":
        t = t.clone(); t.view(-1)[0] = float("nan")
    elif case == "inf":
        t = t.clone(); t.view(-1)[-1] = float("inf")
    elif case == "empty":
        t = t[:0]
    elif case == "rank":  # two extra leading dims: outside every accepted rank (FACE_EMBEDS takes [512] too)
        t = t[None, None]
    if kind == "LATENT":
        return {"samples": t}
    if kind == "IDENTITY_EMBEDDING":
        return {"vectors": t}
    return t


class _Placeholder:
    """Stands in for MODEL/CLIP/VAE/...: the check must refuse before the node touches it."""


def _inputs(cls):
    types = cls.INPUT_TYPES()
    for section in ("required", "optional"):
        for name, decl in (types.get(section) or {}).items():
            kind = decl[0]
            opts = decl[1] if len(decl) > 1 and isinstance(decl[1], dict) else {}
            yield section, name, kind, opts


def _default_kwargs(cls):
    kw = {}
    for section, name, kind, opts in _inputs(cls):
        if isinstance(kind, (list, tuple)):
            if kind:
                kw[name] = opts.get("default", kind[0])
        elif kind in TENSOR_KINDS:
            kw[name] = _good_tensor(kind)
        elif "default" in opts:
            kw[name] = opts["default"]
        elif kind == "STRING":
            kw[name] = ""
        elif section == "required":
            kw[name] = _Placeholder()
    return kw


def _call(cls, kw):
    fn = getattr(cls(), cls.FUNCTION)
    if getattr(cls, "INPUT_IS_LIST", False):
        kw = {k: [v] for k, v in kw.items()}
    return fn(**kw)


def _cases(classes):
    for node_id, cls in sorted(classes.items()):
        for _, name, kind, opts in _inputs(cls):
            if kind == "FLOAT":
                for case in FLOAT_CASES:
                    if case == "range" and opts.get("max") is None and opts.get("min") is None:
                        continue
                    yield node_id, name, kind, case
            elif isinstance(kind, str) and kind in TENSOR_KINDS:
                for case in TENSOR_CASES:
                    yield node_id, name, kind, case


def _float_value(opts, case):
    if case == "nan":
        return math.nan
    if case == "+inf":
        return math.inf
    if case == "-inf":
        return -math.inf
    if opts.get("max") is not None:
        return float(opts["max"]) + 1.0
    return float(opts["min"]) - 1.0


@pytest.fixture(scope="module")
def pack_nodes(comfy):
    return dict(comfy.pack.NODE_CLASS_MAPPINGS), dict(comfy.pack.NODE_DISPLAY_NAME_MAPPINGS)


COLUMNS = FLOAT_CASES + tuple(c for c in TENSOR_CASES if c not in FLOAT_CASES)


def bad_input_matrix(classes, display, validate):
    """{(node, input, type): {case: outcome}} and the failures; outcome "ok" = NodeInputError naming both."""
    matrix, failures = {}, []
    for node_id, name, kind, case in _cases(classes):
        cls = classes[node_id]
        kw = _default_kwargs(cls)
        opts = dict(next(o for _, n, _, o in _inputs(cls) if n == name))
        kw[name] = _float_value(opts, case) if kind == "FLOAT" else _bad_tensor(kind, case)
        try:
            _call(cls, kw)
            outcome = "ACCEPTED"
        except validate.NodeInputError as e:
            msg = str(e)
            shown = display.get(node_id, node_id)
            outcome = "ok" if (shown in msg and f"'{name}'" in msg) else f"unnamed: {msg}"
        except Exception as e:  # a raw error: the boundary check let it through
            outcome = f"raw {type(e).__name__}: {str(e)[:80]}"
        matrix.setdefault((node_id, name, kind), {})[case] = outcome
        if outcome != "ok":
            failures.append(f"{node_id}.{name} ({kind}) {case}: {outcome}")
    return matrix, failures


def matrix_markdown(matrix):
    """The node x bad-input matrix as a markdown table (ok / FAIL / - for not applicable)."""
    rows = ["| node | input | type | " + " | ".join(COLUMNS) + " |", "|---|---|---|" + "---|" * len(COLUMNS)]
    for (node_id, name, kind), row in sorted(matrix.items()):
        cells = [row.get(c, "-") if row.get(c, "-") in ("ok", "-") else "FAIL" for c in COLUMNS]
        rows.append(f"| `{node_id}` | {name} | {kind} | " + " | ".join(cells) + " |")
    rows.append(f"\n{len(matrix)} inputs of {len({k[0] for k in matrix})} nodes, {sum(len(r) for r in matrix.values())} "
                "cases; ok = refused with NodeInputError naming node and input; skipped nodes: none")
    return "\n".join(rows)


def test_every_node_refuses_bad_floats_and_tensors(comfy, pack_nodes):
    classes, display = pack_nodes
    matrix, failures = bad_input_matrix(classes, display, comfy.pack.nodes._validate)
    print("\n" + matrix_markdown(matrix))
    assert matrix, "no FLOAT or tensor inputs found in the pack's nodes"
    assert not failures, "\n".join(failures)
