// Face Personalization: the "Training" sidebar tab (job list + the selected job). Extension entry point of the panel.
import { app } from "../../../../scripts/app.js";
import { h, replaceChildren } from "./dom.js";
import { JobDetail } from "./job_detail.js";
import { renderJobList } from "./job_list.js";
import { jobStore } from "./job_store.js";

export const TAB_ID = "face-personalization-training";

function addCss() {
  if (document.getElementById("fp-training-panel-css")) return;
  const link = h("link", { id: "fp-training-panel-css", rel: "stylesheet",
    href: new URL("../../css/training_panel.css", import.meta.url).href });
  document.head.appendChild(link);
}

// One view per mount: ComfyUI calls render(el) when the tab opens and destroy() when it closes.
class TrainingPanel {
  constructor(root) {
    this.root = root;
    this.list = h("div", { class: "fp-train-list" });
    this.notice = h("div", { class: "fp-train-notice" });
    this.detail = new JobDetail(jobStore);
    replaceChildren(root, h("div", { class: "fp-train-panel" },
      h("div", { class: "fp-train-header" },
        h("h3", {}, "Training jobs"),
        h("button", { class: "fp-train-btn fp-train-refresh", type: "button", title: "Reload the jobs from the server",
          onclick: () => jobStore.refresh() }, "Refresh")),
      this.notice, this.list, this.detail.el));
    this.unsubscribe = jobStore.subscribe(() => this.render());
    jobStore.attachViewer();
    this.render();
  }

  render() {
    const { available, error } = jobStore;
    this.notice.hidden = available !== false && !error;
    this.notice.textContent = available === false
      ? "The training engine is not running on this server (no /fp/training routes): update the pack and restart ComfyUI."
      : (error ?? "");
    replaceChildren(this.list, renderJobList(jobStore.list(), jobStore.selected, (id) => jobStore.select(id)));
    this.detail.update(jobStore.selected ? jobStore.job(jobStore.selected) : null);
  }

  destroy() {
    this.unsubscribe();
    jobStore.detachViewer();
    this.detail.destroy();
  }
}

let panel = null;

app.registerExtension({
  name: "face_personalization.training_panel",
  settings: [{
    id: "FaceP.Training.LossSmoothing",
    category: ["Face Personalization", "Training panel", "Loss smoothing"],
    name: "Loss plot smoothing (0 = raw)",
    tooltip: "Weight of the exponential moving average drawn over the raw loss (like TensorBoard's slider).",
    type: "slider",
    attrs: { min: 0, max: 0.99, step: 0.01 },
    defaultValue: 0.8,
  }],
  async setup() {
    addCss();
    jobStore.start();
    app.extensionManager.registerSidebarTab({
      id: TAB_ID,
      icon: "pi pi-chart-line",
      title: "Training",
      label: "Training",
      tooltip: "Face Personalization training jobs",
      type: "custom",
      render: (el) => { panel?.destroy(); panel = new TrainingPanel(el); },
      destroy: () => { panel?.destroy(); panel = null; },
    });
  },
});
