// Face Personalization: show a node's text result on the node after it ran (Diagnostics report, Face
// Similarity ID scores). The Python side returns {"ui": {"text": [...]}}; the frontend hands that to
// onExecuted, and this puts it in a read-only text box at the bottom of the node.
import { app } from "../../../scripts/app.js";
import { ComfyWidgets } from "../../../scripts/widgets.js";

const CATEGORY = "face_personalization";
const WIDGET = "fp_result";

function showText(node, lines) {
  const text = (Array.isArray(lines) ? lines : [lines]).join("\n");
  let widget = node.widgets?.find((w) => w.name === WIDGET);
  if (!widget) {
    widget = ComfyWidgets.STRING(node, WIDGET, ["STRING", { multiline: true }], app).widget;
    widget.serialize = false;  // a result, not a setting: never saved into the workflow's widgets_values
    if (widget.inputEl) {
      widget.inputEl.readOnly = true;
      widget.inputEl.style.opacity = 0.85;
    }
  }
  widget.value = text;
  const size = node.computeSize();
  node.setSize([Math.max(node.size[0], size[0]), Math.max(node.size[1], size[1])]);
  node.setDirtyCanvas?.(true, true);
}

app.registerExtension({
  name: "face_personalization.text_results",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!nodeData?.category?.startsWith(CATEGORY) || !nodeData.output_node) return;
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (message) {
      onExecuted?.apply(this, arguments);
      if (message?.text) showText(this, message.text);
    };
  },
});
