"""The job engine on the ComfyUI side: queue, one worker subprocess at a time, watch and relay.

Jobs live in ``<ComfyUI user dir>/fp_training/jobs/<job id>/`` (layout: ``models_loader.training.jobfiles``).
A runner thread starts the next queued job as ``python <pack>/train.py --job DIR --parent-pid <server>``
(the same entrypoint ``accelerate launch`` runs), polls its status.json, relays progress through
``PromptServer.instance.send_sync("fp-training-progress" | "fp-training-status", ...)`` and, when
"pause while generating" is on, sets the job's pause flag while ComfyUI executes a prompt (except a
prompt that waits for a job in FP_TrainingResult). Cancel sets the job's cancel flag (the worker saves a
checkpoint and exits ``cancelled``); SIGTERM after 120 s, SIGKILL after 240 s as fallbacks. On server start,
jobs left queued/running are marked ``resumable``; resume re-queues a job, which continues from its last
checkpoint.
"""
import contextlib
import json
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
import uuid

from ..models_loader.training import jobfiles
from ..models_loader.training.spec import JOB_ID_RE, JobSpec

log = logging.getLogger(__name__)

PACK_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENTRYPOINT = os.path.join(PACK_DIR, "train.py")
ACTIVE = ("running", "paused", "cancelling")
CANCEL_TERM_S, CANCEL_KILL_S = 120.0, 240.0


class JobError(ValueError):
    """A request about a job that cannot be served (unknown id, wrong state); ``code`` = HTTP status."""

    def __init__(self, msg, code=400):
        super().__init__(msg)
        self.code = code


def jobs_root():
    import folder_paths

    return os.path.join(folder_paths.get_user_directory(), "fp_training", "jobs")


def comfyui_root():
    import folder_paths

    return os.path.dirname(os.path.abspath(folder_paths.__file__))


def _send(event, data):
    try:
        from server import PromptServer

        if PromptServer.instance is not None:
            PromptServer.instance.send_sync(event, data)
    except Exception:  # no server (tests, scripts)
        pass


def _prompt_running():
    try:
        from server import PromptServer

        q = PromptServer.instance.prompt_queue
        return bool(getattr(q, "currently_running", {}))
    except Exception:
        return False


