"""Readable layout for generated example workflows (UI format).

Nodes go into columns by their depth in the graph (longest path from a source), left to right in
the direction the data flows, so no wire runs backwards; inside a column nodes are ordered by the
mean row of what feeds them (fewer crossings). Each node gets a size that holds its slots and
widgets with room to spare (the frontend grows a node that is too small, which is what made the
old grid layout overlap), so boxes never overlap in either renderer. Titles are left to the
nodes' display names; a Markdown note explains the workflow at the top left.

Spacing leaves room for the frontend's "Nodes 2.0" renderer: frontend 1.32 draws a classic workflow's
nodes 1.2x larger in place (``Comfy.VueNodes.AutoScaleLayout`` scales the sizes, measured in
tests/web/test_workflows_page.py), and a Load Image node grows further with its picture, so columns
and rows advance by the grown size.
"""

TITLE_H = 30           # LiteGraph draws the title bar above ``pos``
SLOT_H = 24
WIDGET_H = 30
MULTILINE_H = 130
IMAGE_H = 280          # LoadImage / SaveImage / PreviewImage show the picture inside the node
COL_GAP = 80
ROW_GAP = 50
WIDTH = 340
WIDE_TYPES = {"KSampler": 340, "KSamplerAdvanced": 360, "CLIPTextEncode": 400, "StageRegulatedTI": 400,
              "MarkdownNote": 460, "Note": 460}
IMAGE_TYPES = {"LoadImage", "SaveImage", "PreviewImage"}
NOTE_TYPE = "MarkdownNote"
VUE_GROWTH = 1.2       # Nodes 2.0 size of a node relative to its saved size (title included)
VUE_IMAGE_EXTRA = 120  # Load Image / previews grow further with the picture's aspect in Nodes 2.0


def _footprint_h(node):
    """Height a node takes in the page in either renderer (title bar included)."""
    extra = VUE_IMAGE_EXTRA if node["type"] in IMAGE_TYPES else 0
    return VUE_GROWTH * (TITLE_H + node["size"][1]) + extra


def _multiline_widgets(types):
    n = 0
    for group in ("required", "optional"):
        for spec in (types.get(group) or {}).values():
            opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
            if spec[0] == "STRING" and opts.get("multiline"):
                n += 1
    return n


def node_size(node, input_types=None):
    """[w, h] of the node body (below the title) with a margin over the frontend's minimum."""
    kind = node["type"]
    if kind in ("Note", NOTE_TYPE):
        text = (node.get("widgets_values") or [""])[0]
        lines = sum(max(1, len(line) // 55 + 1) for line in str(text).splitlines()) or 1
        return [WIDE_TYPES[kind], 40 + 20 * lines]
    types = {}
    if input_types is not None:
        try:
            types = input_types(kind) or {}
        except Exception:  # unknown node type: size from the serialised slots alone
            types = {}
    multi = _multiline_widgets(types)
    widgets = len(node.get("widgets_values") or [])
    slots = max(len(node.get("inputs") or []), len(node.get("outputs") or []))
    h = 20 + SLOT_H * slots + WIDGET_H * max(0, widgets - multi) + MULTILINE_H * multi
    if kind in IMAGE_TYPES:
        h += IMAGE_H
    return [WIDE_TYPES.get(kind, WIDTH), max(h, 80)]


def arrange(ui, input_types=None, note=None, origin=(0, 0)):
    """Lay ``ui`` (a UI workflow dict) out in place; add ``note`` (Markdown) as a note node. Returns ``ui``."""
    nodes = {n["id"]: n for n in ui["nodes"]}
    feeds = {nid: [] for nid in nodes}  # node -> source node ids
    for _lid, src, _slot, dst, _dslot, _type in ui.get("links", []):
        if src in nodes and dst in nodes:
            feeds[dst].append(src)
    depth = {}

    def depth_of(nid, seen=()):
        if nid not in depth:
            if nid in seen:
                raise ValueError(f"workflow has a cycle through node {nid}")
            depth[nid] = 1 + max((depth_of(s, seen + (nid,)) for s in feeds[nid]), default=-1)
        return depth[nid]

    for nid in nodes:
        depth_of(nid)
    # pull sources right next to their first consumer (a loader used only at depth 4 sits at depth 3)
    consumers = {nid: [] for nid in nodes}
    for dst, srcs in feeds.items():
        for s in srcs:
            consumers[s].append(dst)
    for nid in sorted(nodes, key=lambda i: -depth[i]):
        if not feeds[nid] and consumers[nid]:
            depth[nid] = max(depth[nid], min(depth[c] for c in consumers[nid]) - 1)
    columns = {}
    for nid in sorted(nodes, key=lambda i: nodes[i].get("order", i)):
        columns.setdefault(depth[nid], []).append(nid)
    row = {}
    for d in sorted(columns):
        col = columns[d]
        if d > 0:
            col.sort(key=lambda i: (sum(row[s] for s in feeds[i]) / len(feeds[i])) if feeds[i] else -1)
        for r, nid in enumerate(col):
            row[nid] = r + (0.5 * d if d else 0)  # tie-break stays stable
    x0, y0 = origin
    if note:
        note_node = {"id": max(nodes) + 1 if nodes else 1, "type": NOTE_TYPE, "pos": [0, 0], "size": [0, 0],
                     "flags": {}, "order": len(nodes), "mode": 0, "inputs": [], "outputs": [],
                     "properties": {}, "widgets_values": [note], "title": "Read me",
                     "color": "#432", "bgcolor": "#653"}
        note_node["size"] = node_size(note_node)
        note_node["pos"] = [x0, y0 + TITLE_H]
        ui["nodes"].append(note_node)
        ui["last_node_id"] = max(ui.get("last_node_id", 0), note_node["id"])
        y0 += _footprint_h(note_node) + ROW_GAP
    x = x0
    for d in sorted(columns):
        y = y0
        width = 0
        for nid in columns[d]:
            n = nodes[nid]
            n["size"] = node_size(n, input_types)
            n["pos"] = [x, y + TITLE_H]
            y += _footprint_h(n) + ROW_GAP
            width = max(width, VUE_GROWTH * n["size"][0])
        x += width + COL_GAP
    return ui


def overlaps(boxes):
    """Pairs of indices of intersecting boxes ``[x, y, w, h]`` (touching edges do not count)."""
    out = []
    for i, a in enumerate(boxes):
        for j in range(i + 1, len(boxes)):
            b = boxes[j]
            if a[0] < b[0] + b[2] and b[0] < a[0] + a[2] and a[1] < b[1] + b[3] and b[1] < a[1] + a[3]:
                out.append((i, j))
    return out
