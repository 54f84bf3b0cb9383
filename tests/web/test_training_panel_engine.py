"""The Training tab against the REAL training engine (routes, nodes and worker subprocess) on the real server:
a tiny-model Cross Initialization job queued from the UI (workflows/train_crossinit_fast.json with a small custom
job), watched live, cancelled, the page reloaded, resumed to the end, its output selected in the loader; a job
refused at submit (a photo with no face, if_no_face = error) shows its error text. The panel's own behaviour in
every state is covered against the contract stub in test_training_panel_stub.py."""
import json
from pathlib import Path

import pytest

from web_helpers import open_training_tab, pack_errors

REPO = Path(__file__).resolve().parents[2]
WORKFLOW = REPO / "workflows" / "train_crossinit_fast.json"
TRAIN_NODE = "FP_TrainCrossInit"
# A small custom job: the workflow's "fast" preset forces 25 steps of 8 images at 512 px (4 micro-batches through
# the full-size CLIP and VAE per step), far too slow for a browser test on a shared CPU; preset "custom" makes the
# steps widget count. 400 steps: the cancel always lands mid-run.
SMALL_JOB = [[["preset"], "custom"], [["steps"], 400], [["resolution"], 64], [["batch_size"], 1], [["grad_accum"], 1],
             [["checkpoint_every"], 2], [["gradient_checkpointing"], False]]
LONG = 240_000  # ms: a CPU shared with other jobs; no wall-clock assert, only an upper bound on waiting


@pytest.fixture(scope="module")
def engine(web_server):
    if TRAIN_NODE not in web_server.object_info or not WORKFLOW.exists():
        pytest.skip("the real training engine (train-engine branch: FP_TrainCrossInit, workflows/train_crossinit_fast.json) "
                    "is not in this checkout; the panel is tested against the contract stub")
    return web_server


def load_and_queue(page, ui, widget_values=None):
    """Load a UI workflow, set widgets of the training node, queue it the way the Run button does."""
    page.evaluate("async (w) => { await app.loadGraphData(w); }", ui)
    page.evaluate("""(values) => {
        const node = app.graph._nodes.find(n => n.type === 'FP_TrainCrossInit');
        for (const [names, value] of values) {
            const w = node.widgets.find(w => names.includes(w.name));
            if (w) w.value = typeof value === 'function' ? value(w.value) : value;
        }
    }""", widget_values or [])
    page.evaluate("app.extensionManager.command.execute('Comfy.QueuePrompt')")


def newest_job_id(page, known=()):
    page.wait_for_function("(known) => [...document.querySelectorAll('.fp-train-job')].some(r => !known.includes(r.dataset.jobId))",
                           arg=list(known), timeout=LONG)
    return page.evaluate("(known) => [...document.querySelectorAll('.fp-train-job')].map(r => r.dataset.jobId)"
                         ".find(id => !known.includes(id))", list(known))


def wait_status(page, job_id, statuses):
    page.wait_for_function("([id, ss]) => ss.includes(document.querySelector(`.fp-train-job[data-job-id='${id}']`)?.dataset.status)",
                           arg=[job_id, list(statuses)], timeout=LONG)


def select(loc, job_id):
    loc.locator(f".fp-train-job[data-job-id='{job_id}']").click()
    loc.page.wait_for_selector(f".fp-train-detail[data-job-id='{job_id}']")


def close_error_dialog(page):
    """Close ComfyUI's execution-error dialog when it shows (it would cover the sidebar)."""
    mask = page.locator(".p-dialog-mask")
    try:
        mask.first.wait_for(timeout=15_000)
    except Exception:
        return
    for _ in range(3):
        page.keyboard.press("Escape")
        try:
            mask.first.wait_for(state="detached", timeout=5_000)
            return
        except Exception:
            close = page.locator(".p-dialog-close-button, .p-dialog-header-close")
            if close.count():
                close.first.click()


def script_errors(console):
    """Errors of the pack's scripts (their URLs, their '[face_personalization]' logs) or failed /fp/training
    requests; a server traceback that a failed prompt shows (it names the pack's Python files) is not one."""
    return [m for m in pack_errors(console)
            if "/extensions/comfyui_face_personalization" in m[1] or "[face_personalization]" in m[1]
            or "/fp/training" in m[1]]


def loss_points(page):
    return int(page.evaluate("document.querySelector('.fp-train-loss-chart')?.dataset.points ?? '0'"))


