// Face Personalization training panel: the selected job (plots, previews, config, log, actions).
// The skeleton and the charts persist while the same job stays selected; each store change refills the parts.
import { app } from "../../../../scripts/app.js";
import { LineChart } from "./charts.js";
import { fileUrl } from "./client.js";
import { h, replaceChildren } from "./dom.js";
import { ACTIVE, duration, methodLabel, number, outputName, speed, when } from "./format.js";
import { progressBar, statusBadge } from "./job_list.js";
import { showImage } from "./lightbox.js";
import { openInNewGraph } from "./open_graph.js";
import { smooth } from "./smoothing.js";

const SMOOTHING_SETTING = "FaceP.Training.LossSmoothing";
const MAX_PREVIEWS = 6;
const RAW = "rgba(120,165,230,0.6)", SMOOTH = "#3d8bfd", SCORE = "#e8a33d";

const legend = (label, color) => h("span", { class: "fp-train-legend" },
  h("i", { style: { background: color } }), label);

function setting(id, fallback) {
  try { return app.extensionManager?.setting?.get(id) ?? fallback; } catch { return fallback; }
}

async function confirmDelete(job) {
  const message = `Delete the training job "${job.name || job.id}" with its checkpoints, previews and log? `
    + "Exported outputs in the models folder are kept.";
  const dialog = app.extensionManager?.dialog;
  if (dialog?.confirm) return (await dialog.confirm({ title: "Delete training job", message, type: "delete" })) === true;
  return window.confirm(message);
}

function toast(severity, summary, detail) {
  app.extensionManager?.toast?.add({ severity, summary, detail, life: 6000 });
}

export class JobDetail {
  constructor(store) {
    this.store = store;
    this.jobId = null;
    this.log = false;
    this.el = h("section", { class: "fp-train-detail" });
    this.charts = [];
  }

  destroy() { for (const c of this.charts) c.destroy(); this.charts = []; }

  update(job) {
    if (!job) { this.destroy(); this.jobId = null; replaceChildren(this.el); return; }
    if (job.id !== this.jobId) this._build(job);
    this._fill(job);
  }

  _build(job) {
    this.destroy();
    this.jobId = job.id;
    this._previewKey = null;
    this._logOpened = false;
    this.parts = {
      head: h("div", { class: "fp-train-detail-head" }),
      error: h("div", { class: "fp-train-error", role: "alert" }),
      actions: h("div", { class: "fp-train-actions" }),
      lossBox: h("div", { class: "fp-train-chart fp-train-loss-chart" }),
      lossEmpty: h("div", { class: "fp-train-chart-empty" }, "no loss logged yet"),
      scoreBox: h("div", { class: "fp-train-chart fp-train-score-chart" }),
      scoreEmpty: h("div", { class: "fp-train-chart-empty" }, "no identity score yet"),
      previews: h("div", { class: "fp-train-previews" }),
      files: h("div", { class: "fp-train-files" }),
      config: h("table", { class: "fp-train-config" }),
      logTail: h("pre", { class: "fp-train-log" }),
    };
    const logToggle = h("label", { class: "fp-train-toggle" },
      h("input", { type: "checkbox", class: "fp-train-log-scale", checked: this.log,
        onchange: (e) => { this.log = e.target.checked; this._fill(this.store.job(this.jobId)); } }),
      " log scale");
    this.logDetails = h("details", { class: "fp-train-section fp-train-log-section" }, h("summary", {}, "Log"), this.parts.logTail);
    replaceChildren(this.el,
      this.parts.head, this.parts.error, this.parts.actions,
      h("div", { class: "fp-train-charts" },
        h("div", { class: "fp-train-chart-cell" }, h("div", { class: "fp-train-chart-title" }, h("span", {}, "Loss ", legend("raw", RAW), legend("smoothed", SMOOTH)), logToggle), this.parts.lossBox, this.parts.lossEmpty),
        h("div", { class: "fp-train-chart-cell" }, h("div", { class: "fp-train-chart-title" }, h("span", {}, "Identity score ", legend("ArcFace cosine", SCORE))),
          this.parts.scoreBox, this.parts.scoreEmpty)),
      h("div", { class: "fp-train-section-title" }, "Latest previews"), this.parts.previews,
      this.parts.files,
      h("details", { class: "fp-train-section" }, h("summary", {}, "Config"), this.parts.config),
      this.logDetails);
    this.lossChart = new LineChart(this.parts.lossBox, { series: [
      { label: "raw", stroke: RAW, width: 1 },
      { label: "smoothed", stroke: SMOOTH, width: 2 }] });
    this.scoreChart = new LineChart(this.parts.scoreBox, { height: 150, series: [
      { label: "identity", stroke: SCORE, width: 2, points: { show: true, size: 5 } }] });
    this.charts = [this.lossChart, this.scoreChart];
  }

