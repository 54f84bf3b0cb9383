"""A real ComfyUI server (``main.py --cpu``) on a free loopback port, with the pack in its
``custom_nodes/``; talks to it over HTTP the way the frontend does. Always stopped on exit."""
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

from . import comfy_host


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerError(RuntimeError):
    pass


class ComfyServer:
    def __init__(self, home, python=None, extra_args=(), startup_timeout=240):
        self.home = comfy_host.setup_home(Path(home))
        self.python = python or sys.executable
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.extra_args = list(extra_args)
        self.startup_timeout = startup_timeout
        self.log_path = self.home / "server.log"
        self.proc = None

    # -- lifecycle -----------------------------------------------------------------------
    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()

    def start(self):
        cmd = [self.python, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
               "--base-directory", str(self.home), "--disable-auto-launch", *self.extra_args]
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(cmd, cwd=comfy_host.comfy_dir(), stdout=self._log, stderr=subprocess.STDOUT,
                                     env=env, start_new_session=True)
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServerError(f"ComfyUI exited with {self.proc.returncode}:\n{self.log()[-4000:]}")
            try:
                self.object_info = self.get_json("/object_info")
                break
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.5)
        else:
            self.stop()
            raise ServerError(f"ComfyUI did not answer within {self.startup_timeout}s:\n{self.log()[-4000:]}")
        self.check_import_ok()

    def stop(self):
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=15)
        self._log.close()
        self.proc = None

    def log(self):
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def check_import_ok(self):
        log = self.log()
        bad = [ln for ln in log.splitlines() if comfy_host.PACK_MODULE in ln and ("IMPORT FAILED" in ln or "Cannot import" in ln)]
        if bad or "face-personalization: node module" in log:
            raise ServerError("the pack failed to import:\n" + log[-4000:])

    # -- HTTP ----------------------------------------------------------------------------
    def get_json(self, path, timeout=30):
        with urllib.request.urlopen(self.url + path, timeout=timeout) as r:
            return json.loads(r.read())

    def get_bytes(self, path, timeout=30):
        with urllib.request.urlopen(self.url + path, timeout=timeout) as r:
            return r.read()

    def post_json(self, path, payload, timeout=30):
        req = urllib.request.Request(self.url + path, data=json.dumps(payload).encode(),
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, json.loads(r.read() or b"{}")
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"{}")

    def queue(self, prompt):
        status, body = self.post_json("/prompt", {"prompt": prompt, "client_id": str(uuid.uuid4())})
        if status != 200:
            raise ServerError(f"/prompt rejected the prompt ({status}): {body}")
        return body["prompt_id"]

    def wait(self, prompt_id, timeout=300):
        """History entry of a finished prompt (success or error)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            hist = self.get_json(f"/history/{prompt_id}")
            if prompt_id in hist and hist[prompt_id].get("status", {}).get("completed") is not None:
                entry = hist[prompt_id]
                if entry["status"].get("status_str") in ("success", "error"):
                    return entry
            if self.proc.poll() is not None:
                raise ServerError(f"server died:\n{self.log()[-4000:]}")
            time.sleep(0.3)
        raise ServerError(f"prompt {prompt_id} did not finish in {timeout}s")

    def run(self, prompt, timeout=300):
        entry = self.wait(self.queue(prompt), timeout)
        if entry["status"]["status_str"] != "success":
            raise ServerError(f"prompt failed: {entry['status'].get('messages')}")
        return entry["outputs"]

    def fetch_images(self, outputs):
        """Bytes of every image the prompt's output nodes wrote, via /view."""
        images = []
        for node_out in outputs.values():
            for item in node_out.get("images", []):
                q = urllib.parse.urlencode({"filename": item["filename"], "subfolder": item.get("subfolder", ""),
                                            "type": item.get("type", "output")})
                images.append(self.get_bytes(f"/view?{q}"))
        return images

    def input_types(self, class_type):
        return self.object_info[class_type]["input"]