class JobManager:
    _instance = None
    _instance_lock = threading.Lock()

    @classmethod
    def get(cls):
        with cls._instance_lock:
            if cls._instance is None:
                cls._instance = cls(jobs_root())
            return cls._instance

    def __init__(self, root, python=None):
        self.root = os.path.abspath(root)
        os.makedirs(self.root, exist_ok=True)
        self.python = python or sys.executable
        self.lock = threading.RLock()
        self.queue = []                  # job ids, FIFO
        self.current = None              # (job id, Popen)
        self.waiters = {}                # job id -> number of FP_TrainingResult nodes waiting
        self.pause_while_generating = {}  # job id -> bool
        self._cancel_at = {}
        self._resume_after_exit = set()
        self._wake = threading.Event()
        self._mark_interrupted()
        self._thread = threading.Thread(target=self._run, name="fp-training-jobs", daemon=True)
        self._thread.start()

    # -- ids and folders ----------------------------------------------------------------------------
    def new_job_dir(self, method):
        job_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{method}-{uuid.uuid4().hex[:6]}"
        d = os.path.join(self.root, job_id)
        os.makedirs(os.path.join(d, jobfiles.PHOTOS_DIR))
        return job_id, d

    def job_dir(self, job_id):
        if not isinstance(job_id, str) or not JOB_ID_RE.match(job_id):
            raise JobError(f"invalid job id {job_id!r}", 400)
        d = os.path.join(self.root, job_id)
        if not os.path.isfile(os.path.join(d, "config.json")):
            raise JobError(f"no training job {job_id!r} (jobs folder {self.root})", 404)
        return d

    def ids(self):
        out = []
        for name in sorted(os.listdir(self.root)):
            if JOB_ID_RE.match(name) and os.path.isfile(os.path.join(self.root, name, "config.json")):
                out.append(name)
        return out

    def _mark_interrupted(self):
        for job_id in self.ids():
            d = os.path.join(self.root, job_id)
            st = jobfiles.read_status(d).get("status")
            if st in ("queued",) + ACTIVE:
                jobfiles.write_status(d, status="resumable", message=f"the server stopped while the job was {st}")

    # -- submit / cancel / resume / delete ------------------------------------------------------------
    def submit(self, spec: JobSpec, job_dir, pause_while_generating=True):
        spec.validate()
        spec.save(job_dir)
        with self.lock:
            jobfiles.write_status(job_dir, status="queued", step=0, total=spec.steps, error=None,
                                  submitted=time.time(), method=spec.method, name=spec.name)
            self.pause_while_generating[spec.job_id] = bool(pause_while_generating)
            self.queue.append(spec.job_id)
        _send("fp-training-status", _status_msg(spec.job_id, jobfiles.read_status(job_dir)))
        self._wake.set()
        return spec.job_id

    def record_rejected(self, method, name, base_model_name, error, steps=None):
        """A training node refused its inputs (no face, unreadable photo, wrong model family, name taken):
        keep a ``failed`` job with the error text so the panel lists it beside the jobs that ran.
        It has no photos or checkpoint, so it cannot be resumed; delete removes it."""
        job_id, d = self.new_job_dir(method)
        jobfiles.atomic_write_text(os.path.join(d, "config.json"), json.dumps(
            {"job_id": job_id, "method": method, "name": name, "base_model_name": base_model_name, "steps": steps,
             "rejected": True}, indent=1))
        now = time.time()
        jobfiles.write_status(d, status="failed", step=0, total=steps, method=method, name=name, submitted=now,
                              finished=now, error=error, message="the training node refused its inputs; nothing ran")
        with open(os.path.join(d, jobfiles.LOG_FILE), "a", encoding="utf-8") as f:
            f.write(f"rejected before training: {error}\n")
        _send("fp-training-status", _status_msg(job_id, jobfiles.read_status(d)))
        return job_id

    @contextlib.contextmanager
    def rejections(self, method, name, base_model_name, steps=None):
        """Around a training node's validation + submit: an error before the job was queued is recorded
        (:meth:`record_rejected`) and re-raised, so the prompt fails with it AND the panel shows it."""
        try:
            yield
        except Exception as exc:
            if type(exc).__name__ == "InterruptProcessingException":  # the user pressed Interrupt: not a refusal
                raise
            try:
                self.record_rejected(method, str(name or "").strip(), base_model_name, str(exc), steps)
            except Exception:  # recording must never hide the user's real error
                log.exception("could not record the refused training job")
            raise

    def reserved_names(self, method):
        """Output names of this method's queued/running jobs (a second job may not take them)."""
        names = set()
        for job_id in self.ids():
            st = jobfiles.read_status(os.path.join(self.root, job_id))
            if st.get("status") in ("queued",) + ACTIVE and st.get("method") == method:
                names.add(st.get("name"))
        return names

    def cancel(self, job_id):
        d = self.job_dir(job_id)
        with self.lock:
            st = jobfiles.read_status(d).get("status")
            if job_id in self.queue:
                self.queue.remove(job_id)
                jobfiles.write_status(d, status="cancelled", message="cancelled before it started")
            elif self.current and self.current[0] == job_id:
                jobfiles.set_flag(d, jobfiles.CANCEL_FLAG)
                jobfiles.set_flag(d, jobfiles.PAUSE_FLAG, False)
                self._cancel_at[job_id] = time.time()
                jobfiles.write_status(d, status="cancelling")
            elif st in jobfiles.FINAL:
                raise JobError(f"job {job_id} is already {st}", 409)
            else:  # resumable: nothing runs
                jobfiles.write_status(d, status="cancelled")
        _send("fp-training-status", _status_msg(job_id, jobfiles.read_status(d)))
        return self.summary(job_id)

    def resume(self, job_id, pause_while_generating=None):
        d = self.job_dir(job_id)
        with self.lock:
            st = jobfiles.read_status(d).get("status")
            stopping = self._is_current(job_id) and st in jobfiles.FINAL + ("resumable",)
            if job_id in self.queue or (self._is_current(job_id) and not stopping):
                raise JobError(f"job {job_id} is already {st}", 409)
            if st == "done":
                raise JobError(f"job {job_id} is done; nothing to resume", 409)
            if (jobfiles.read_json(os.path.join(d, "config.json"), {}) or {}).get("rejected"):
                raise JobError(f"job {job_id} never started (its inputs were refused); fix them and queue it again", 409)
            jobfiles.set_flag(d, jobfiles.CANCEL_FLAG, False)
            jobfiles.write_status(d, status="queued", error=None, message="resumed: continues from its last checkpoint")
            if pause_while_generating is not None:
                self.pause_while_generating[job_id] = bool(pause_while_generating)
            if stopping:  # its worker is still exiting: the runner queues it when the process is gone
                self._resume_after_exit.add(job_id)
            else:
                self.queue.append(job_id)
        self._wake.set()
        _send("fp-training-status", _status_msg(job_id, jobfiles.read_status(d)))
        return self.summary(job_id)

    def delete(self, job_id):
        d = self.job_dir(job_id)
        with self.lock:
            if self.current and self.current[0] == job_id:
                raise JobError(f"job {job_id} is running; cancel it first", 409)
            if job_id in self.queue:
                self.queue.remove(job_id)
            shutil.rmtree(d)
        _send("fp-training-status", {"id": job_id, "status": "deleted", "error": None, "message": None})
        return {"deleted": job_id}

    # -- views ----------------------------------------------------------------------------------------
    def summary(self, job_id):
        d = self.job_dir(job_id)
        spec = jobfiles.read_json(os.path.join(d, "config.json"), {}) or {}
        return dict(summary_of(job_id, jobfiles.read_status(d), spec), job_dir=d)

    def detail(self, job_id, log_lines=60):
        d = self.job_dir(job_id)
        out = self.summary(job_id)
        out["config"] = jobfiles.read_json(os.path.join(d, "config.json"), {})
        out["loss_history"] = jobfiles.read_jsonl(os.path.join(d, jobfiles.LOSS_FILE))
        out["id_scores"] = jobfiles.read_jsonl(os.path.join(d, jobfiles.ID_FILE))
        out["previews"] = [{"step": _step_of(f), "file": f, "url": f"/fp/training/jobs/{job_id}/files/{f}"}
                           for f in jobfiles.list_previews(d)]
        out["checkpoints"] = jobfiles.list_checkpoints(d)
        out["log_tail"] = tail(os.path.join(d, jobfiles.LOG_FILE), log_lines)
        return out

    def list(self):
        return [self.summary(j) for j in reversed(self.ids())]

    # -- waiting (FP_TrainingResult) -------------------------------------------------------------------
    def wait(self, job_id, on_progress=None, should_stop=None, poll=0.5):
        """Block until the job is final; returns its status dict. ``should_stop()`` -> True aborts."""
        d = self.job_dir(job_id)
        with self.lock:
            self.waiters[job_id] = self.waiters.get(job_id, 0) + 1
        try:
            while True:
                st = jobfiles.read_status(d)
                if on_progress:
                    on_progress(st)
                if st.get("status") in jobfiles.FINAL:
                    return st
                if st.get("status") == "resumable" and job_id not in self.queue and not self._is_current(job_id):
                    return st
                if should_stop and should_stop():
                    return None
                time.sleep(poll)
        finally:
            with self.lock:
                self.waiters[job_id] -= 1

    def _is_current(self, job_id):
        return bool(self.current and self.current[0] == job_id)

    # -- the runner ----------------------------------------------------------------------------------
    def _run(self):
        while True:
            self._wake.wait(1.0)
            self._wake.clear()
            with self.lock:
                if self.current is not None or not self.queue:
                    continue
                job_id = self.queue.pop(0)
            try:
                self._run_one(job_id)
            except Exception as exc:  # keep the runner alive whatever happens
                log.exception("training job %s: runner error", job_id)
                try:
                    jobfiles.write_status(os.path.join(self.root, job_id), status="failed", error=f"{type(exc).__name__}: {exc}")
                except Exception:
                    pass
            finally:
                with self.lock:
                    self.current = None

    def _spawn(self, job_id, d):
        env = dict(os.environ, COMFYUI_PATH=comfyui_root(), PYTHONUNBUFFERED="1")
        try:
            from comfy.cli_args import args

            if args.cpu:
                env["FP_TRAIN_CPU"] = "1"
        except Exception:
            pass
        logf = open(os.path.join(d, jobfiles.LOG_FILE), "a", encoding="utf-8")
        logf.write(f"\n--- worker start {time.strftime('%Y-%m-%d %H:%M:%S')} ---\n")
        logf.flush()
        cmd = [self.python, ENTRYPOINT, "--job", d, "--parent-pid", str(os.getpid())]
        proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, env=env, cwd=d)
        logf.close()
        return proc

    def _run_one(self, job_id):
        d = os.path.join(self.root, job_id)
        if not os.path.isdir(d):
            return
        jobfiles.set_flag(d, jobfiles.PAUSE_FLAG, False)
        jobfiles.write_status(d, status="running", error=None, message=None, spawned=time.time())
        proc = self._spawn(job_id, d)
        with self.lock:
            self.current = (job_id, proc)
        spec = jobfiles.read_json(os.path.join(d, "config.json"), {}) or {}
        _send("fp-training-status", _status_msg(job_id, jobfiles.read_status(d)))
        last = (None, None, None)
        while proc.poll() is None:
            time.sleep(0.25)
            self._manage_pause(job_id, d)
            self._cancel_fallback(job_id, proc)
            st = jobfiles.read_status(d)
            key = (st.get("status"), st.get("step"), st.get("preview"))
            if key != last:
                if key[0] != last[0]:
                    _send("fp-training-status", _status_msg(job_id, st))
                _send("fp-training-progress", _progress(job_id, st, spec))
                last = key
        with self.lock:
            if job_id in self._resume_after_exit:
                self._resume_after_exit.discard(job_id)
                self._cancel_at.pop(job_id, None)
                self.queue.append(job_id)
                self._wake.set()
                return
        st = jobfiles.read_status(d)
        if st.get("status") not in jobfiles.FINAL + ("resumable",):
            if jobfiles.flag(d, jobfiles.CANCEL_FLAG):
                jobfiles.write_status(d, status="cancelled", message=f"worker stopped (exit code {proc.returncode})")
            else:
                jobfiles.write_status(d, status="failed", error=f"the training worker exited with code {proc.returncode} "
                                      f"before finishing (see log.txt): {tail(os.path.join(d, jobfiles.LOG_FILE), 3)}")
        jobfiles.set_flag(d, jobfiles.PAUSE_FLAG, False)
        jobfiles.set_flag(d, jobfiles.CANCEL_FLAG, False)
        self._cancel_at.pop(job_id, None)
        st = jobfiles.read_status(d)
        _send("fp-training-status", _status_msg(job_id, st))
        _send("fp-training-progress", _progress(job_id, st, spec))

    def _manage_pause(self, job_id, d):
        if jobfiles.flag(d, jobfiles.CANCEL_FLAG):
            return
        want = (self.pause_while_generating.get(job_id, True) and not self.waiters.get(job_id)
                and not any(self.waiters.values()) and _prompt_running())
        if want != jobfiles.flag(d, jobfiles.PAUSE_FLAG):
            jobfiles.set_flag(d, jobfiles.PAUSE_FLAG, want)

    def _cancel_fallback(self, job_id, proc):
        t = self._cancel_at.get(job_id)
        if t is None:
            return
        waited = time.time() - t
        if waited > CANCEL_KILL_S:
            proc.kill()
        elif waited > CANCEL_TERM_S:
            proc.terminate()


