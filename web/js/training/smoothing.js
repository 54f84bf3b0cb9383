// Face Personalization training panel: loss smoothing (pure function, no DOM).
// Exponential moving average with bias correction (the TensorBoard "smoothing" slider): the first
// points are not dragged towards 0, and non-finite values are skipped, not propagated.

export function smooth(values, weight) {
  const w = Math.max(0, Math.min(0.999, Number(weight) || 0));
  const out = new Array(values.length);
  let last = 0, count = 0;
  for (let i = 0; i < values.length; i++) {
    const v = values[i];
    if (v == null || !Number.isFinite(v)) { out[i] = null; continue; }
    last = last * w + (1 - w) * v;
    count += 1;
    out[i] = last / (1 - Math.pow(w, count));
  }
  return out;
}
