// Face Personalization training panel: the engine's HTTP routes (training_nodes routes, /fp/training/...).
// Every call goes through the frontend's api.fetchApi, so the page's base URL and user header apply.
import { api } from "../../../../scripts/api.js";

const BASE = "/fp/training/jobs";

export class TrainingUnavailable extends Error {}

async function request(path, options = {}) {
  const res = await api.fetchApi(path, options);
  if (res.status === 404 && path === BASE) throw new TrainingUnavailable("training routes not found on this server");
  let body = null;
  try { body = await res.json(); } catch { /* empty body */ }
  if (!res.ok) {
    const why = body?.error || body?.message || `${res.status} ${res.statusText}`;
    throw new Error(`${options.method || "GET"} ${path}: ${why}`);
  }
  return body ?? {};
}

const jobPath = (id) => `${BASE}/${encodeURIComponent(id)}`;

export const listJobs = async () => (await request(BASE)).jobs ?? [];
export const getJob = (id) => request(jobPath(id));
export const cancelJob = (id) => request(`${jobPath(id)}/cancel`, { method: "POST" });
export const resumeJob = (id) => request(`${jobPath(id)}/resume`, { method: "POST" });
export const deleteJob = (id) => request(jobPath(id), { method: "DELETE" });

// Preview images: the engine gives a url (relative to the API root) or a bare file name.
export function fileUrl(id, preview) {
  const url = typeof preview === "string" ? null : preview?.url;
  if (url) return /^https?:|^\/api\//.test(url) ? url : api.apiURL(url.startsWith("/") ? url : `/${url}`);
  const name = typeof preview === "string" ? preview : preview?.file;
  return api.apiURL(`${jobPath(id)}/files/${encodeURIComponent(name)}`);
}
