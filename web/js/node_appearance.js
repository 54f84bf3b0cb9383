// Face Personalization: give the pack's nodes one recognisable colour in the graph.
// Matches nodes by the Python category the server reports, so it never touches other packs' nodes.
import { app } from "../../../scripts/app.js";  // served at /extensions/<pack>/js/

const CATEGORY = "face_personalization";
const COLOR = "#2a3b4d";
const BGCOLOR = "#33506b";

app.registerExtension({
  name: "face_personalization.node_appearance",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!nodeData?.category?.startsWith(CATEGORY)) return;
    const onNodeCreated = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function () {
      const result = onNodeCreated?.apply(this, arguments);
      this.color ??= COLOR;
      this.bgcolor ??= BGCOLOR;
      return result;
    };
  },
});
