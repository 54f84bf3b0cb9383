"""Convert between ComfyUI's UI workflow format (what users load: nodes + links + widgets_values)
and the API prompt format (what /prompt executes).

``input_types(class_type)`` returns the node class's INPUT_TYPES() dict (in-process: from
NODE_CLASS_MAPPINGS; against a server: from /object_info). Both directions follow the frontend's
rules: widget inputs fill ``widgets_values`` in declaration order, a seed-like INT gets an extra
"control_after_generate" entry, linked inputs appear in ``inputs`` with a link id.
"""
import json

WIDGET_PRIMITIVES = {"INT", "FLOAT", "STRING", "BOOLEAN"}
SKIP_NODE_TYPES = {"Note", "MarkdownNote"}


def _is_widget(spec):
    kind = spec[0]
    return isinstance(kind, list) or kind in WIDGET_PRIMITIVES or kind == "COMBO"


def _has_control_widget(name, spec):
    opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    if "control_after_generate" in opts:
        return bool(opts["control_after_generate"])
    return spec[0] == "INT" and name in ("seed", "noise_seed")


def _ordered_inputs(types):
    for group in ("required", "optional"):
        for name, spec in (types.get(group) or {}).items():
            yield name, spec


def api_to_ui(prompt, input_types, title=None, output_types=None, note=None):
    """API prompt -> UI workflow, laid out left to right by data flow (:mod:`harness.layout`), with
    ``note`` (Markdown) as a note at the top left. ``output_types(class_type)`` (e.g. the node class's
    RETURN_TYPES) gives typed output slots; without it links are typed by the input. A node keeps its
    display name as title unless the prompt gives one in ``_meta.title`` (prompt keys are not titles)."""
    ids = {key: i + 1 for i, key in enumerate(prompt)}
    nodes, links = [], []
    out_links = {}  # (node_id, slot) -> [link ids]
    link_id = 0
    for key, node in prompt.items():
        nid = ids[key]
        types = input_types(node["class_type"])
        ui_inputs, widgets = [], []
        for name, spec in _ordered_inputs(types):
            value = node["inputs"].get(name)
            linked = isinstance(value, list) and len(value) == 2 and isinstance(value[0], str) and value[0] in prompt
            if _is_widget(spec):
                if linked:
                    raise ValueError(f"{key}.{name}: widget inputs driven by links are not supported here")
                if value is None:
                    opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
                    value = opts.get("default", spec[0][0] if isinstance(spec[0], list) and spec[0] else None)
                widgets.append(value)
                if _has_control_widget(name, spec):
                    widgets.append("fixed")
            elif linked:
                link_id += 1
                src, slot = ids[value[0]], value[1]
                link_type = spec[0]
                if output_types is not None:
                    link_type = output_types(prompt[value[0]]["class_type"])[slot]
                links.append([link_id, src, slot, nid, len(ui_inputs), link_type])
                out_links.setdefault((src, slot), []).append(link_id)
                ui_inputs.append({"name": name, "type": spec[0], "link": link_id})
            elif name in (types.get("required") or {}):
                raise ValueError(f"{key}: required input {name!r} is not connected")
        ui_node = {"id": nid, "type": node["class_type"], "pos": [0, 0], "size": [280, 120], "flags": {},
                   "order": nid - 1, "mode": 0, "inputs": ui_inputs, "outputs": [],
                   "properties": {"Node name for S&R": node["class_type"]}, "widgets_values": widgets}
        if node.get("_meta", {}).get("title"):
            ui_node["title"] = node["_meta"]["title"]
        nodes.append(ui_node)
    for n in nodes:
        if output_types is not None:
            kinds = list(output_types(n["type"]))
        else:
            used = [s for (src, s) in out_links if src == n["id"]]
            kinds = ["*"] * (max(used) + 1 if used else 0)
        n["outputs"] = [{"name": str(kind), "type": kind, "slot_index": s, "links": out_links.get((n["id"], s), [])}
                        for s, kind in enumerate(kinds)]
    from harness import layout

    ui = {"last_node_id": len(nodes), "last_link_id": link_id, "nodes": nodes, "links": links,
          "groups": [], "config": {}, "extra": {"title": title or ""}, "version": 0.4}
    return layout.arrange(ui, input_types, note=note)


