// One run: live status and progress, its plots, density/sample queries, cancel/retry/tags.
import { api, el, fmt, loadImage, problemText, progressBar, query, runEvents, TERMINAL } from "./api.js";
import { flash, onLeave } from "./app.js";
import { scatter } from "./scatter.js";

const PLOTS = { ffjord: ["density", "samples", "loss"], latent_ode: ["forecast", "loss"] };

function table(obj) {
  const rows = Object.entries(obj || {}).map(([k, v]) =>
    el("tr", {}, el("th", {}, k), el("td", { class: "num" }, typeof v === "object" ? JSON.stringify(v) : fmt(v, 6))));
  return el("table", {}, el("tbody", {}, rows));
}

function plotFigure(runId, kind) {
  const img = el("img", { id: `plot-${kind}`, alt: `${kind} plot` });
  const caption = el("figcaption", {}, kind);
  const figure = el("figure", {}, img, caption);
  // Figures of the model exist once the run succeeded; the loss curve once it ran an iteration.
  figure.refresh = async (status, iteration) => {
    if (kind !== "loss" && status !== "succeeded") return (caption.textContent = `${kind}: once the run has succeeded`);
    if (kind === "loss" && !iteration) return (caption.textContent = "loss: no iterations yet");
    const ok = await loadImage(img, `/runs/${runId}/plots/${kind}.png`, (msg) => (caption.textContent = `${kind}: ${msg}`));
    if (ok) caption.textContent = kind;
  };
  return figure;
}

function queryForms(run, out) {
  const points = el("textarea", { id: "density-points", rows: 4, cols: 30 }, run.dataset?.dim === 1 ? "0.5\n1.0" : "0,0\n1,1\n-2,0.5");
  const density = el("form", { id: "density-form" }, el("label", {}, "Points (one per line, comma-separated)", points),
    el("button", { type: "submit" }, "Log density"));
  density.addEventListener("submit", async (event) => {
    event.preventDefault();
    const rows = points.value.split("\n").map((l) => l.trim()).filter(Boolean).map((l) => l.split(/[ ,]+/).map(Number));
    const result = await api("POST", "/density", { run_id: run.id, points: rows });
    if (!result.ok) return out.replaceChildren(el("div", { class: "problem" }, problemText(result)));
    out.replaceChildren(el("table", { id: "density-result" }, el("tbody", {},
      rows.map((p, i) => el("tr", {}, el("td", {}, p.join(", ")), el("td", { class: "num" }, fmt(result.body.log_density[i], 6)))))));
  });
  const n = el("input", { type: "number", id: "sample-n", value: 500, min: 1, max: 10000 });
  const seed = el("input", { type: "number", id: "sample-seed", value: 0, min: 0 });
  const sample = el("form", { id: "sample-form", class: "row" }, el("label", {}, "n", n), el("label", {}, "seed", seed),
    el("button", { type: "submit" }, "Sample"));
  sample.addEventListener("submit", async (event) => {
    event.preventDefault();
    const result = await api("GET", `/sample${query({ run_id: run.id, n: n.value, seed: seed.value })}`);
    if (!result.ok) return out.replaceChildren(el("div", { class: "problem" }, problemText(result)));
    const samples = result.body.samples;
    out.replaceChildren(el("p", {}, `${samples.length} samples (seed ${result.body.seed})`),
      Array.isArray(samples[0]?.[0]) ? el("pre", {}, JSON.stringify(samples.slice(0, 3))) : scatter(samples));
  });
  return el("div", { class: "grid2" }, density, sample);
}

function tagLinks(tags) {
  return (tags || []).map((t) => el("a", { class: "tag", href: `#/runs${query({ tag: t })}` }, t));
}

