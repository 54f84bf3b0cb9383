// Face Personalization training panel: plain-language labels for job fields (pure functions).

export const METHOD_LABELS = {
  crossinit: "Cross Initialization",
  personamagic: "PersonaMagic",
  pidiff: "PIDiff",
  wplus: "W+ Adapter",
};

// "CrossInit", "cross_init", "wplus_adapter" -> the short key used everywhere in the panel.
export function methodKey(method) {
  const key = String(method ?? "").toLowerCase().replace(/[^a-z]/g, "");
  if (key.startsWith("wplus")) return "wplus";
  if (key.startsWith("crossinit")) return "crossinit";
  return key;
}

export const methodLabel = (method) => METHOD_LABELS[methodKey(method)] ?? String(method ?? "?");

export const ACTIVE = new Set(["queued", "running", "paused", "cancelling"]);
export const FINISHED = new Set(["done", "failed", "cancelled", "resumable"]);

export function duration(seconds) {
  if (seconds == null || !Number.isFinite(Number(seconds)) || seconds < 0) return "–";
  const s = Math.round(Number(seconds));
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), r = s % 60;
  const pad = (v) => String(v).padStart(2, "0");
  return h ? `${h}:${pad(m)}:${pad(r)}` : `${m}:${pad(r)}`;
}

export function number(value, digits = 4) {
  if (value == null || value === "") return "–";
  const v = Number(value);
  if (!Number.isFinite(v)) return String(value);
  if (v !== 0 && (Math.abs(v) < 1e-3 || Math.abs(v) >= 1e5)) return v.toExponential(2);
  return String(Number(v.toPrecision(digits)));
}

export function speed(itPerSecond) {
  const v = Number(itPerSecond);
  if (!itPerSecond || !Number.isFinite(v)) return "–";
  return v >= 1 ? `${v.toFixed(2)} it/s` : `${(1 / v).toFixed(1)} s/it`;
}

export function fraction(step, total) {
  const s = Number(step) || 0, t = Number(total) || 0;
  return t > 0 ? Math.max(0, Math.min(1, s / t)) : 0;
}

export function when(timestamp) {
  if (!timestamp) return "";
  const ms = Number(timestamp) < 1e12 ? Number(timestamp) * 1000 : Number(timestamp);
  const d = new Date(Number.isFinite(ms) ? ms : timestamp);
  return Number.isNaN(d.getTime()) ? String(timestamp) : d.toLocaleString();
}

// An output record of the engine ({path, folder, name, kind}) as the loader lists it: "<folder>/<name>";
// a record without a name (a preview image) or a plain path: its file name.
export function outputName(entry) {
  if (entry && typeof entry === "object" && entry.folder && entry.name) return `${entry.folder}/${entry.name}`;
  const raw = typeof entry === "string" ? entry : entry?.name ?? entry?.file ?? entry?.path ?? "";
  return String(raw).split(/[\\/]/).pop();
}
