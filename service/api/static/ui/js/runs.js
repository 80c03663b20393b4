// Runs table: server-side sort and filters (GET /runs), live progress bars (SSE), compare selection.
import { api, el, fmt, problemText, progressBar, query, runEvents, TERMINAL } from "./api.js";
import { onLeave } from "./app.js";

const SORTS = ["created_at", "updated_at", "name", "status", "model", "dataset", "wall_s", "iteration",
  "attempt", "started_at", "finished_at", "metrics.test_nll", "metrics.test_nll_tight",
  "metrics.wall_clock_s", "metrics.train_loss", "metrics.nfe_forward_mean", "metrics.nfe_backward_mean",
  "solver.method", "solver.rtol", "solver.atol", "training.iterations", "training.batch_size"];
// Table columns: [heading, sort key or null]. The server sorts, so the order covers every page.
const COLUMNS = [["Name", "name"], ["Model", "model"], ["Dataset", "dataset"], ["Status", "status"],
  ["Progress", "iteration"], ["Test NLL", "metrics.test_nll"], ["Wall clock (s)", "metrics.wall_clock_s"],
  ["Tags", null], ["Created", "created_at"]];
// The server's default order: newest first for times, lowest first for everything else.
const defaultOrder = (sort) => (sort.endsWith("_at") ? "desc" : "asc");
const MAX_STREAMS = 4; // browsers allow ~6 HTTP/1.1 connections per origin; keep some for fetches
const STATUSES = ["", "queued", "running", "succeeded", "failed", "canceling", "canceled"];

function field(label, input) {
  return el("label", {}, label, input);
}

export function renderRuns(view, params) {
  const state = Object.fromEntries(["sort", "order", "name", "tag", "status", "model", "dataset"]
    .map((k) => [k, params.get(k) || ""]));
  const form = el("form", { class: "filters", id: "run-filters" });
  const inputs = {
    name: el("input", { name: "name", value: state.name, placeholder: "substring" }),
    tag: el("input", { name: "tag", value: state.tag, placeholder: "tag[,tag]" }),
    status: el("select", { name: "status" }, STATUSES.map((s) => el("option", { value: s, selected: s === state.status }, s || "any"))),
    model: el("select", { name: "model" }, ["", "ffjord", "latent_ode"].map((m) => el("option", { value: m, selected: m === state.model }, m || "any"))),
    dataset: el("input", { name: "dataset", value: state.dataset, placeholder: "name or id" }),
    sort: el("input", { name: "sort", value: state.sort || "created_at", list: "sort-keys" }),
    order: el("select", { name: "order" }, ["", "asc", "desc"].map((o) => el("option", { value: o, selected: o === state.order }, o || "default"))),
  };
  form.append(
    field("Name", inputs.name), field("Tag", inputs.tag), field("Status", inputs.status),
    field("Model", inputs.model), field("Dataset", inputs.dataset), field("Sort by", inputs.sort),
    el("datalist", { id: "sort-keys" }, SORTS.map((s) => el("option", { value: s }))),
    field("Order", inputs.order), el("button", { type: "submit" }, "Apply"),
  );
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const next = {};
    for (const [k, input] of Object.entries(inputs)) if (input.value) next[k] = input.value;
    location.hash = `#/runs${query(next)}`;
  });
  const compare = el("button", { type: "button", id: "compare-button", disabled: true }, "Compare selected");
  const note = el("div");
  const body = el("tbody");
  const more = el("button", { type: "button", class: "secondary", hidden: true }, "More");
  const sort = state.sort || "created_at";
  const order = state.order || defaultOrder(sort);
  const heading = ([label, key]) => {
    if (!key) return el("th", {}, label);
    const active = key === sort;
    const next = active ? (order === "asc" ? "desc" : "asc") : defaultOrder(key);
    const params = { ...state, sort: key, order: next };
    return el("th", { "data-sort": key, "aria-sort": active ? (order === "asc" ? "ascending" : "descending") : "none" },
      el("a", { href: `#/runs${query(params)}`, class: "sort", title: `sort by ${key}` },
        label, active ? (order === "asc" ? " ▲" : " ▼") : ""));
  };
  const head = el("tr", {}, el("th", {}, ""), COLUMNS.map(heading));
  view.append(el("h1", {}, "Runs"), form, el("div", { class: "row" }, compare), note,
    el("table", { id: "runs-table" }, el("thead", {}, head), body), more);

  const selected = new Set();
  compare.addEventListener("click", () => (location.hash = `#/compare?ids=${[...selected].join(",")}`));
  const streams = [];
  const timers = [];
  onLeave(() => { streams.forEach((s) => s.close()); timers.forEach(clearInterval); });

  function row(run) {
    const bar = progressBar(run.progress, run.status);
    const status = el("span", { class: `status ${run.status}` }, run.status);
    const nll = el("td", { class: "num" }, fmt(run.metrics?.test_nll));
    const wall = el("td", { class: "num" }, fmt(run.metrics?.wall_clock_s, 3));
    const box = el("input", { type: "checkbox", "aria-label": `select ${run.id}` });
    box.addEventListener("change", () => {
      box.checked ? selected.add(run.id) : selected.delete(run.id);
      compare.disabled = selected.size < 2;
    });
    const tr = el("tr", { "data-run-id": run.id },
      el("td", {}, box),
      el("td", {}, el("a", { href: `#/runs/${run.id}` }, run.name || run.id.slice(0, 8))),
      el("td", {}, run.model), el("td", {}, run.dataset?.name || run.dataset?.id || ""),
      el("td", {}, status), el("td", {}, bar), nll, wall,
      el("td", {}, (run.tags || []).map((t) => el("a", { class: "tag", href: `#/runs${query({ tag: t })}` }, t))),
      el("td", { class: "muted" }, new Date(run.created_at).toLocaleString()));
    const update = (fields) => {
      if (fields.status) { status.textContent = fields.status; status.className = `status ${fields.status}`; }
      if (fields.progress) bar.update(fields.progress, fields.status || status.textContent);
      if (fields.metrics) { nll.textContent = fmt(fields.metrics.test_nll); wall.textContent = fmt(fields.metrics.wall_clock_s, 3); }
    };
    if (!TERMINAL.includes(run.status)) follow(run.id, update);
    return tr;
  }

  function follow(runId, update) {
    if (streams.length < MAX_STREAMS) {
      let status = null;
      streams.push(runEvents(runId, {
        status: (s) => { status = s.status; update({ status }); },
        progress: (p) => update({ progress: p, status }),
        metrics: (m) => update({ metrics: m.summary }),
      }));
      return;
    }
    const timer = setInterval(async () => { // past the stream cap: poll the run
      const result = await api("GET", `/runs/${runId}`);
      if (!result.ok) return clearInterval(timer);
      update(result.body);
      if (TERMINAL.includes(result.body.status)) clearInterval(timer);
    }, 3000);
    timers.push(timer);
  }

  async function load(path, append) {
    const result = await api("GET", path);
    if (!result.ok) {
      note.replaceChildren(el("div", { class: "problem" }, `Could not list runs: ${problemText(result)}`));
      return;
    }
    const items = result.body.items;
    if (!append) body.replaceChildren();
    body.append(...items.map(row));
    if (!items.length && !append) body.append(el("tr", {}, el("td", { colspan: 10, class: "muted" }, "No runs.")));
    more.hidden = !result.body.next;
    more.onclick = () => load(result.body.next, true);
  }
  const tags = state.tag ? state.tag.split(",").map((t) => t.trim()).filter(Boolean) : [];
  load(`/runs${query({ ...state, tag: tags, limit: 50 })}`, false);
}
