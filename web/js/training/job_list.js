// Face Personalization training panel: the list of jobs (one row per job, newest first).
import { h } from "./dom.js";
import { duration, fraction, methodLabel, speed } from "./format.js";

export function statusBadge(status) {
  return h("span", { class: `fp-train-status fp-train-status-${status ?? "unknown"}` }, status ?? "?");
}

export function progressBar(job) {
  const f = fraction(job.step, job.total);
  return h("div", { class: "fp-train-progress", role: "progressbar", "aria-valuemin": "0", "aria-valuemax": String(job.total ?? 0),
    "aria-valuenow": String(job.step ?? 0) },
  h("div", { class: `fp-train-progress-fill fp-train-status-${job.status}`, style: { width: `${(f * 100).toFixed(1)}%` } }));
}

function row(job, selected, onSelect) {
  const active = job.status === "running";
  return h("li", {
    class: `fp-train-job${selected ? " selected" : ""}`, dataset: { jobId: job.id, status: job.status ?? "" },
    tabindex: "0", onclick: () => onSelect(job.id), onkeydown: (e) => { if (e.key === "Enter") onSelect(job.id); },
  },
  h("div", { class: "fp-train-job-head" },
    h("span", { class: "fp-train-job-name", title: job.name }, job.name || job.id),
    statusBadge(job.status)),
  h("div", { class: "fp-train-job-sub" },
    h("span", {}, methodLabel(job.method)),
    h("span", { class: "fp-train-job-base", title: job.base_model }, job.base_model ?? "")),
  progressBar(job),
  h("div", { class: "fp-train-job-stats" },
    h("span", { class: "fp-train-steps" }, `${job.step ?? 0} / ${job.total ?? "?"}`),
    h("span", {}, active ? `ETA ${duration(job.eta_s)}` : ""),
    h("span", {}, active ? speed(job.it_s) : "")));
}

export function renderJobList(jobs, selectedId, onSelect) {
  if (!jobs.length) {
    return h("div", { class: "fp-train-empty" },
      "No training jobs yet. Queue a workflow with a Face Personalization training node ",
      "(Train Cross Initialization, PersonaMagic, PIDiff or W+ Adapter): it shows up here while it trains.");
  }
  return h("ul", { class: "fp-train-jobs" }, jobs.map((job) => row(job, job.id === selectedId, onSelect)));
}
