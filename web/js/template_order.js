// Face Personalization: the order of the pack's workflows in ComfyUI's templates browser.
//
// ComfyUI 0.3.75 lists a custom pack's workflows (GET /workflow_templates) as bare file names, in the
// order its glob returns them (the file system's order, not sorted), and frontend 1.32.9 shows each as
// {title: name, description: name} in that order (its default "newest" sort keeps it: no dates). Neither
// reads titles, descriptions or an order from the pack (no index.json, no field of the workflow's JSON), so
// the file name is the title, and the order is fixed here: the frontend fetches the list through
// api.getWorkflowTemplates(), which this wraps to sort the pack's names by ORDER (simplest photo-in
// example first; names not listed follow, alphabetically). Other packs' lists are left as they are.
import { app } from "../../../scripts/app.js";
import { api } from "../../../scripts/api.js";

export const ORDER = [
  // photo in, one node or a short chain
  "wplus_quickstart",
  "adaface_from_photo",
  "wplus_from_photo",
  "pidiff_from_photo",
  "personamagic_basic",
  "faces_detect_align",
  // from a saved identity (W+ code, face embedding, trained token)
  "wplus_basic",
  "pidiff_basic",
  "adaface_basic",
  "crossinit_basic",
  // combinations
  "wplus_edit",
  "wplus_controlnet",
  "adaface_controlnet",
  "adaface_animatediff",
  "mix_identities",
  // training
  "train_wplus_stage1",
  "train_wplus_stage2",
  "train_pidiff",
  "train_personamagic",
  "train_crossinit_fast",
  "train_crossinit_full",
];

// the pack's folder in custom_nodes/ (the key of its list): /extensions/<folder>/js/template_order.js
const FOLDER = decodeURIComponent(new URL(import.meta.url).pathname.split("/").slice(-3)[0]);

export function sortTemplateNames(names) {
  const rank = (n) => {
    const i = ORDER.indexOf(n);
    return i < 0 ? ORDER.length : i;
  };
  return [...names].sort((a, b) => rank(a) - rank(b) || a.localeCompare(b));
}

const original = api.getWorkflowTemplates.bind(api);
api.getWorkflowTemplates = async function getWorkflowTemplates() {
  const listed = await original();
  for (const [pack, names] of Object.entries(listed || {})) {
    if (Array.isArray(names) && (pack === FOLDER || names.includes(ORDER[0]))) {
      listed[pack] = sortTemplateNames(names);
    }
  }
  return listed;
};

app.registerExtension({ name: "face_personalization.template_order" });