def _types_match(a, b):
    """The frontend's slot-type compatibility: '*' matches anything, unions are comma-separated."""
    if a in ("*", "", None) or b in ("*", "", None):
        return True
    return bool(set(str(a).split(",")) & set(str(b).split(",")))


def ui_to_api(workflow, input_types):
    """UI workflow -> API prompt. Muted (mode 2) and bypassed (mode 4) nodes are left out; Reroute
    nodes are followed through; a consumer of a bypassed node's output is fed from one of that node's
    inputs, by the frontend's rule (``ExecutableNodeDTO.resolveOutput`` in frontend 1.32): the input at the
    same slot index if its type matches both the output's and the wanted type, else the first input of
    exactly the wanted type, else the first compatible one (resolved again, through further bypassed
    nodes); with none, the consumer's input stays unset."""
    nodes = {n["id"]: n for n in workflow["nodes"]}
    links = {lk[0]: lk for lk in workflow["links"]}

    def bypass_input(node, slot, wanted):
        ins = [i for i in node.get("inputs", []) if i.get("link") is not None]
        outs = node.get("outputs") or []
        out_type = outs[slot]["type"] if slot < len(outs) else wanted
        all_ins = node.get("inputs", [])
        if slot < len(all_ins) and all_ins[slot].get("link") is not None:
            same = all_ins[slot]
            if _types_match(same.get("type"), out_type) and _types_match(same.get("type"), wanted):
                return same["link"]
        for i in ins:
            if i.get("type") == wanted:
                return i["link"]
        for i in ins:
            if _types_match(i.get("type"), wanted):
                return i["link"]
        return None

    def source(link_id, wanted=None):
        seen = set()
        while True:
            _, src, slot, _, _, ltype = links[link_id]
            wanted = wanted or ltype
            node = nodes[src]
            if node["type"] == "Reroute":
                link_id = node["inputs"][0]["link"]
            elif node.get("mode", 0) == 4:
                link_id = bypass_input(node, slot, wanted)
                if link_id is None:
                    return None
            else:
                return [str(src), slot]
            if link_id in seen:
                raise ValueError("workflow links form a cycle through bypassed/reroute nodes")
            seen.add(link_id)

    prompt = {}
    for nid, node in nodes.items():
        if node["type"] in SKIP_NODE_TYPES or node["type"] == "Reroute" or node.get("mode", 0) in (2, 4):
            continue
        types = input_types(node["type"])
        values = list(node.get("widgets_values") or [])
        linked = {i["name"]: i["link"] for i in node.get("inputs", []) if i.get("link") is not None}
        inputs = {}
        for name, spec in _ordered_inputs(types):
            if _is_widget(spec):
                value = values.pop(0) if values else None
                if _has_control_widget(name, spec) and values and values[0] in ("fixed", "increment", "decrement", "randomize"):
                    values.pop(0)
                if name in linked and source(linked[name], spec[0] if isinstance(spec[0], str) else None):
                    inputs[name] = source(linked[name], spec[0] if isinstance(spec[0], str) else None)
                elif value is not None:
                    inputs[name] = value
            elif name in linked:
                src = source(linked[name], spec[0])
                if src is not None:
                    inputs[name] = src
        prompt[str(nid)] = {"class_type": node["type"], "inputs": inputs, "_meta": {"title": node.get("title", node["type"])}}
    return prompt


