// Face Personalization training panel: a preview image shown large over the page (click or Esc closes it).
import { h } from "./dom.js";

export function showImage(url, caption) {
  const close = () => { overlay.remove(); document.removeEventListener("keydown", onKey, true); };
  const onKey = (e) => { if (e.key === "Escape") { e.stopPropagation(); close(); } };
  const overlay = h("div", { class: "fp-train-lightbox", role: "dialog", "aria-label": caption, onclick: close },
    h("img", { src: url, alt: caption }),
    h("div", { class: "fp-train-lightbox-caption" }, caption));
  document.addEventListener("keydown", onKey, true);
  document.body.appendChild(overlay);
  return close;
}
