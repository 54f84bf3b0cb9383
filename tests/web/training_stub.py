"""CONTRACT STUB of the training engine's HTTP routes, for the panel's own browser tests.

It answers inside the browser (Playwright ``page.route``), so the real server is untouched and nothing here
runs when the real engine is tested (test_training_panel_engine.py). It follows the fixed contract:
GET /fp/training/jobs -> {"jobs": [summary]}; GET /fp/training/jobs/{id} -> summary + {config, loss_history,
id_scores, previews, log_tail, checkpoints}; GET .../files/{name}; POST .../cancel, .../resume; DELETE .../{id}.
Websocket messages are dispatched on the page's ``api`` object exactly as the frontend dispatches a server
message ("fp-training-progress", "fp-training-status")."""
import io
import json
import math
import re
import urllib.parse

# the contract (README "Training routes"; training_nodes/jobs.py summary_of): summaries and progress messages
SUMMARY_KEYS = ("id", "method", "name", "base_model", "status", "step", "total", "loss", "lr", "eta_s", "it_s", "error",
                "message", "outputs", "best_id_score", "best_step", "id_score", "preview", "preview_url", "submitted",
                "finished", "updated")
MATCH = re.compile(r".*/fp/training/jobs(/.*)?$")  # what page.route intercepts (this regex runs in the browser)
ROUTE = re.compile(r".*/fp/training/jobs(?:/(?P<id>[^/?]+)(?:/(?P<verb>cancel|resume|files)(?:/(?P<file>[^?]+))?)?)?(?:\?.*)?$")


def loss_at(step):
    """A plausible, deterministic training curve: decay plus a little bounded wiggle."""
    return 0.35 * math.exp(-step / 35.0) + 0.06 + 0.03 * math.sin(step * 1.7) * math.cos(step * 0.31)


def png(seed, size=64):
    from PIL import Image

    img = Image.new("RGB", (size, size))
    img.putdata([((x * 4 + seed * 40) % 256, (y * 4 + seed * 70) % 256, (x * y + seed * 90) % 256)
                 for y in range(size) for x in range(size)])
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def preview_file(step):
    return f"step_{step:06d}.png"


def output(folder, name, path=None, kind="safetensors"):
    return {"path": path or f"/comfy/models/{folder}/{name}", "folder": folder, "name": name, "kind": kind}


def make_job(id, method, name, status, step, total, base_model="tiny_sd15-v1.safetensors", **extra):
    previews = [{"step": s, "file": preview_file(s), "url": f"/fp/training/jobs/{id}/files/{preview_file(s)}"}
                for s in range(10, step + 1, 10)][-3:]
    job = {"id": id, "method": method, "name": name, "base_model": base_model, "status": status, "step": step,
           "total": total, "loss": loss_at(step) if step else None, "lr": 5e-3, "eta_s": (total - step) * 0.8,
           "it_s": 1.25, "error": None, "message": None, "outputs": [], "best_id_score": None, "best_step": None,
           "id_score": None, "preview": previews[-1]["file"] if previews else None,
           "preview_url": previews[-1]["url"] if previews else None,
           "submitted": 1764619200 + 60 * len(id), "finished": None, "updated": 1764622800,
           "config": {"method": method, "name": name, "steps": total, "learning_rate": 5e-3, "batch": 1, "seed": 0,
                      "base_model_name": base_model, "photos": ["photos/photo_00.png", "photos/photo_01.png"],
                      "params": {}},
           "loss_history": [{"step": s, "loss": loss_at(s), "terms": {"loss": loss_at(s), "mse": loss_at(s) * 0.9},
                             "lr": 5e-3, "time": 1764620000 + s * 0.8} for s in range(1, step + 1)],
           "id_scores": [{"step": s, "id_score": 0.1 + 0.5 * (1 - math.exp(-s / 40)), "files": [preview_file(s)]}
                         for s in range(10, step + 1, 10)],
           "previews": previews,
           "log_tail": "".join(f"step {s}/{total} loss {loss_at(s):.4f}\n" for s in range(max(1, step - 5), step + 1)),
           "checkpoints": []}
    if job["id_scores"]:
        best = max(job["id_scores"], key=lambda r: r["id_score"])
        job.update(best_id_score=best["id_score"], best_step=best["step"], id_score=job["id_scores"][-1]["id_score"])
    job.update(extra)
    return job