def load(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def save(workflow, path):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(workflow, f, indent=1)
        f.write("\n")


def write_builders(builders, host=None, out_dir=None, notes=None):
    """Write each ``name -> build()`` API prompt as UI JSON ``<out_dir>/<name>.json`` (default: the repo's
    workflows/), with ``notes[name]`` (Markdown: what it does, which files go where, what to change) as
    its note (default: :mod:`harness.workflow_notes`). ``host``: a booted ComfyHost (one is booted in a temporary home if None)."""
    from pathlib import Path

    from harness import comfy_host

    if host is None:
        import tempfile

        host = comfy_host.boot(Path(tempfile.mkdtemp(prefix="fp_wf_")))
    from harness.workflow_notes import NOTES

    notes = {**NOTES, **(notes or {})}
    out_dir = Path(out_dir) if out_dir else comfy_host.REPO / "workflows"
    out_dir.mkdir(exist_ok=True)
    written = []
    for name, build in builders.items():
        ui = api_to_ui(build(), host.input_types, title=name,
                       output_types=lambda c: host.node_classes[c].RETURN_TYPES, note=(notes or {}).get(name))
        save(ui, out_dir / f"{name}.json")
        written.append(out_dir / f"{name}.json")
        print("wrote", written[-1])
    return written


TRAINING_SHRINK = dict(preset="custom", steps=1, resolution=64, batch_size=1, grad_accum=1,
                       gradient_checkpointing=False, preview_every=0)


def shrink_training(prompt):
    """Training nodes ship real presets (hundreds of 512 px steps); on tiny models one 64 px step shows the graph
    works. Sets the widgets of TRAINING_SHRINK a training node has; returns the ids of the nodes changed."""
    changed = []
    for key, node in prompt.items():
        if node["class_type"].startswith("FP_Train") and ("preset" in node["inputs"] or "steps" in node["inputs"]):
            node["inputs"].update({k: v for k, v in TRAINING_SHRINK.items() if k in node["inputs"]})
            changed.append(key)
    return changed


# Nodes of other packs that shipped workflows use and the tests may leave out when that pack is not installed:
# type -> the pack. Leaving one out hands its MODEL input straight to its MODEL consumers (the multi-frame
# batch then runs without the motion module).
SUBSTITUTABLE = {
    "ADE_AnimateDiffLoaderGen1": "ComfyUI-AnimateDiff-Evolved",
    "ADE_StandardUniformContextOptions": "ComfyUI-AnimateDiff-Evolved",
}


def without_missing_packs(workflow, known_types):
    """(copy of ``workflow`` without the SUBSTITUTABLE nodes whose type is not in ``known_types``, [(node id,
    type, pack)] left out). A left-out node's output is rewired to the source of its input of the same type
    (MODEL in -> MODEL out); outputs with no such input only fed other left-out nodes or are dropped."""
    import copy

    ui = copy.deepcopy(workflow)
    gone = {n["id"]: n for n in ui["nodes"] if n["type"] not in known_types and n["type"] in SUBSTITUTABLE}
    if not gone:
        return ui, []
    links = {lk[0]: lk for lk in ui["links"]}

    def upstream(node_id, slot):
        node = gone[node_id]
        kind = (node.get("outputs") or [])[slot]["type"]
        for inp in node.get("inputs", []):
            if inp.get("type") == kind and inp.get("link") is not None:
                src = links[inp["link"]]
                return upstream(src[1], src[2]) if src[1] in gone else (src[1], src[2])
        return None

    kept_links = []
    for lk in ui["links"]:
        lid, src, slot, dst, _dslot, _kind = lk[:6]
        if dst in gone:
            continue
        if src in gone:
            new = upstream(src, slot)
            if new is None:
                continue
            lk[1], lk[2] = new
        kept_links.append(lk)
    ui["links"] = kept_links
    ui["nodes"] = [n for n in ui["nodes"] if n["id"] not in gone]
    live = {lk[0] for lk in kept_links}
    for n in ui["nodes"]:
        for inp in n.get("inputs", []):
            if inp.get("link") is not None and inp["link"] not in live:
                inp["link"] = None
        for s, out in enumerate(n.get("outputs") or []):
            out["links"] = [lk[0] for lk in kept_links if lk[1] == n["id"] and lk[2] == s]
    return ui, [(nid, n["type"], SUBSTITUTABLE[n["type"]]) for nid, n in gone.items()]
