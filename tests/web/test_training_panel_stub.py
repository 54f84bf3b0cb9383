"""The Training sidebar tab against a CONTRACT STUB of the engine (training_stub.FakeEngine, answered inside the
browser): rendering of every job state, live updates from websocket messages, the buttons' requests, the delete
confirmation, toasts, previews, "open in new graph" with the real loader nodes of the real server.
The same panel against the real engine: test_training_panel_engine.py."""
import pytest

from training_stub import FakeEngine, dispatch, make_job, output
from web_helpers import open_training_tab, pack_errors


@pytest.fixture
def panel(new_page):
    """(page, panel locator, fake engine, Page) with the default jobs, Training tab open."""
    p = new_page(viewport={"width": 1400, "height": 1700})  # tall: the whole panel fits in its screenshots
    engine = FakeEngine().install(p.page)
    page = p.open()
    return page, open_training_tab(page), engine, p


def rows(panel_loc):
    return panel_loc.locator(".fp-train-job")


def select(panel_loc, job_id):
    panel_loc.locator(f".fp-train-job[data-job-id='{job_id}']").click()
    panel_loc.page.wait_for_selector(f".fp-train-detail[data-job-id='{job_id}']")


def test_lists_every_job_with_method_name_base_status_and_progress(panel, shots):
    page, loc, engine, p = panel
    rows(loc).first.wait_for()
    assert rows(loc).count() == 5
    running = loc.locator(".fp-train-job[data-job-id='job-run']")
    text = running.inner_text()
    for part in ("alice", "Cross Initialization", "tiny_sd15-v1.safetensors", "running", "30 / 100", "ETA 0:56", "1.25 it/s"):
        assert part.lower() in text.lower(), (part, text)
    assert running.locator(".fp-train-progress").get_attribute("aria-valuenow") == "30"
    statuses = {r.get_attribute("data-job-id"): r.get_attribute("data-status") for r in rows(loc).all()}
    assert statuses == {"job-run": "running", "job-fail": "failed", "job-done": "done", "job-cancel": "cancelled",
                        "job-queue": "queued"}
    for job_id, label in (("job-fail", "PersonaMagic"), ("job-done", "PIDiff"), ("job-cancel", "W+ Adapter")):
        assert label in loc.locator(f".fp-train-job[data-job-id='{job_id}']").inner_text()
    select(loc, "job-run")
    page.wait_for_function("document.querySelector('.fp-train-loss-chart').dataset.points === '30'")
    page.wait_for_function("document.querySelectorAll('.fp-train-preview img').length === 3 && "
                           "[...document.querySelectorAll('.fp-train-preview img')].every(i => i.complete && i.naturalWidth > 0)")
    shots(loc, "training_panel_running")
    assert not pack_errors(p.console), pack_errors(p.console)


def test_progress_messages_grow_the_loss_plot_and_move_the_bar(panel, shots):
    page, loc, engine, p = panel
    select(loc, "job-run")
    page.wait_for_function("document.querySelector('.fp-train-loss-chart').dataset.points === '30'")
    for step in range(31, 46):  # messages in the contract's shape (a job summary)
        engine.progress(page, "job-run", step)
    page.wait_for_function("document.querySelector('.fp-train-loss-chart').dataset.points === '45'")
    assert loc.locator(".fp-train-job[data-job-id='job-run'] .fp-train-progress").get_attribute("aria-valuenow") == "45"
    assert "step 45 / 100" in loc.locator(".fp-train-detail").inner_text()
    # the identity-score curve and the previews follow the routes after a message (refetch of the detail)
    page.wait_for_function("document.querySelector('.fp-train-score-chart').dataset.points === '4'")
    page.wait_for_function("[...document.querySelectorAll('.fp-train-preview figcaption')].some(c => c.textContent === 'step 40')")
    # log scale redraws the same points
    loc.locator(".fp-train-log-scale").check()
    assert loc.locator(".fp-train-loss-chart").get_attribute("data-points") == "45"
    assert page.evaluate("document.querySelectorAll('.fp-train-loss-chart canvas').length") == 1
    shots(loc, "training_panel_log_scale")
    assert not pack_errors(p.console), pack_errors(p.console)


def test_failed_job_shows_its_error_text_and_log(panel, shots):
    page, loc, engine, p = panel
    select(loc, "job-fail")
    error = loc.locator(".fp-train-error")
    assert error.is_visible()
    assert "no face found in photo 'cat_01.png'" in error.inner_text()
    assert loc.locator(".fp-train-log-section").get_attribute("open") is not None
    assert "ERROR no face found" in loc.locator(".fp-train-log").inner_text()
    assert loc.locator(".fp-train-cancel").is_disabled() and loc.locator(".fp-train-resume").is_disabled()
    assert loc.locator(".fp-train-delete").is_enabled()
    shots(loc, "training_panel_failed")


def test_cancel_and_resume_call_the_routes_and_show_the_checkpoint(panel, shots):
    page, loc, engine, p = panel
    select(loc, "job-run")
    assert loc.locator(".fp-train-resume").is_disabled()
    loc.locator(".fp-train-cancel").click()
    page.wait_for_selector(".fp-train-job[data-job-id='job-run'][data-status='cancelled']")
    assert ("POST", "/jobs/job-run/cancel") in engine.calls
    assert "last.pt" in loc.locator(".fp-train-checkpoints").inner_text()
    shots(loc, "training_panel_cancelled")
    loc.locator(".fp-train-resume").click()
    page.wait_for_selector(".fp-train-job[data-job-id='job-run'][data-status='running']")
    assert ("POST", "/jobs/job-run/resume") in engine.calls


