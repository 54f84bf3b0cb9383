"""HTTP routes of the job engine (aiohttp, on ``PromptServer.instance.routes``), prefix ``/fp/training``.

    GET    /fp/training/jobs                    -> {"jobs": [summary, ...]}  (newest first)
    GET    /fp/training/jobs/{id}               -> summary + config, loss_history, id_scores,
                                                   previews [{step, file, url}], checkpoints, log_tail
    GET    /fp/training/jobs/{id}/files/{name}  -> a preview PNG (previews/<name>) or loss.jsonl /
                                                   id_scores.jsonl / log.txt / config.json / status.json
    POST   /fp/training/jobs/{id}/cancel        -> summary (status cancelling / cancelled)
    POST   /fp/training/jobs/{id}/resume        -> summary (status queued)
    DELETE /fp/training/jobs/{id}               -> {"deleted": id}

Summary / detail / message fields: the README's "Training routes" contract (built by jobs.summary_of).
Errors: {"error": text} with 400 (bad id / file name), 404 (no such job / file), 409 (wrong state).
"""
import os
import re

from ..models_loader.training import jobfiles

PREFIX = "/fp/training"
_FILE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,120}$")
TOP_FILES = {jobfiles.LOSS_FILE, jobfiles.ID_FILE, jobfiles.LOG_FILE, "config.json", jobfiles.STATUS_FILE}


def resolve_file(job_dir, name):
    """Absolute path of a servable file of a job, or raise JobError (no traversal, no other files)."""
    from .jobs import JobError

    if not isinstance(name, str) or not _FILE_RE.match(name) or ".." in name:
        raise JobError(f"invalid file name {name!r}", 400)
    if name in TOP_FILES:
        path = os.path.join(job_dir, name)
    elif name.lower().endswith(".png"):
        path = os.path.join(job_dir, jobfiles.PREVIEWS_DIR, name)
    else:
        raise JobError(f"{name!r} is not a file a job serves (previews *.png, {sorted(TOP_FILES)})", 400)
    real, root = os.path.realpath(path), os.path.realpath(job_dir)
    if not real.startswith(root + os.sep) or not os.path.isfile(real):
        raise JobError(f"job has no file {name!r}", 404)
    return real


def register(routes, manager_factory):
    from aiohttp import web

    from .jobs import JobError

    def guarded(fn):
        async def handler(request):
            try:
                return await fn(request, manager_factory())
            except JobError as exc:
                return web.json_response({"error": str(exc)}, status=exc.code)
        return handler

    @routes.get(PREFIX + "/jobs")
    @guarded
    async def list_jobs(request, m):
        return web.json_response({"jobs": m.list()})

    def job_route(add, path, action):
        """``add(PREFIX + "/jobs/{job_id}" + path)``: the JSON of ``manager.<action>(job_id)``."""
        @add(PREFIX + "/jobs/{job_id}" + path)
        @guarded
        async def handler(request, m):
            return web.json_response(getattr(m, action)(request.match_info["job_id"]))

    job_route(routes.get, "", "detail")

    @routes.get(PREFIX + "/jobs/{job_id}/files/{name}")
    @guarded
    async def get_file(request, m):
        d = m.job_dir(request.match_info["job_id"])
        path = resolve_file(d, request.match_info["name"])
        return web.FileResponse(path)

    job_route(routes.post, "/cancel", "cancel")
    job_route(routes.post, "/resume", "resume")
    job_route(routes.delete, "", "delete")