  _fill(job) {
    if (!job) return;
    const p = this.parts;
    this.el.dataset.jobId = job.id;
    this.el.dataset.status = job.status ?? "";
    const running = job.status === "running";
    replaceChildren(p.head,
      h("div", { class: "fp-train-detail-title" }, h("strong", {}, job.name || job.id), statusBadge(job.status)),
      h("div", { class: "fp-train-detail-sub" }, `${methodLabel(job.method)} · ${job.base_model ?? "?"}`),
      progressBar(job),
      h("div", { class: "fp-train-job-stats" },
        h("span", { class: "fp-train-steps" }, `step ${job.step ?? 0} / ${job.total ?? "?"}`),
        h("span", {}, `loss ${number(job.loss)}`),
        h("span", {}, `lr ${number(job.lr, 3)}`),
        running ? h("span", {}, `ETA ${duration(job.eta_s)}`) : null,
        running ? h("span", {}, speed(job.it_s)) : null,
        job.best_id_score != null ? h("span", {}, `best ID ${number(job.best_id_score, 3)}`) : null));

    p.error.hidden = !job.error;
    replaceChildren(p.error, job.error ? [h("strong", {}, "Error: "), job.error] : []);
    this._fillActions(job);
    this._fillCharts(job);
    this._fillPreviews(job);
    this._fillFiles(job);
    replaceChildren(p.config, Object.entries(job.config ?? {}).map(([k, v]) =>
      h("tr", {}, h("th", {}, k), h("td", {}, typeof v === "object" ? JSON.stringify(v) : String(v)))));
    const logText = Array.isArray(job.log_tail) ? job.log_tail.join("\n") : (job.log_tail ?? "");
    p.logTail.textContent = logText || "(empty)";
    if (job.status === "failed" && !this._logOpened) { this.logDetails.open = true; this._logOpened = true; }
  }

  _fillActions(job) {
    const status = job.status;
    const busy = (btn, fn) => async () => {
      btn.disabled = true;
      try { await fn(); } catch (e) { toast("error", "Training job", String(e.message ?? e)); }
      finally { btn.disabled = false; this._fill(this.store.job(job.id)); }
    };
    const button = (label, cls, enabled, tip, fn) => {
      const b = h("button", { class: `fp-train-btn ${cls}`, title: tip, type: "button" }, label);
      b.disabled = !enabled;
      b.addEventListener("click", busy(b, fn));
      return b;
    };
    const resumable = ["cancelled", "resumable", "paused"].includes(status)
      || (status === "failed" && (job.checkpoints ?? []).length > 0);
    replaceChildren(this.parts.actions,
      button("Cancel", "fp-train-cancel", ["queued", "running", "paused"].includes(status),
        "Stop the job; it saves a checkpoint first, so it can be resumed.", () => this.store.cancel(job.id)),
      button("Resume", "fp-train-resume", resumable,
        "Continue from the last checkpoint (same inputs as an uninterrupted run).", () => this.store.resume(job.id)),
      button("Delete", "fp-train-delete", !ACTIVE.has(status),
        "Delete the job folder (asks first).", async () => { if (await confirmDelete(job)) await this.store.remove(job.id); }),
      button("Open in new graph", "fp-train-open", status === "done" && (job.outputs ?? []).length > 0,
        "New workflow tab with the loader and apply nodes for this output.", () => openInNewGraph(job)));
  }

  _fillCharts(job) {
    const history = job.loss_history ?? [];
    const steps = history.map((r) => r.step);
    const raw = history.map((r) => (r.loss == null ? null : Number(r.loss)));
    this.parts.lossEmpty.hidden = history.length > 0;
    this.parts.lossBox.hidden = history.length === 0;
    this.lossChart.update(steps, [raw, smooth(raw, setting(SMOOTHING_SETTING, 0.8))], { log: this.log });
    const scores = job.id_scores ?? [];
    this.parts.scoreEmpty.hidden = scores.length > 0;
    this.parts.scoreBox.hidden = scores.length === 0;
    this.scoreChart.update(scores.map((s) => s.step), [scores.map((s) => (s.id_score == null ? null : Number(s.id_score)))]);
    this.parts.lossBox.dataset.points = String(history.length);
    this.parts.scoreBox.dataset.points = String(scores.length);
  }

  _fillPreviews(job) {
    const previews = [...(job.previews ?? [])].sort((a, b) => (b.step ?? 0) - (a.step ?? 0)).slice(0, MAX_PREVIEWS);
    const key = previews.map((pv) => fileUrl(job.id, pv)).join("|");
    if (key === this._previewKey) return;  // keep the loaded <img>s: no flicker on every progress message
    this._previewKey = key;
    if (!previews.length) { replaceChildren(this.parts.previews, h("span", { class: "fp-train-muted" }, "none yet")); return; }
    replaceChildren(this.parts.previews, previews.map((pv) => {
      const url = fileUrl(job.id, pv);
      const caption = `${job.name || job.id} · step ${pv.step ?? "?"}`;
      return h("figure", { class: "fp-train-preview", title: "Click to enlarge", onclick: () => showImage(url, caption) },
        h("img", { src: url, alt: caption }), h("figcaption", {}, `step ${pv.step ?? "?"}`));
    }));
  }

  _fillFiles(job) {
    const checkpoints = job.checkpoints ?? [];
    const outputs = job.outputs ?? [];
    const describe = (c) => (typeof c === "object" && c
      ? `${c.step != null ? `step ${c.step}: ` : ""}${outputName(c) || JSON.stringify(c)}` : String(c));
    replaceChildren(this.parts.files,
      h("div", { class: "fp-train-kv" }, h("span", {}, "Checkpoints"),
        h("span", { class: "fp-train-checkpoints" }, checkpoints.length ? checkpoints.map(describe).join(", ") : "none")),
      h("div", { class: "fp-train-kv" }, h("span", {}, "Outputs"),
        h("span", { class: "fp-train-outputs" }, outputs.length ? outputs.map(outputName).join(", ") : "none yet")),
      h("div", { class: "fp-train-kv" }, h("span", {}, "Submitted"), h("span", {}, when(job.submitted))),
      h("div", { class: "fp-train-kv" }, h("span", {}, "Job id"), h("span", { class: "fp-train-mono" }, job.id)));
  }
}
