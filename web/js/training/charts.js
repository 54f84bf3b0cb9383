// Face Personalization training panel: line charts drawn by the vendored uPlot (web/vendor/uplot, MIT).
import uPlot from "../../vendor/uplot/uPlot.esm.js";

let cssAdded = false;
function ensureCss() {
  if (cssAdded) return;
  cssAdded = true;
  const link = document.createElement("link");
  link.rel = "stylesheet";
  link.href = new URL("../../vendor/uplot/uPlot.min.css", import.meta.url).href;
  document.head.appendChild(link);
}

function themeColor(name, fallback) {
  const v = getComputedStyle(document.documentElement).getPropertyValue(name).trim();
  return v || fallback;
}

// A chart of one x column (optimiser step) and several y series, resized with its container.
// series: [{label, stroke, width, dash}], height in px. update(x, ys, {log}) redraws; the chart is rebuilt
// only when the scale type changes (uPlot fixes the distribution at creation).
export class LineChart {
  constructor(container, { series, height = 170 }) {
    ensureCss();
    this.container = container;
    this.series = series;
    this.height = height;
    this.log = false;
    this.plot = null;
    this.data = [[], ...series.map(() => [])];
    this.observer = new ResizeObserver(() => this._fit());
    this.observer.observe(container);
  }

  _width() { return Math.max(160, Math.floor(this.container.clientWidth || 300)); }

  _build() {
    this.plot?.destroy();
    const fg = themeColor("--fg-color", "#ddd");
    const grid = { stroke: "rgba(128,128,128,0.18)", width: 1 };
    const axis = { stroke: fg, grid, ticks: grid, font: "11px sans-serif", labelFont: "11px sans-serif" };
    this.plot = new uPlot({
      width: this._width(),
      height: this.height,
      scales: { x: { time: false }, y: this.log ? { distr: 3, log: 10 } : { auto: true } },
      axes: [{ ...axis, size: 26 }, { ...axis, size: 44 }],
      legend: { show: false },  // the panel draws a compact legend in the chart title
      cursor: { drag: { x: true, y: false } },
      series: [{ label: "step" }, ...this.series.map((s) => ({ spanGaps: true, points: { show: false }, ...s }))],
    }, this._shaped(), this.container);
  }

  _shaped() {
    if (!this.log) return this.data;
    const [x, ...ys] = this.data;
    return [x, ...ys.map((y) => y.map((v) => (v != null && v > 0 ? v : null)))];
  }

  update(x, ys, { log = false } = {}) {
    this.data = [x, ...ys];
    if (!this.plot || log !== this.log) { this.log = log; this._build(); } else this.plot.setData(this._shaped());
  }

  _fit() {
    if (!this.plot) return;
    const width = this._width();
    if (Math.abs(width - this.plot.width) > 2) this.plot.setSize({ width, height: this.height });
  }

  destroy() {
    this.observer.disconnect();
    this.plot?.destroy();
    this.plot = null;
  }
}
