// Face Personalization training panel: the one client-side copy of the jobs' state.
// Filled from the routes (on start, after a reconnect, while jobs are active) and kept live by the engine's
// websocket messages "fp-training-progress" / "fp-training-status". Views subscribe; nothing here touches the DOM.
import { api } from "../../../../scripts/api.js";
import * as client from "./client.js";
import { ACTIVE } from "./format.js";

const POLL_MS = 4000;          // safety net while something runs (a missed message, a server restart)
const DETAIL_MIN_GAP_MS = 1500; // refetch the selected job's history at most this often

// Websocket messages follow the routes' contract (README "Training routes"): "fp-training-progress" carries a job
// summary ({id, status, step, total, loss, lr, eta_s, it_s, id_score, best_id_score, preview, preview_url, ...}),
// "fp-training-status" {id, status, error, message}. Fields a message leaves undefined keep their last value.
export function normalizeMessage(msg) {
  if (!msg || typeof msg !== "object" || msg.id == null) return null;
  const out = { ...msg };
  for (const key of Object.keys(out)) if (out[key] === undefined) delete out[key];
  return out;
}

// Newest first by "submitted" (epoch seconds, the engine's status.json).
function compareSubmitted(a, b) {
  const x = Number(a), y = Number(b);
  if (Number.isFinite(x) && Number.isFinite(y)) return x - y;
  return String(a ?? "").localeCompare(String(b ?? ""));
}

class JobStore {
  constructor() {
    this.jobs = new Map();        // id -> summary
    this.details = new Map();     // id -> full record (GET /jobs/{id})
    this.selected = null;
    this.available = null;        // null: not asked yet, false: no training routes on this server
    this.error = null;
    this._listeners = new Set();
    this._statusListeners = new Set();
    this._started = false;
    this._poll = null;
    this._detailTimer = null;
    this._detailAt = 0;
    this._viewers = 0;
  }

  subscribe(fn) { this._listeners.add(fn); return () => this._listeners.delete(fn); }
  // fn(job, previousStatus): called once per status change seen (message or refresh).
  onStatusChange(fn) { this._statusListeners.add(fn); return () => this._statusListeners.delete(fn); }
  _emit() { for (const fn of this._listeners) { try { fn(this); } catch (e) { console.error("[face_personalization] training view", e); } } }

  start() {
    if (this._started) return;
    this._started = true;
    api.addEventListener("fp-training-progress", (e) => this.applyProgress(e.detail));
    api.addEventListener("fp-training-status", (e) => this.applyStatus(e.detail));
    api.addEventListener("reconnected", () => this.refresh());
    this.refresh();
  }

  // A view is open: poll while jobs are active (stops by itself when none is).
  attachViewer() { this._viewers += 1; this._schedulePoll(); this.refresh(); }
  detachViewer() { this._viewers = Math.max(0, this._viewers - 1); }

  list() {
    return [...this.jobs.values()].sort((a, b) => compareSubmitted(b.submitted, a.submitted) || String(b.id).localeCompare(String(a.id)));
  }

  job(id) { return this.details.get(id) ?? this.jobs.get(id) ?? null; }

  async refresh() {
    try {
      const jobs = await client.listJobs();
      this.available = true;
      this.error = null;
      const seen = new Set();
      for (const summary of jobs) { seen.add(summary.id); this._merge(summary); }
      for (const id of [...this.jobs.keys()]) if (!seen.has(id)) { this.jobs.delete(id); this.details.delete(id); }
      if (this.selected && !this.jobs.has(this.selected)) this.selected = null;
      if (!this.selected && jobs.length) this.selected = this.list()[0].id;
      if (this.selected) await this.loadDetail(this.selected);
    } catch (e) {
      if (e instanceof client.TrainingUnavailable) this.available = false;
      else this.error = String(e.message ?? e);
    }
    this._emit();
  }

  async select(id) {
    this.selected = id;
    this._emit();
    await this.loadDetail(id);
  }

