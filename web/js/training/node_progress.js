// Face Personalization: a training node on the canvas shows its job's status and progress under its body.
// The node learns its job id from its executed output (ui {job_id}); until then it matches the newest job of
// its method whose identity name equals the node's name widget.
import { app } from "../../../../scripts/app.js";
import { duration, fraction, methodKey, number } from "./format.js";
import { jobStore } from "./job_store.js";

export const TRAIN_NODES = {
  FP_TrainCrossInit: "crossinit",
  FP_TrainPersonaMagic: "personamagic",
  FP_TrainPIDiff: "pidiff",
  FP_TrainWPlusAdapter: "wplus",
};
const NAME_WIDGETS = ["name", "identity_name", "output_name", "token_name"];
const COLORS = { running: "#3d8bfd", queued: "#8a8f98", paused: "#c9a227", cancelling: "#c9a227", cancelled: "#c9a227",
  resumable: "#c9a227", failed: "#e5484d", done: "#30a46c" };

function jobIdFrom(output) {
  for (const key of ["job_id", "job", "id"]) {
    const v = output?.[key];
    const id = Array.isArray(v) ? v[0] : v;
    if (id != null && typeof id !== "object") return String(id);
    if (id?.id != null) return String(id.id);
  }
  return null;
}

export function jobForNode(node) {
  if (node.fp_training_job_id) {
    const job = jobStore.job(node.fp_training_job_id);
    if (job) return job;
  }
  const method = TRAIN_NODES[node.type];
  const name = NAME_WIDGETS.map((n) => node.widgets?.find((w) => w.name === n)?.value).find((v) => v != null);
  if (!method || name == null) return null;
  return jobStore.list().find((j) => methodKey(j.method) === method && j.name === name) ?? null;
}

export function progressLabel(job) {
  const steps = `${job.step ?? 0}/${job.total ?? "?"}`;
  if (job.status === "running") return `training ${steps} · loss ${number(job.loss, 3)} · ETA ${duration(job.eta_s)}`;
  if (job.status === "failed") return `failed at ${steps}: ${String(job.error ?? "").slice(0, 60)}`;
  return `${job.status} ${steps}`;
}

function drawProgress(node, ctx, job) {
  const width = node.size[0], y = node.size[1] + 6;
  ctx.save();
  ctx.fillStyle = "rgba(0,0,0,0.35)";
  ctx.fillRect(0, y, width, 6);
  ctx.fillStyle = COLORS[job.status] ?? "#8a8f98";
  ctx.fillRect(0, y, width * fraction(job.step, job.total), 6);
  ctx.font = "11px sans-serif";
  ctx.fillStyle = LiteGraph.NODE_TEXT_COLOR ?? "#ddd";
  ctx.textBaseline = "top";
  let text = progressLabel(job);
  while (text.length > 4 && ctx.measureText(text).width > width) text = `${text.slice(0, -2)}…`;
  ctx.fillText(text, 0, y + 9);
  ctx.restore();
}

app.registerExtension({
  name: "face_personalization.training_node_progress",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!(nodeData?.name in TRAIN_NODES)) return;
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (output) {
      const result = onExecuted?.apply(this, arguments);
      const id = jobIdFrom(output);
      if (id) { this.fp_training_job_id = id; jobStore.refresh(); }
      return result;
    };
    const onDrawForeground = nodeType.prototype.onDrawForeground;
    nodeType.prototype.onDrawForeground = function (ctx) {
      const result = onDrawForeground?.apply(this, arguments);
      if (!this.flags?.collapsed) {
        const job = jobForNode(this);
        this.fp_training_label = job ? progressLabel(job) : null;
        if (job) drawProgress(this, ctx, job);
      }
      return result;
    };
  },
  async setup() {
    jobStore.start();
    jobStore.subscribe(() => app.graph?.setDirtyCanvas(true, false));
  },
});
