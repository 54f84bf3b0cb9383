"""Every shipped workflow as a person sees it in the real ComfyUI page (frontend 1.32.9, headless chromium at
1600x1000), in both renderers: the classic LiteGraph canvas and "Nodes 2.0" (setting ``Comfy.VueNodes.Enabled``,
DOM nodes). Each workflow loads with no missing node types, no two node boxes overlap (boxes read from the page:
LiteGraph's node geometry in classic, the nodes' DOM rectangles in Nodes 2.0), every widget lies inside its own
node (so none is cut off or hidden under a neighbour), the workflow carries a note, and no node has a cryptic
custom title. A screenshot of each is kept (the test's tmp folder ``workflow_shots*``; two go to docs/images/workflows/ for the
README); the classic one becomes the workflow's template thumbnail
(``workflows/<name>.jpg``, the file ComfyUI's templates browser asks for at ``/api/workflow_templates/<pack>/``):
written when missing, or for all workflows with ``FP_WEB_THUMBNAILS=1``."""
import json
import os
import re
import shutil
from pathlib import Path

import pytest

from harness import layout
from harness import workflow as wf

REPO = Path(__file__).resolve().parents[2]
WORKFLOW_DIR = REPO / "workflows"
WORKFLOWS = sorted(WORKFLOW_DIR.glob("*.json"))
RENDERERS = {"classic": False, "nodes2": True}
VIEWPORT = {"width": 1600, "height": 1000}
THUMB_WIDTH = 800
NOTE_TYPES = ("MarkdownNote", "Note")
README_SHOTS = {"wplus_basic", "adaface_from_photo"}  # copied to docs/images/workflows/ for the README


@pytest.fixture(scope="module")
def page(chromium, web_server):
    ctx = chromium.new_context(viewport=VIEWPORT)
    p = ctx.new_page()
    p.goto(web_server.url)
    p.wait_for_function("window.app && window.app.graph && window.LiteGraph && app.extensions.length > 0 "
                        "&& app.extensionManager && app.extensionManager.setting", timeout=120_000)
    _setting(p, "LiteGraph.Canvas.MinFontSizeForLOD", 0)  # readable text in the fitted screenshots
    _setting(p, "Comfy.Minimap.Visible", False)  # the minimap would cover the graph's bottom right
    _setting(p, "Comfy.Workflow.ShowMissingNodesWarning", False)  # would cover the shots
    yield p
    _setting(p, "Comfy.VueNodes.Enabled", False)
    ctx.close()


@pytest.fixture(scope="module")
def shot_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("workflow_shots")


def _setting(page, key, value):
    page.evaluate("async ([k, v]) => { await app.extensionManager.setting.set(k, v); }", [key, value])
    page.wait_for_function("([k, v]) => app.extensionManager.setting.get(k) === v", arg=[key, value])


def _frames(page, wait_ms=300):
    page.evaluate("() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")
    page.evaluate("() => app.canvas.draw(true, true)")
    page.wait_for_timeout(wait_ms)  # DOM widgets and images settle (ResizeObserver, image load)


def _load(page, ui, name, vue):
    """Load ``ui`` and show it at zoom 1 in a viewport large enough for the whole graph (no level-of-detail
    simplification, nothing culled), so boxes and widgets are measured as a person sees them up close."""
    load = "async ([w, n]) => { await app.loadGraphData(w, true, true, n); }"
    if vue:
        # Nodes 2.0 as a person meets it who has the workflow open and switches Nodes 2.0 on: loaded in the
        # classic renderer first, then reloaded with Nodes 2.0 on. Frontend 1.32.9 rescales a graph's layout
        # on renderer changes and graph switches (ensureCorrectLayoutScale); loads after other Vue-rendered
        # graphs in the same page come out scaled by factors that depend on the history (0.2x to 2.5x here),
        # so without this the measurement would depend on the test order.
        _setting(page, "Comfy.VueNodes.Enabled", False)
        page.evaluate(load, [ui, name])
    _setting(page, "Comfy.VueNodes.Enabled", vue)
    page.evaluate(load, [ui, name])
    bounds = page.evaluate("""() => { const b = [Infinity, Infinity, -Infinity, -Infinity];
        for (const n of app.graph._nodes) { b[0] = Math.min(b[0], n.pos[0]); b[1] = Math.min(b[1], n.pos[1] - 40);
          b[2] = Math.max(b[2], n.pos[0] + n.size[0]); b[3] = Math.max(b[3], n.pos[1] + n.size[1]); } return b; }""")
    width = int(min(8000, (bounds[2] - bounds[0]) * 1.3 + 300))
    height = int(min(6000, (bounds[3] - bounds[1]) * 1.3 + 300))
    page.set_viewport_size({"width": max(width, VIEWPORT["width"]), "height": max(height, VIEWPORT["height"])})
    page.evaluate("""(b) => { app.canvas.ds.scale = 1; app.canvas.ds.offset = [100 - b[0], 100 - b[1]];
                              app.canvas.setDirty(true, true); }""", bounds)
    if vue:
        page.wait_for_function("(n) => document.querySelectorAll('.lg-node[data-node-id]').length >= n",
                               arg=len(ui["nodes"]), timeout=30_000)
    _frames(page, 500)