  async loadDetail(id) {
    try {
      const detail = await client.getJob(id);
      this._detailAt = Date.now();
      this.details.set(id, detail);
      this._merge(detail);
    } catch (e) {
      this.error = String(e.message ?? e);
    }
    this._emit();
  }

  applyProgress(raw) {
    const msg = normalizeMessage(raw);
    if (!msg) return;
    const known = this.jobs.has(msg.id);
    this._merge(msg, true);
    const detail = this.details.get(msg.id);
    if (detail) {
      const history = detail.loss_history ?? (detail.loss_history = []);
      const last = history[history.length - 1];
      if (msg.loss != null && msg.step != null && (!last || msg.step > last.step)) {
        history.push({ step: msg.step, loss: msg.loss, lr: msg.lr, time: msg.updated });
      }
      const scores = detail.id_scores ?? (detail.id_scores = []);
      if (msg.id_score != null && msg.step != null && !scores.some((r) => r.step === msg.step)) {
        scores.push({ step: msg.step, id_score: msg.id_score });
      }
      const url = msg.preview_url;
      if (url && !(detail.previews ?? []).some((p) => p.url === url)) {
        (detail.previews ?? (detail.previews = [])).push({ step: msg.step, url, file: msg.preview });
      }
    }
    if (!known || msg.id === this.selected) this._scheduleDetail(msg.id, !known);
    this._schedulePoll();
    this._emit();
  }

  applyStatus(raw) {
    const msg = normalizeMessage(raw);
    if (!msg) return;
    if (msg.status === "deleted") { this._forget(msg.id); this._emit(); return; }
    this._merge({ id: msg.id, status: msg.status, ...(msg.error !== undefined ? { error: msg.error } : {}),
      ...(msg.message !== undefined ? { message: msg.message } : {}) }, true);
    // A finished, cancelled or failed job has a final history, checkpoints and outputs: fetch them now.
    if (!this.jobs.has(msg.id) || msg.id === this.selected || !ACTIVE.has(msg.status)) this.refresh();
    this._emit();
  }

  async cancel(id) { await client.cancelJob(id); await this.refresh(); }
  async resume(id) { await client.resumeJob(id); await this.refresh(); }
  async remove(id) {
    await client.deleteJob(id);
    this._forget(id);
    await this.refresh();
  }

  _forget(id) {
    this.jobs.delete(id);
    this.details.delete(id);
    if (this.selected === id) this.selected = null;
  }

  // live: the update is a websocket message (news of now), so a job first seen that way reports its status
  // change from "new" (a toast for a job refused at submit); first sight through the routes is old news (null).
  _merge(update, live = false) {
    const before = this.jobs.get(update.id);
    const summary = { ...(before ?? {}), ...update };
    for (const heavy of ["config", "loss_history", "id_scores", "previews", "log_tail", "checkpoints", "job_dir"]) delete summary[heavy];
    this.jobs.set(update.id, summary);
    const detail = this.details.get(update.id);
    if (detail && detail !== update) Object.assign(detail, summary);
    if (update.status && before?.status !== update.status) {
      for (const fn of this._statusListeners) {
        try { fn(summary, before?.status ?? (live ? "new" : null)); } catch (e) { console.error("[face_personalization] training status", e); }
      }
    }
  }

  _scheduleDetail(id, now) {
    if (this._detailTimer) return;
    const wait = now ? 0 : Math.max(0, DETAIL_MIN_GAP_MS - (Date.now() - this._detailAt));
    this._detailTimer = setTimeout(async () => {
      this._detailTimer = null;
      if (!this.jobs.has(id)) await this.refresh();
      else if (id === this.selected) await this.loadDetail(id);
    }, wait);
  }

  _schedulePoll() {
    if (this._poll || !this._viewers) return;
    this._poll = setTimeout(async () => {
      this._poll = null;
      if (!this._viewers) return;
      await this.refresh();
      if ([...this.jobs.values()].some((j) => ACTIVE.has(j.status))) this._schedulePoll();
    }, POLL_MS);
  }
}

export const jobStore = new JobStore();
