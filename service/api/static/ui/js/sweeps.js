// Sweeps: the list, and one sweep's table with its chart (GET /sweeps/{id}/plot.png).
import { api, el, fmt, loadImage, problemText, TERMINAL } from "./api.js";
import { onLeave } from "./app.js";

export async function renderSweeps(view) {
  view.append(el("h1", {}, "Sweeps"));
  const result = await api("GET", "/sweeps");
  if (!result.ok) return view.append(el("div", { class: "problem" }, problemText(result)));
  const rows = result.body.items.map((s) => el("tr", {},
    el("td", {}, el("a", { href: `#/sweeps/${s.id}` }, s.name || s.id.slice(0, 8))), el("td", {}, s.model),
    el("td", {}, el("span", { class: `status ${s.status}` }, s.status)), el("td", { class: "num" }, s.run_count),
    el("td", {}, Object.keys(s.grid).join(", ")), el("td", { class: "muted" }, new Date(s.created_at).toLocaleString())));
  if (!rows.length) rows.push(el("tr", {}, el("td", { colspan: 6, class: "muted" }, "No sweeps (POST /sweeps starts one).")));
  view.append(el("table", {}, el("thead", {}, el("tr", {}, ["Name", "Model", "Status", "Runs", "Grid", "Created"]
    .map((h) => el("th", {}, h)))), el("tbody", {}, rows)));
}

export async function renderSweep(view, sweepId) {
  const result = await api("GET", `/sweeps/${sweepId}`);
  if (!result.ok) return view.replaceChildren(el("div", { class: "problem" }, problemText(result)));
  const sweep = result.body;
  const img = el("img", { id: "sweep-chart", alt: "sweep chart" });
  const caption = el("figcaption", {}, "wall clock and test NLL against ", sweep.grid_keys[0]);
  const columns = sweep.table.length ? Object.keys(sweep.table[0]).filter((k) => k !== "run_id") : [];
  const table = el("table", {}, el("thead", {}, el("tr", {}, el("th", {}, "run"), columns.map((c) => el("th", {}, c)))),
    el("tbody", {}, sweep.table.map((r) => el("tr", {},
      el("td", {}, el("a", { href: `#/runs/${r.run_id}` }, r.run_id.slice(0, 8))),
      columns.map((c) => el("td", { class: "num" }, fmt(r[c], 5)))))));
  const ids = sweep.runs.map((r) => r.id).join(",");
  view.append(el("h1", {}, sweep.name || sweep.id, " ", el("span", { class: `status ${sweep.status}` }, sweep.status)),
    el("p", {}, el("a", { href: `#/compare?ids=${ids}` }, "Compare these runs")),
    el("div", { class: "plots" }, el("figure", {}, img, caption)), el("h2", {}, "Runs"), table);
  const refresh = () => loadImage(img, `/sweeps/${sweepId}/plot.png`, (msg) => (caption.textContent = msg));
  refresh();
  if (!sweep.runs.every((r) => TERMINAL.includes(r.status))) {
    const timer = setInterval(refresh, 5000);
    onLeave(() => clearInterval(timer));
  }
}