def test_delete_asks_first(panel):
    page, loc, engine, p = panel
    select(loc, "job-cancel")
    loc.locator(".fp-train-delete").click()
    dialog = page.get_by_role("dialog")
    dialog.wait_for()
    assert "dave" in dialog.inner_text()
    dialog.get_by_role("button", name="Cancel").click()
    dialog.wait_for(state="hidden")
    assert not [c for c in engine.calls if c[0] == "DELETE"]
    loc.locator(".fp-train-delete").click()
    page.get_by_role("dialog").get_by_role("button", name="Delete").click()
    page.wait_for_function("!document.querySelector(\".fp-train-job[data-job-id='job-cancel']\")")
    assert ("DELETE", "/jobs/job-cancel") in engine.calls
    assert rows(loc).count() == 4


def test_toasts_when_a_job_finishes_or_fails_but_not_for_old_news(panel):
    page, loc, engine, p = panel
    rows(loc).first.wait_for()
    assert page.locator(".p-toast-message").count() == 0  # done/failed jobs listed at load: no toast
    engine.status(page, "job-run", "done")
    toast = page.locator(".p-toast-message", has_text="Training finished")
    toast.wait_for()
    assert "alice" in toast.inner_text()
    engine.status(page, "job-queue", "failed", error="CUDA out of memory while training")
    failed = page.locator(".p-toast-message", has_text="Training failed")
    failed.wait_for()
    assert "CUDA out of memory" in failed.inner_text()


def test_preview_click_enlarges_it(panel, shots):
    page, loc, engine, p = panel
    select(loc, "job-run")
    loc.locator(".fp-train-preview").first.click()
    box = page.locator(".fp-train-lightbox img")
    box.wait_for()
    page.wait_for_function("document.querySelector('.fp-train-lightbox img').naturalWidth > 0")
    assert box.bounding_box()["width"] >= 256
    assert "step 30" in page.locator(".fp-train-lightbox-caption").inner_text()
    page.keyboard.press("Escape")
    box.wait_for(state="detached")


@pytest.mark.parametrize("method,folder,loader,widget,apply", [
    ("crossinit", "crossinit", "FP_LoadIdentityEmbedding", "embedding_file", None),
    ("personamagic", "personamagic", "FP_LoadPersonaMagic", "mapper_name", "StageRegulatedTI"),
    ("pidiff", "pidiff", "FP_LoadPIDiff", "pidiff_name", "FP_ApplyStyleCrossAttention"),
    ("wplus", "wplus", "FP_LoadWPlusAdapter", "adapter_name", "ApplyResidualCrossAttention"),
])
def test_open_in_new_graph_drops_loader_and_apply_with_the_file_selected(new_page, web_server, method, folder, loader,
                                                                         widget, apply):
    out = web_server.home / "models" / folder / f"stub_{method}_out.safetensors"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(b"")  # only listed by the dropdown, never loaded here
    job = make_job("job-x", method, "frank", "done", 20, 20, outputs=[output(folder, out.name, str(out)),
                   output(folder, f"{out.stem}.json", kind="metadata")], config={"params": {"trigger_word": "<frank>"}})
    p = new_page()
    FakeEngine([job]).install(p.page)
    page = p.open()
    loc = open_training_tab(page)
    select(loc, "job-x")
    tabs_before = page.evaluate("app.extensionManager.workflow.openWorkflows.length")
    loc.locator(".fp-train-open").click()
    page.wait_for_function(f"app.graph._nodes.some(n => n.type === '{loader}')")
    assert page.evaluate("app.extensionManager.workflow.openWorkflows.length") == tabs_before + 1
    nodes = page.evaluate("""() => app.graph._nodes.map(n => ({type: n.type,
        widgets: Object.fromEntries((n.widgets ?? []).map(w => [w.name, w.value])),
        linked: (n.inputs ?? []).filter(i => i.link != null).map(i => i.name)}))""")
    by_type = {n["type"]: n for n in nodes}
    expected = f"crossinit/{out.name}" if method == "crossinit" else out.name
    assert by_type[loader]["widgets"][widget] == expected
    assert by_type["CheckpointLoaderSimple"]["widgets"]["ckpt_name"] == web_server.tiny_sd15
    if apply:
        assert set(by_type[apply]["linked"]) >= {"model"}
        assert len(nodes) == 3
    else:
        assert by_type[loader]["linked"] == ["clip"] and by_type[loader]["widgets"]["trigger_word"] == "<frank>"
        assert len(nodes) == 2
    assert not pack_errors(p.console), pack_errors(p.console)


def test_without_the_engine_the_panel_says_so(new_page):
    p = new_page()
    FakeEngine(available=False).install(p.page)
    page = p.open()
    loc = open_training_tab(page)
    notice = loc.locator(".fp-train-notice")
    notice.wait_for()
    assert "training engine is not running" in notice.inner_text()
    assert not pack_errors(p.console), pack_errors(p.console)
