// Compare runs: POST /runs/compare (settings that differ, metrics) and the overlaid curves PNG.
import { api, el, fmt, loadImage, problemText } from "./api.js";

function grid(names, rows) {
  return el("table", { class: "compare" }, el("thead", {}, el("tr", {}, el("th", {}, ""), names.map((n) => el("th", {}, n)))),
    el("tbody", {}, Object.entries(rows).map(([key, values]) =>
      el("tr", {}, el("th", {}, key), values.map((v) => el("td", { class: "num" }, typeof v === "object" && v !== null ? JSON.stringify(v) : fmt(v, 6)))))));
}

export async function renderCompare(view, ids) {
  view.append(el("h1", {}, "Compare runs"));
  if (ids.length < 2) return view.append(el("p", {}, "Select two or more runs in the ", el("a", { href: "#/runs" }, "runs table"), "."));
  const result = await api("POST", "/runs/compare", { run_ids: ids });
  if (!result.ok) return view.append(el("div", { class: "problem" }, problemText(result)));
  const { runs, settings, metrics, curves_png: curves } = result.body;
  const names = runs.map((r) => el("a", { href: `#/runs/${r.id}` }, r.name || r.id.slice(0, 8)));
  const img = el("img", { id: "compare-curves", alt: "loss curves" });
  const caption = el("figcaption", {}, "train loss (lines) and test NLL (points) against iteration and wall time");
  view.append(
    el("p", { class: "muted", id: "compare-runs" }, runs.map((r) => `${r.name || r.id.slice(0, 8)}: ${r.model} on ${r.dataset?.name || r.dataset?.id}, ${r.status}`).join(" · ")),
    el("h2", {}, "Settings that differ"),
    Object.keys(settings).length ? grid(names, settings) : el("p", { class: "muted" }, "All settings are equal."),
    el("h2", {}, "Metrics"), grid(names.map((n) => n.cloneNode(true)), metrics),
    el("h2", {}, "Curves"), el("div", { class: "plots" }, el("figure", { class: "wide" }, img, caption)));
  if (curves) loadImage(img, curves, (msg) => (caption.textContent = msg));
}
