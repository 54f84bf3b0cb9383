"""Browser fixtures for the web/ tests: one real ComfyUI server (``main.py --cpu``) with the pack, and one
Debian chromium driven by Playwright, shared by the tests of this folder. Each test gets its own page."""
import os
import shutil
import sys
from pathlib import Path

import pytest

from harness.server import ComfyServer

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
REPO = Path(__file__).resolve().parents[2]
SHOTS_DOC = REPO / "docs" / "images"


@pytest.fixture(scope="session")
def chromium(comfy):  # ComfyUI boots (asyncio.run) before Playwright owns the event loop
    if not os.path.exists(CHROMIUM):
        pytest.skip("Debian chromium is not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture(scope="session")
def web_home(tmp_path_factory):
    return tmp_path_factory.mktemp("web_home")


@pytest.fixture(scope="session")
def web_server(chromium, web_home):
    """The real ComfyUI server the pages talk to (started once; its home has every tiny model and the
    shared photos the shipped workflows use)."""
    from fixtures import tiny

    from harness.provision import provision

    provision(web_home)
    with ComfyServer(web_home, python=sys.executable) as srv:
        srv.tiny_sd15 = tiny.file_name("sd15")
        srv.post_json("/settings/Comfy.TutorialCompleted", True)  # no templates dialog over the page
        yield srv


class Page:
    """A Playwright page on the ComfyUI frontend, with its console messages collected."""

    def __init__(self, context, url):
        self.context = context
        self.url = url
        self.page = context.new_page()
        self.console = []
        self.page.on("console", lambda m: self.console.append((m.type, m.text)))
        self.page.on("pageerror", lambda e: self.console.append(("pageerror", str(e))))

    def open(self):
        self.page.goto(self.url)
        self.page.wait_for_function("window.app && window.app.graph && window.LiteGraph && app.extensions.length > 0 "
                                    "&& app.extensionManager", timeout=120_000)
        return self.page


@pytest.fixture
def new_page(chromium, web_server):
    """new_page(viewport=...) -> Page (not yet opened); all are closed after the test."""
    contexts = []

    def make(viewport=None):
        ctx = chromium.new_context(viewport=viewport or {"width": 1400, "height": 900})
        contexts.append(ctx)
        return Page(ctx, web_server.url)

    yield make
    for ctx in contexts:
        ctx.close()


@pytest.fixture(scope="session")
def shots(tmp_path_factory):
    """shots(locator, name): PNG screenshot into the test tmp folder, copied to docs/images/ (README)."""
    folder = tmp_path_factory.mktemp("screenshots")

    def take(locator, name):
        path = folder / f"{name}.png"
        locator.screenshot(path=str(path), animations="disabled")
        if os.environ.get("FP_WEB_SHOTS_TO_DOCS", "1") == "1":
            SHOTS_DOC.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, SHOTS_DOC / path.name)
        return path

    take.folder = folder
    return take
