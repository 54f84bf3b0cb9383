"""The web/ extension and the shipped workflows in the real ComfyUI frontend (the comfyui-frontend-package
ComfyUI 0.3.75 serves), driven by Playwright on Debian's chromium (``apt-get install chromium``;
.ci/test.sh installs it when it can)."""
import json
from pathlib import Path

import pytest

from harness import workflow as wf

from web_helpers import pack_errors

WORKFLOWS = sorted((Path(__file__).resolve().parents[2] / "workflows").glob("*.json"))


@pytest.fixture(scope="module")
def browser_page(chromium, web_server):
    ctx = chromium.new_context()
    page = ctx.new_page()
    console = []
    page.on("console", lambda m: console.append((m.type, m.text)))
    page.on("pageerror", lambda e: console.append(("pageerror", str(e))))
    page.goto(web_server.url)
    page.wait_for_function("window.app && window.app.graph && window.LiteGraph && "
                           "app.extensions.length > 0", timeout=120_000)
    yield page, console, web_server
    ctx.close()


def test_extension_loads_without_errors(browser_page):
    page, console, _ = browser_page
    names = page.evaluate("app.extensions.map(e => e.name)")
    for name in ("face_personalization.node_appearance", "face_personalization.training_panel",
                 "face_personalization.training_toasts", "face_personalization.training_node_progress",
                 "face_personalization.text_results"):
        assert name in names
    assert not pack_errors(console), pack_errors(console)


def test_pack_nodes_get_the_pack_colour_and_core_nodes_do_not(browser_page):
    page, _, _ = browser_page
    colours = page.evaluate("""() => ['StageRegulatedTI', 'ApplyResidualCrossAttention', 'KSampler'].map(t => {
        const n = LiteGraph.createNode(t); return [n.color ?? null, n.bgcolor ?? null]; })""")
    assert colours[0] == colours[1] == ["#2a3b4d", "#33506b"]
    assert colours[2] == [None, None]


@pytest.mark.parametrize("path", WORKFLOWS, ids=[p.stem for p in WORKFLOWS])
def test_workflow_loads_in_frontend_and_matches_our_conversion(browser_page, path):
    """The frontend knows every node type of the workflow, and its own graphToPrompt() gives the API prompt the
    tests execute (harness.workflow.ui_to_api): the UI files are what ComfyUI users get."""
    page, _, srv = browser_page
    ui, _left_out = wf.without_missing_packs(wf.load(path), srv.object_info)  # e.g. AnimateDiff-Evolved not installed
    page.evaluate("async (w) => { await app.loadGraphData(w); }", ui)
    unknown = page.evaluate("app.graph._nodes.filter(n => !LiteGraph.registered_node_types[n.type]).map(n => n.type)")
    assert not unknown, unknown
    frontend = page.evaluate("async () => (await app.graphToPrompt()).output")
    ours = wf.ui_to_api(ui, srv.input_types)
    assert set(frontend) == set(ours)
    for nid, node in ours.items():
        got = frontend[nid]
        assert got["class_type"] == node["class_type"], nid
        assert json.loads(json.dumps(got["inputs"])) == json.loads(json.dumps(node["inputs"])), (nid, node["class_type"])


def test_text_result_is_shown_on_the_node(browser_page):
    """Diagnostics run from the page: its report appears on the node (web/js/text_results.js), read-only, and is
    not saved into the workflow as a widget value."""
    page, console, _ = browser_page
    page.evaluate("""async () => {
        app.graph.clear();
        const n = LiteGraph.createNode('FP_Diagnostics'); n.pos = [100, 100]; app.graph.add(n);
        await app.queuePrompt(0, 1);
    }""")
    page.wait_for_function("""() => { const n = app.graph._nodes.find(n => n.type === 'FP_Diagnostics');
        const w = n?.widgets?.find(w => w.name === 'fp_result'); return !!(w && String(w.value).includes('onnxruntime')); }""",
                           timeout=120_000)
    saved = page.evaluate("""() => { const n = app.graph._nodes.find(n => n.type === 'FP_Diagnostics');
        const w = n.widgets.find(w => w.name === 'fp_result');
        return {readOnly: w.inputEl ? w.inputEl.readOnly : null, values: n.serialize().widgets_values ?? []}; }""")
    assert saved["readOnly"] is True
    assert not any("onnxruntime" in str(v) for v in saved["values"])
    assert not pack_errors(console), pack_errors(console)