HIDE_BANNERS = """() => { for (const el of document.querySelectorAll('body *')) {
    const t = (el.innerText || '').trim();
    if ((t.startsWith('Introducing Nodes 2.0') || t.startsWith('Prefer the legacy design'))
        && el.getBoundingClientRect().height < 90) el.style.visibility = 'hidden'; } }"""


def _screenshot(page, path):
    """The whole graph fitted into the 1600x1000 page, text drawn at any zoom (level of detail off), without
    the frontend's "try Nodes 2.0" banners."""
    page.set_viewport_size(VIEWPORT)
    page.evaluate("() => app.extensionManager.command.execute('Comfy.Canvas.FitView')")
    page.evaluate("() => { app.canvas.min_font_size_for_lod = 0; app.canvas._isLowQuality = false; "
                  "app.canvas.setDirty(true, true); }")
    _frames(page, 500)
    page.evaluate(HIDE_BANNERS)
    page.screenshot(path=str(path), animations="disabled")


CLASSIC_GEOMETRY = """() => {
  const T = LiteGraph.NODE_TITLE_HEIGHT;
  return app.graph._nodes.map(n => {
    const widgets = (n.widgets || []).filter(w => !w.hidden && w.type !== 'hidden' && !(w.options && w.options.hidden))
      .map(w => {
        let h = LiteGraph.NODE_WIDGET_HEIGHT;
        try { if (w.computeSize) h = w.computeSize(n.size[0])[1]; } catch (e) {}
        if (w.computedHeight) h = w.computedHeight;
        const y = (w.last_y ?? w.y ?? 0);
        return {name: w.name, y, h};
      });
    let min = null;
    try { min = n.computeSize(); } catch (e) {}
    return {id: n.id, type: n.type, title: n.title, display: n.constructor.title ?? null,
            box: [n.pos[0], n.pos[1] - T, n.size[0], n.size[1] + T], size: [n.size[0], n.size[1]], min, widgets,
            text: n.widgets_values ? String(n.widgets_values[0] ?? '') : ''};
  });
}"""

VUE_GEOMETRY = """() => [...document.querySelectorAll('.lg-node[data-node-id]')].map(el => {
  const r = el.getBoundingClientRect();
  const widgets = [...el.querySelectorAll('.lg-node-widget')].map(w => { const q = w.getBoundingClientRect();
    return {name: w.textContent.trim().slice(0, 30), box: [q.x, q.y, q.width, q.height]}; })
    .filter(w => w.box[2] > 0 && w.box[3] > 0);
  return {id: el.getAttribute('data-node-id'), box: [r.x, r.y, r.width, r.height], widgets,
          shown: el.style.display !== 'none'};
})"""


def _named(geom, indices):
    return [(geom[i].get("type") or geom[i]["id"], geom[j].get("type") or geom[j]["id"]) for i, j in indices]


def _inside(inner, outer, tol=1.5):
    return (inner[0] >= outer[0] - tol and inner[1] >= outer[1] - tol
            and inner[0] + inner[2] <= outer[0] + outer[2] + tol and inner[1] + inner[3] <= outer[1] + outer[3] + tol)


def _cryptic(title, display):
    """A custom title that hides the display name behind an abbreviation (``ckpt``, ``la``, ``clipv_enc``)."""
    if not title or title == display:
        return False
    return len(title) < 4 or re.fullmatch(r"[a-z0-9_]+", title) is not None


def _save_thumbnail(png, name):
    from PIL import Image

    target = WORKFLOW_DIR / f"{name}.jpg"
    if target.exists() and os.environ.get("FP_WEB_THUMBNAILS") != "1":
        return
    with Image.open(png) as im:
        im = im.convert("RGB")
        im = im.resize((THUMB_WIDTH, round(im.height * THUMB_WIDTH / im.width)), Image.LANCZOS)
        im.save(target, "JPEG", quality=82, optimize=True)