def default_jobs():
    return [
        make_job("job-run", "crossinit", "alice", "running", 30, 100),
        make_job("job-fail", "personamagic", "bob", "failed", 0, 200, id_scores=[], previews=[],
                 error="FP_TrainPersonaMagic input 'photos': no face found in photo 'cat_01.png' (skip_faceless is off). "
                       "Use a photo with a visible face, or turn skip_faceless on.",
                 log_tail="loading tiny_sd15-v1.safetensors\ndetecting faces in 3 photos\n"
                         "ERROR no face found in photo 'cat_01.png'\n"),
        make_job("job-done", "pidiff", "carol", "done", 60, 60, outputs=[output("pidiff", "carol.safetensors")]),
        make_job("job-cancel", "wplus", "dave", "cancelled", 40, 120,
                 checkpoints=["last.pt"]),
        make_job("job-queue", "crossinit", "erin", "queued", 0, 100, loss_history=[], id_scores=[], previews=[], log_tail=[]),
    ]


class FakeEngine:
    """The jobs the stub routes serve; ``calls`` records every (method, path) the page requested."""

    def __init__(self, jobs=None, available=True):
        self.jobs = {j["id"]: j for j in (jobs if jobs is not None else default_jobs())}
        self.available = available
        self.calls = []

    @staticmethod
    def summary(job):
        return {k: job.get(k) for k in SUMMARY_KEYS}

    def install(self, page):
        page.route(MATCH, self._handle)
        return self

    def _handle(self, route, request):
        m = ROUTE.match(urllib.parse.unquote(request.url))
        job_id, verb, name = m.group("id"), m.group("verb"), m.group("file")
        self.calls.append((request.method, request.url.split("/fp/training", 1)[1]))
        if not self.available:
            return route.fulfill(status=404, body="404: Not Found")
        if job_id is None:
            return route.fulfill(json={"jobs": [self.summary(j) for j in self.jobs.values()]})
        job = self.jobs.get(job_id)
        if job is None:
            return route.fulfill(status=404, json={"error": f"no training job {job_id}"})
        if verb == "files":
            return route.fulfill(status=200, content_type="image/png", body=png(int(re.sub(r"\D", "", name) or 0) // 10))
        if request.method == "DELETE":
            del self.jobs[job_id]
            return route.fulfill(json={"deleted": job_id})
        if verb == "cancel":
            job.update(status="cancelled", checkpoints=["last.pt"])
        elif verb == "resume":
            job.update(status="running")
        return route.fulfill(json=job)

    # what the engine's PromptServer.send_sync delivers (training_nodes/jobs.py: summary_of / _status_msg)
    def progress(self, page, job_id, step):
        job = self.jobs[job_id]
        job["step"], job["loss"] = step, loss_at(step)
        job["loss_history"].append({"step": step, "loss": loss_at(step), "terms": {"loss": loss_at(step)},
                                    "lr": job["lr"], "time": 1764620000 + step * 0.8})
        if step % 10 == 0:
            f = preview_file(step)
            job["previews"].append({"step": step, "file": f, "url": f"/fp/training/jobs/{job_id}/files/{f}"})
            score = 0.1 + 0.5 * (1 - math.exp(-step / 40))
            job["id_scores"].append({"step": step, "id_score": score, "files": [f]})
            job.update(preview=f, preview_url=job["previews"][-1]["url"], id_score=score)
        dispatch(page, "fp-training-progress", self.summary(job))

    def status(self, page, job_id, status, error=None):
        self.jobs[job_id].update(status=status, error=error)
        dispatch(page, "fp-training-status", {"id": job_id, "status": status, "error": error, "message": None})


def dispatch(page, event, data):
    page.evaluate("([t, d]) => window.comfyAPI.api.api.dispatchCustomEvent(t, d)", [event, json.loads(json.dumps(data))])
