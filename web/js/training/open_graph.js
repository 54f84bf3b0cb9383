// Face Personalization training panel: "open in new graph": a new workflow tab with the base checkpoint,
// the loader of the trained file (selected in its dropdown) and the node that applies it, wired together.
import { app } from "../../../../scripts/app.js";
import { methodKey, outputName } from "./format.js";

// loader node + its file widget, the apply node (or none) and the links [from node, output name, to node, input name].
export const RECIPES = {
  crossinit: { loader: "FP_LoadIdentityEmbedding", widget: "embedding_file", folders: ["crossinit", "embeddings"],
    links: [["ckpt", "CLIP", "loader", "clip"]] },
  personamagic: { loader: "FP_LoadPersonaMagic", widget: "mapper_name", apply: "StageRegulatedTI", folders: ["personamagic"],
    links: [["ckpt", "MODEL", "apply", "model"], ["ckpt", "CLIP", "apply", "clip"], ["loader", "mapper", "apply", "mapper"]] },
  pidiff: { loader: "FP_LoadPIDiff", widget: "pidiff_name", apply: "FP_ApplyStyleCrossAttention", folders: ["pidiff"],
    links: [["ckpt", "MODEL", "apply", "model"], ["loader", "pidiff", "apply", "pidiff"]] },
  wplus: { loader: "FP_LoadWPlusAdapter", widget: "adapter_name", apply: "ApplyResidualCrossAttention", folders: ["wplus"],
    links: [["ckpt", "MODEL", "apply", "model"], ["loader", "wplus_adapter", "apply", "wplus_adapter"]] },
};

const MODEL_FILE = /\.(safetensors|bin|pt|pth|ckpt)$/i;

// The dropdown value naming one of the job's outputs. Outputs are the engine's {path, folder, name, kind}
// records: "<folder>/<name>" is the loader's value (e.g. "crossinit/alice/learned_embeds.bin"); a bare file
// name (outputs of other shapes) matches by its last path part, preferring the recipe's folders.
export function pickOutputValue(values, outputs, folders = []) {
  const list = (values ?? []).map(String);
  const records = (outputs ?? []).filter((o) => MODEL_FILE.test(outputName(o)));
  for (const o of records) {
    if (typeof o === "object" && o?.name && o?.folder) {
      const exact = [`${o.folder}/${o.name}`, o.name].find((v) => list.includes(v));
      if (exact) return exact;
    }
  }
  for (const name of records.map(outputName)) {
    const hits = list.filter((v) => v.split(/[\\/]/).pop() === name);
    const inFolder = hits.find((v) => folders.some((f) => v.startsWith(`${f}/`)));
    if (inFolder ?? hits[0]) return inFolder ?? hits[0];
  }
  return null;
}

const widget = (node, name) => node?.widgets?.find((w) => w.name === name);

function setCombo(node, name, wanted, fallback) {
  const w = widget(node, name);
  if (!w) return false;
  const values = w.options?.values ?? [];
  const value = wanted ?? fallback;
  if (value == null) return false;
  w.value = value;
  w.callback?.(value);
  return values.includes(value);
}

function connect(nodes, [from, output, to, input]) {
  const src = nodes[from], dst = nodes[to];
  if (!src || !dst) return;
  const out = src.findOutputSlot(output), inp = dst.findInputSlot(input);
  if (out >= 0 && inp >= 0) src.connect(out, dst, inp);
}

export async function openInNewGraph(job) {
  const recipe = RECIPES[methodKey(job.method)];
  if (!recipe) throw new Error(`no loader known for method "${job.method}"`);
  await app.refreshComboInNodes();  // the new file is in the loader's dropdown only after a refresh
  await app.extensionManager.command.execute("Comfy.NewBlankWorkflow");
  const graph = app.graph;
  const nodes = { ckpt: LiteGraph.createNode("CheckpointLoaderSimple"), loader: LiteGraph.createNode(recipe.loader) };
  if (recipe.apply) nodes.apply = LiteGraph.createNode(recipe.apply);
  const place = { ckpt: [60, 80], loader: [60, 300], apply: [480, 140] };
  for (const [key, node] of Object.entries(nodes)) { node.pos = place[key]; graph.add(node); }
  if (!recipe.apply) nodes.loader.pos = [480, 140];

  const baseValues = widget(nodes.ckpt, "ckpt_name")?.options?.values ?? [];
  const base = baseValues.find((v) => v === job.base_model || String(v).split(/[\\/]/).pop() === job.base_model);
  if (base) setCombo(nodes.ckpt, "ckpt_name", base);

  const fileValues = widget(nodes.loader, recipe.widget)?.options?.values ?? [];
  const file = pickOutputValue(fileValues, job.outputs, recipe.folders);
  const found = setCombo(nodes.loader, recipe.widget, file);
  const trigger = job.config?.params?.trigger_word ?? job.config?.trigger_word;
  if (trigger) {
    for (const node of [nodes.loader, nodes.apply]) {
      const w = widget(node, "trigger_word") ?? widget(node, "trigger");
      if (w) w.value = trigger;
    }
  }
  for (const link of recipe.links) connect(nodes, link);
  app.canvas?.setDirty(true, true);
  if (!found) {
    app.extensionManager?.toast?.add({ severity: "warn", summary: "Training output not in the list",
      detail: `${(job.outputs ?? []).map(outputName).join(", ")} is not in ${recipe.loader}'s ${recipe.widget} list yet.`, life: 8000 });
  }
  return nodes;
}