@pytest.mark.parametrize("renderer", list(RENDERERS))
@pytest.mark.parametrize("path", WORKFLOWS, ids=[p.stem for p in WORKFLOWS])
def test_workflow_reads_well_in_the_page(page, shot_dir, path, renderer):
    vue = RENDERERS[renderer]
    ui = wf.load(path)
    _load(page, ui, path.name, vue)
    unknown = page.evaluate("app.graph._nodes.filter(n => !LiteGraph.registered_node_types[n.type]).map(n => n.type)")
    geom = page.evaluate(CLASSIC_GEOMETRY)
    dom = page.evaluate(VUE_GEOMETRY) if vue else []
    png = shot_dir / f"{path.stem}-{renderer}.png"
    (shot_dir / f"{path.stem}-{renderer}.json").write_text(json.dumps({"nodes": geom, "dom": dom}, indent=1))
    _screenshot(page, png)
    other_packs = set(unknown) & set(wf.SUBSTITUTABLE)  # e.g. AnimateDiff-Evolved's nodes, not installed here
    if not vue and not set(unknown) - other_packs:
        _save_thumbnail(png, path.stem)
    if path.stem in README_SHOTS and os.environ.get("FP_WEB_SHOTS_TO_DOCS", "1") == "1":
        dest = REPO / "docs" / "images" / "workflows"
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(png, dest / png.name)

    assert not set(unknown) - other_packs, f"{path.name}: node types the page does not know: {unknown}"
    note_text = " ".join(str(v) for n in ui["nodes"] if n["type"] in NOTE_TYPES for v in n.get("widgets_values", []))
    assert all(wf.SUBSTITUTABLE[t] in note_text for t in other_packs), f"{path.name}: its note must name {other_packs}'s pack"
    assert len(geom) == len(ui["nodes"])
    cryptic = [(g["type"], g["title"]) for g in geom if _cryptic(g["title"], g["display"])]
    assert not cryptic, f"{path.name}: cryptic custom titles (leave the display name): {cryptic}"
    notes = [g for g in geom if g["type"] in NOTE_TYPES and len(g["text"].strip()) >= 80]
    assert notes, f"{path.name}: no note saying what the workflow does and what to set"
    if not vue:
        hits = layout.overlaps([g["box"] for g in geom])
        assert not hits, f"{path.name} (classic): overlapping nodes {_named(geom, hits)}"
        for g in geom:
            if g["min"] is not None:
                assert g["min"][1] <= g["size"][1] + 1, (
                    f"{path.name} (classic): {g['type']} is {g['size'][1]:.0f} px tall but needs {g['min'][1]:.0f}: "
                    "its last widgets are cut off")
            for w in g["widgets"]:
                assert w["y"] + w["h"] <= g["size"][1] + 1, (
                    f"{path.name} (classic): widget {w['name']!r} of {g['type']} ends below the node "
                    f"({w['y'] + w['h']:.0f} > {g['size'][1]:.0f})")
    else:
        assert len(dom) == len(ui["nodes"]) and all(d["shown"] for d in dom), (
            f"{path.name} (Nodes 2.0): {len(dom)} node elements shown for {len(ui['nodes'])} nodes")
        types = {str(g["id"]): g["type"] for g in geom}
        for d in dom:
            d["type"] = types.get(d["id"], d["id"])
        hits = layout.overlaps([d["box"] for d in dom])
        assert not hits, f"{path.name} (Nodes 2.0): overlapping nodes {_named(dom, hits)}"
        for d in dom:
            for w in d["widgets"]:
                assert _inside(w["box"], d["box"]), (
                    f"{path.name} (Nodes 2.0): widget {w['name']!r} of {d['type']} sticks out of its node")
                others = [o["type"] for o in dom if o is not d and layout.overlaps([w["box"], o["box"]])]
                assert not others, f"{path.name} (Nodes 2.0): widget {w['name']!r} of {d['type']} is under {others}"