function actions(run, note, shownTags) {
  const bar = el("div", { class: "row" });
  if (!TERMINAL.includes(run.status)) {
    bar.append(el("button", { type: "button", class: "secondary", onclick: async () => {
      const result = await api("POST", `/runs/${run.id}/cancel`);
      note.replaceChildren(result.ok ? "Cancel requested." : el("div", { class: "problem" }, problemText(result)));
    } }, "Cancel"));
  }
  if (["failed", "canceled"].includes(run.status)) {
    bar.append(el("button", { type: "button", id: "retry-button", onclick: async () => {
      const result = await api("POST", `/runs/${run.id}/retry`);
      if (!result.ok) return note.replaceChildren(el("div", { class: "problem" }, problemText(result)));
      flash(`Retry started as run ${result.body.id}.`, true);
      location.hash = `#/runs/${result.body.id}`;
    } }, "Retry"));
  }
  const tags = el("input", { id: "tags-input", value: (run.tags || []).join(", "), placeholder: "tag, tag" });
  bar.append(el("label", {}, "Tags", tags), el("button", { type: "button", class: "secondary", id: "tags-save", onclick: async () => {
    const list = tags.value.split(",").map((t) => t.trim()).filter(Boolean);
    const result = await api("PATCH", `/runs/${run.id}`, { tags: list });
    if (!result.ok) return note.replaceChildren(el("div", { class: "problem" }, problemText(result)));
    note.replaceChildren("Tags saved.");
    shownTags.replaceChildren(...tagLinks(result.body.tags));
    tags.value = result.body.tags.join(", ");
  } }, "Save tags"));
  return bar;
}

export async function renderRun(view, runId) {
  const result = await api("GET", `/runs/${runId}`);
  if (!result.ok) return view.replaceChildren(el("div", { class: "problem" }, problemText(result)));
  const run = result.body;
  const status = el("span", { id: "run-status", class: `status ${run.status}` }, run.status);
  const bar = progressBar(run.progress, run.status);
  bar.id = "run-progress";
  const error = el("div", { class: "error" }, run.error ? `${run.error.type}: ${run.error.detail}` : "");
  const metrics = el("div", {}, table(run.metrics));
  const figures = (PLOTS[run.model] || ["loss"]).map((kind) => plotFigure(run.id, kind));
  const note = el("div");
  const out = el("div", { id: "query-output" });
  const shownTags = el("span", { id: "run-tags" }, tagLinks(run.tags));
  const retried = run.retry_of ? el("span", { class: "muted", id: "retry-of" }, "retry of ",
    el("a", { href: `#/runs/${run.retry_of}` }, run.retry_of.slice(0, 8))) : null;
  view.append(
    el("h1", {}, run.name || run.id, " ", el("small", { class: "muted" }, run.id)),
    el("div", { class: "row" }, status, bar, el("span", { class: "muted" }, `${run.model} on ${run.dataset?.name || run.dataset?.id}`),
      shownTags, retried),
    error, actions(run, note, shownTags), note,
    el("h2", {}, "Plots"), el("div", { class: "plots" }, figures),
    el("h2", {}, "Query"), queryForms(run, out), out,
    el("div", { class: "grid2" }, el("div", {}, el("h2", {}, "Metrics"), metrics),
      el("div", {}, el("h2", {}, "Settings"), table({ ...prefixed("solver", run.solver), ...prefixed("training", run.training),
        ...prefixed("model_config", run.model_config) }))),
  );
  const loss = figures.find((f) => f.querySelector("#plot-loss"));
  let iteration = run.progress.iteration;
  const refreshAll = (s) => figures.forEach((f) => f.refresh(s, iteration));
  if (TERMINAL.includes(run.status)) return refreshAll(run.status);
  let last = 0;
  const source = runEvents(run.id, {
    status: (s) => {
      status.textContent = s.status;
      status.className = `status ${s.status}`;
      error.textContent = s.error ? `${s.error.type}: ${s.error.detail}` : "";
      if (TERMINAL.includes(s.status)) refreshAll(s.status);
    },
    progress: (p) => { iteration = p.iteration; bar.update(p, status.textContent); },
    metrics: (m) => {
      metrics.replaceChildren(table(m.summary));
      if (loss && m.points.length && Date.now() - last > 3000) { last = Date.now(); loss.refresh(status.textContent, iteration); }
    },
  });
  onLeave(() => source.close());
}

function prefixed(prefix, obj) {
  return Object.fromEntries(Object.entries(obj || {}).map(([k, v]) => [`${prefix}.${k}`, v]));
}