def test_train_watch_cancel_reload_resume_and_load_the_output(engine, new_page, shots):
    p = new_page(viewport={"width": 1400, "height": 1700})
    page = p.open()
    loc = open_training_tab(page)
    known = page.evaluate("[...document.querySelectorAll('.fp-train-job')].map(r => r.dataset.jobId)")
    ui = json.loads(WORKFLOW.read_text())
    load_and_queue(page, ui, SMALL_JOB)
    job_id = newest_job_id(page, known)
    select(loc, job_id)
    wait_status(page, job_id, ["running"])
    page.wait_for_function("Number(document.querySelector('.fp-train-loss-chart')?.dataset.points ?? 0) >= 2", timeout=LONG)
    first = loss_points(page)
    page.wait_for_function(f"Number(document.querySelector('.fp-train-loss-chart')?.dataset.points ?? 0) > {first}", timeout=LONG)
    # the training node on the canvas shows the job too
    page.evaluate("app.canvas.draw(true, true)")
    label = page.evaluate("app.graph._nodes.find(n => n.type === 'FP_TrainCrossInit')?.fp_training_label")
    assert label and label.startswith(("training", "running", "queued")), label
    shots(loc, "training_panel_engine_running")

    loc.locator(".fp-train-cancel").click()
    wait_status(page, job_id, ["cancelled", "resumable"])
    checkpoints = loc.locator(".fp-train-checkpoints").inner_text()
    assert checkpoints != "none", checkpoints
    stopped_at = engine.get_json(f"/fp/training/jobs/{job_id}")["step"]
    assert 1 <= stopped_at < 400
    assert loc.locator(".fp-train-detail .fp-train-progress").get_attribute("aria-valuenow") == str(stopped_at)

    page.reload()
    page.wait_for_function("window.app && app.extensionManager && app.graph", timeout=120_000)
    loc = open_training_tab(page)
    select(loc, job_id)
    assert loc.locator(f".fp-train-job[data-job-id='{job_id}']").get_attribute("data-status") in ("cancelled", "resumable")
    assert loc.locator(".fp-train-checkpoints").inner_text() == checkpoints
    assert loss_points(page) == stopped_at  # the history came back from the routes
    shots(loc, "training_panel_engine_cancelled")

    # a quick finish after the resume: the job's own config is shortened to 3 steps past its checkpoint (the
    # steps before it were trained; resume continues from last.pt, as after any cancel)
    job_dir = engine.get_json(f"/fp/training/jobs/{job_id}")["job_dir"]
    cfg_path = Path(job_dir) / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["steps"] = stopped_at + 3
    cfg_path.write_text(json.dumps(cfg, indent=1))
    loc.locator(".fp-train-resume").click()
    wait_status(page, job_id, ["queued", "running", "done"])
    wait_status(page, job_id, ["done"])
    page.locator(".p-toast-message", has_text="Training finished").wait_for(timeout=60_000)
    outputs = loc.locator(".fp-train-outputs").inner_text()
    assert outputs not in ("", "none yet"), outputs
    history = engine.get_json(f"/fp/training/jobs/{job_id}")["loss_history"]
    assert [r["step"] for r in history] == list(range(1, stopped_at + 4))  # resumed at the checkpoint, no gap
    assert loss_points(page) == stopped_at + 3
    shots(loc, "training_panel_engine_done")

    loc.locator(".fp-train-open").click()
    page.wait_for_function("app.graph._nodes.some(n => n.type === 'FP_LoadIdentityEmbedding')", timeout=60_000)
    chosen = page.evaluate("""() => { const n = app.graph._nodes.find(n => n.type === 'FP_LoadIdentityEmbedding');
        const w = n.widgets.find(w => w.name === 'embedding_file'); return [w.value, w.options.values]; }""")
    assert chosen[0] in chosen[1], chosen  # the trained file is in the loader's dropdown and selected
    assert chosen[0] in outputs.split(", "), (chosen, outputs)
    assert not script_errors(p.console), script_errors(p.console)


def test_a_failing_job_shows_its_error_text(engine, web_home, new_page, shots):
    from PIL import Image

    Image.new("RGB", (256, 256), (128, 128, 128)).save(web_home / "input" / "no_face_gray.png")
    p = new_page(viewport={"width": 1400, "height": 1700})
    page = p.open()
    loc = open_training_tab(page)
    known = page.evaluate("[...document.querySelectorAll('.fp-train-job')].map(r => r.dataset.jobId)")
    ui = json.loads(WORKFLOW.read_text())
    for node in ui["nodes"]:
        if node["type"] == "LoadImage":
            node["widgets_values"][0] = "no_face_gray.png"
    load_and_queue(page, ui, [[["if_no_face"], "error"], [["name"], "no_face_job"]])
    job_id = newest_job_id(page, known)
    close_error_dialog(page)  # the prompt fails too (ComfyUI's own error dialog)
    select(loc, job_id)
    wait_status(page, job_id, ["failed"])
    error = loc.locator(".fp-train-error")
    error.wait_for()
    text = error.inner_text()
    assert "no face found in" in text and "if_no_face" in text, text
    assert loc.locator(".fp-train-resume").is_disabled() and loc.locator(".fp-train-delete").is_enabled()
    assert loc.locator(".fp-train-log-section").get_attribute("open") is not None
    page.locator(".p-toast-message", has_text="Training failed").wait_for(timeout=60_000)
    shots(loc, "training_panel_engine_failed")
    assert not script_errors(p.console), script_errors(p.console)


@pytest.fixture(autouse=True)
def _job_logs_on_failure(web_home):
    """Printed after each test (pytest shows it only when the test fails): every job's status and log tail."""
    yield
    for status in sorted((web_home / "user").glob("**/fp_training/jobs/*/status.json")):
        log = status.parent / "log.txt"
        print(f"== {status.parent.name}\n{status.read_text()}\n{log.read_text()[-2000:] if log.exists() else ''}")
