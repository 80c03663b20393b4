// Compare runs: POST /runs/compare (settings that differ, metrics, overlaid curves); a local table
// from GET /runs/{id} when the server has no compare endpoint yet.
import { api, el, fmt, loadImage, problemText, unsupported } from "./api.js";

function grid(names, rows) {
  return el("table", { class: "compare" }, el("thead", {}, el("tr", {}, el("th", {}, ""), names.map((n) => el("th", {}, n)))),
    el("tbody", {}, Object.entries(rows).map(([key, values]) =>
      el("tr", {}, el("th", {}, key), values.map((v) => el("td", { class: "num" }, typeof v === "object" && v !== null ? JSON.stringify(v) : fmt(v, 6)))))));
}

async function fallback(view, ids) {
  const runs = (await Promise.all(ids.map((id) => api("GET", `/runs/${id}`)))).filter((r) => r.ok).map((r) => r.body);
  const flat = runs.map((r) => Object.fromEntries(["solver", "training", "model_config"]
    .flatMap((section) => Object.entries(r[section] || {}).map(([k, v]) => [`${section}.${k}`, JSON.stringify(v)]))));
  const paths = [...new Set(flat.flatMap(Object.keys))].sort();
  const differ = paths.filter((p) => new Set(flat.map((f) => f[p])).size > 1);
  const settings = Object.fromEntries(differ.map((p) => [p, flat.map((f) => (f[p] === undefined ? null : JSON.parse(f[p])))]));
  const keys = [...new Set(runs.flatMap((r) => Object.keys(r.metrics || {})))].sort();
  const metrics = Object.fromEntries(keys.map((k) => [k, runs.map((r) => r.metrics?.[k] ?? null)]));
  const names = () => runs.map((r) => el("a", { href: `#/runs/${r.id}` }, r.name || r.id.slice(0, 8)));
  view.append(el("h2", {}, "Settings that differ"),
    differ.length ? grid(names(), settings) : el("p", { class: "muted" }, "All settings are equal."),
    el("h2", {}, "Metrics"), grid(names(), metrics));
}

export async function renderCompare(view, ids) {
  view.append(el("h1", {}, "Compare runs"));
  if (ids.length < 2) return view.append(el("p", {}, "Select two or more runs in the ", el("a", { href: "#/runs" }, "runs table"), "."));
  const result = await api("POST", "/runs/compare", { run_ids: ids });
  if (!result.ok) {
    const old = unsupported(result) && result.status !== 422;
    view.append(el("div", { class: old ? "note" : "problem" },
      old ? "This server has no compare endpoint yet; showing the metrics side by side." : problemText(result)));
    if (old) await fallback(view, ids);
    return;
  }
  const { runs, settings, metrics, curves_png: curves } = result.body;
  const names = runs.map((r) => el("a", { href: `#/runs/${r.id}` }, r.name || r.id.slice(0, 8)));
  const img = el("img", { id: "compare-curves", alt: "loss curves" });
  const caption = el("figcaption", {}, "loss and test NLL against iteration");
  view.append(
    el("h2", {}, "Settings that differ"),
    Object.keys(settings).length ? grid(names, settings) : el("p", { class: "muted" }, "All settings are equal."),
    el("h2", {}, "Metrics"), grid(names.map((n) => n.cloneNode(true)), metrics),
    el("h2", {}, "Curves"), el("div", { class: "plots" }, el("figure", {}, img, caption)));
  if (curves) loadImage(img, curves, (msg) => (caption.textContent = msg));
}
