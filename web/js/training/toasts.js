// Face Personalization: a toast when a training job finishes, fails or is cancelled (whether the panel is open or not).
import { app } from "../../../../scripts/app.js";
import { jobStore } from "./job_store.js";
import { methodLabel } from "./format.js";

const TOASTS = {
  done: ["success", "Training finished"],
  failed: ["error", "Training failed"],
  cancelled: ["info", "Training cancelled"],
};

app.registerExtension({
  name: "face_personalization.training_toasts",
  async setup() {
    jobStore.start();
    jobStore.onStatusChange((job, previous) => {
      const toast = TOASTS[job.status];
      if (!toast || previous == null) return;  // first sight after a page load: no toast for old news
      const [severity, summary] = toast;
      const what = `${job.name || job.id} (${methodLabel(job.method)})`;
      const detail = job.status === "failed" ? `${what}: ${job.error || "see the log in the Training tab"}`
        : job.status === "done" ? `${what}: ${job.total ?? job.step} steps; output in the loader lists after a refresh.`
        : `${what} at step ${job.step ?? "?"}: a checkpoint was saved, Resume continues from it.`;
      // a failure stays until closed; the others fade
      app.extensionManager?.toast?.add({ severity, summary, detail, ...(job.status === "failed" ? {} : { life: 8000 }) });
    });
  },
});