SUMMARY_STATUS_KEYS = ("status", "step", "total", "loss", "lr", "eta_s", "it_s", "error", "message", "outputs",
                       "best_id_score", "best_step", "id_score", "preview", "submitted", "finished", "updated")


def summary_of(job_id, st, spec=None):
    """The one job record of the contract (README "Training routes"): the routes' summaries and the
    websocket messages carry exactly these fields (``preview`` is a file name, ``preview_url`` its route)."""
    spec = spec or {}
    out = {"id": job_id, "method": spec.get("method", st.get("method")), "name": spec.get("name", st.get("name")),
           "base_model": spec.get("base_model_name")}
    out.update({k: st.get(k) for k in SUMMARY_STATUS_KEYS})
    out["outputs"] = out["outputs"] or []
    out["preview_url"] = f"/fp/training/jobs/{job_id}/files/{out['preview']}" if out.get("preview") else None
    return out


def _progress(job_id, st, spec=None):
    return summary_of(job_id, st, spec)


def _status_msg(job_id, st):
    return {"id": job_id, "status": st.get("status"), "error": st.get("error"), "message": st.get("message")}


def _step_of(fname):
    digits = "".join(c for c in fname if c.isdigit())
    return int(digits) if digits else None


def tail(path, n):
    try:
        with open(path, "r", encoding="utf-8", errors="replace") as f:
            return "".join(f.readlines()[-n:])
    except FileNotFoundError:
        return ""