def test_every_workflow_has_a_thumbnail_the_templates_browser_serves(web_server):
    """The templates browser shows ``/api/workflow_templates/<pack>/<name>.jpg`` for a custom pack's workflow."""
    listed = web_server.get_json("/workflow_templates")
    pack = next(k for k, names in listed.items() if "wplus_basic" in names)
    for path in WORKFLOWS:
        if not (WORKFLOW_DIR / f"{path.stem}.jpg").exists():
            pytest.skip("thumbnails are written by test_workflow_reads_well_in_the_page (run it first)")
        data = web_server.get_bytes(f"/api/workflow_templates/{pack}/{path.stem}.jpg")
        assert data[:3] == b"\xff\xd8\xff", f"{path.stem}.jpg is not a JPEG"


TEMPLATE_ORDER_JS = REPO / "web" / "js" / "template_order.js"


def _template_order():
    """ORDER of web/js/template_order.js: how the pack's workflows are listed in the templates browser."""
    body = TEMPLATE_ORDER_JS.read_text(encoding="utf-8")
    block = re.search(r"export const ORDER = \[(.*?)\];", body, re.S).group(1)
    return re.findall(r'"([^"]+)"', block)


def test_template_order_lists_every_shipped_workflow_once():
    """ComfyUI 0.3.75 lists a pack's workflows in file-system order and frontend 1.32.9 keeps that order (it
    reads no index.json or workflow field for custom packs): web/js/template_order.js sorts them by ORDER."""
    order = _template_order()
    assert order[0] == "wplus_quickstart", order[:3]  # the simplest photo-in example first
    assert len(order) == len(set(order)), [n for n in order if order.count(n) > 1]
    shipped = {p.stem for p in WORKFLOWS}
    assert shipped - set(order) == set(), f"add these to ORDER in {TEMPLATE_ORDER_JS.name}: {shipped - set(order)}"
    assert set(order) - shipped == set(), f"ORDER names workflows that are not shipped: {set(order) - shipped}"


def test_templates_browser_lists_the_pack_simplest_first(chromium, web_server, tmp_path):
    """The real templates browser (Workflow > Browse Templates), on the pack's own section: its workflows in
    ORDER (wplus_quickstart first), each card titled by its file name (what 1.32.9 shows for a custom pack)
    with its thumbnail loaded. The screenshot goes to docs/images/templates_browser.png."""
    ctx = chromium.new_context(viewport=VIEWPORT)
    page = ctx.new_page()
    try:
        page.goto(web_server.url)
        page.wait_for_function("window.app && app.extensions.length > 0 && app.extensionManager "
                               "&& app.extensionManager.command", timeout=120_000)
        listed = web_server.get_json("/workflow_templates")
        pack = next(k for k, names in listed.items() if "wplus_basic" in names)
        page.evaluate("() => app.extensionManager.command.execute('Comfy.BrowseTemplates')")
        page.wait_for_selector('[data-testid^="template-workflow-"]', timeout=60_000)
        entry = page.get_by_text(pack, exact=True)
        if not entry.count() or not entry.first.is_visible():
            page.get_by_text("Extensions", exact=True).first.click()
        page.get_by_text(pack, exact=True).first.click()
        order = _template_order()
        page.wait_for_function(
            "(n) => { const c = [...document.querySelectorAll('[data-testid^=\"template-workflow-\"]')];"
            " return c.length > 0 && c[0].getAttribute('data-testid') === 'template-workflow-' + n; }",
            arg=order[0], timeout=30_000)
        page.wait_for_timeout(1500)  # thumbnails load
        cards = page.evaluate("""() => [...document.querySelectorAll('[data-testid^="template-workflow-"]')].map(el => {
            const img = el.querySelector('img');
            return {name: el.getAttribute('data-testid').slice('template-workflow-'.length),
                    text: el.innerText.trim(), img: img ? [img.naturalWidth, img.getAttribute('src')] : null}; })""")
        shot = tmp_path / "templates_browser.png"
        page.screenshot(path=str(shot), animations="disabled")
        if os.environ.get("FP_WEB_SHOTS_TO_DOCS", "1") == "1":
            (REPO / "docs" / "images").mkdir(parents=True, exist_ok=True)
            shutil.copyfile(shot, REPO / "docs" / "images" / shot.name)
        names = [c["name"] for c in cards]
        assert names == [n for n in order if n in names], names
        assert len(names) >= min(len(order), 6), names  # the section shows the pack's workflows
        for c in cards:
            assert c["text"].splitlines()[0].strip() == c["name"], c  # 1.32.9: a custom template's title is its name
        shown = [c for c in cards if c["img"]]
        assert shown and all(c["img"][0] > 0 for c in shown), [c for c in shown if c["img"][0] == 0]
    finally:
        ctx.close()
