"""The web/ extension and the shipped workflows in the real ComfyUI frontend (the comfyui-frontend-package
ComfyUI 0.3.75 serves), driven by Playwright on Debian's chromium (``apt-get install chromium``;
.ci/test.sh installs it when it can)."""
import json
import os
import shutil
import sys
from pathlib import Path

import pytest

from harness import workflow as wf
from harness.server import ComfyServer

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
PACK_URL = "/extensions/comfyui_face_personalization/"
WORKFLOWS = sorted((Path(__file__).resolve().parents[2] / "workflows").glob("*.json"))


@pytest.fixture(scope="module")
def browser_page(tmp_path_factory, comfy):
    if not os.path.exists(CHROMIUM):
        pytest.skip("Debian chromium is not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    home = tmp_path_factory.mktemp("web_home")
    with ComfyServer(home, python=sys.executable) as srv, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page()
        console = []
        page.on("console", lambda m: console.append((m.type, m.text)))
        page.on("pageerror", lambda e: console.append(("pageerror", str(e))))
        page.goto(srv.url)
        page.wait_for_function("window.app && window.app.graph && window.LiteGraph && "
                               "app.extensions.length > 0", timeout=120_000)
        yield page, console, srv
        browser.close()


def test_extension_loads_without_errors(browser_page):
    page, console, _ = browser_page
    names = page.evaluate("app.extensions.map(e => e.name)")
    assert "face_personalization.node_appearance" in names
    ours = [m for m in console if m[0] in ("error", "pageerror") and "comfyui_face_personalization" in m[1]]
    assert not ours, ours


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
    ui = wf.load(path)
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
