// Start a training run: a form for the common settings, POST /train, then back to the runs table.
import { api, el, problemText } from "./api.js";
import { flash } from "./app.js";

const METHODS = ["dopri5", "bosh3", "adaptive_heun", "rk4", "midpoint", "euler"];

function input(name, value, attrs = {}) {
  return el("label", {}, name, el("input", { name, value, ...attrs }));
}

export async function renderTrain(view) {
  const datasets = await api("GET", "/datasets");
  const options = datasets.ok ? datasets.body.items : [{ id: "8gaussians", name: "8gaussians", kind: "points", builtin: true }];
  const dataset = el("select", { name: "dataset" }, options.map((d) =>
    el("option", { value: d.builtin ? `name:${d.name}` : `id:${d.id}`, "data-kind": d.kind }, d.builtin ? d.name : `${d.name} (upload)`)));
  const model = el("select", { name: "model" }, el("option", { value: "ffjord" }, "ffjord"), el("option", { value: "latent_ode" }, "latent_ode"));
  const method = el("select", { name: "method" }, METHODS.map((m) => el("option", { value: m }, m)));
  const note = el("div");
  const form = el("form", { id: "train-form" },
    el("div", { class: "row" }, input("name", "", { placeholder: "optional" }), el("label", {}, "model", model),
      el("label", {}, "dataset", dataset), input("n_train", 1000, { type: "number", min: 10 })),
    el("div", { class: "row" }, input("hidden_dims", "32,32", { placeholder: "ffjord: 32,32" }), el("label", {}, "solver", method),
      input("rtol", "1e-3"), input("atol", "1e-3")),
    el("div", { class: "row" }, input("iterations", 100, { type: "number", min: 1 }), input("batch_size", 128, { type: "number", min: 1 }),
      input("seed", 0, { type: "number", min: 0 }), input("tags", "", { placeholder: "tag, tag" })),
    el("button", { type: "submit" }, "Start training"));
  view.append(el("h1", {}, "Start a training run"), form, note);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const f = Object.fromEntries(new FormData(form));
    const [kind, ref] = f.dataset.split(/:(.*)/s);
    const body = {
      model: f.model,
      dataset: kind === "name" ? { name: ref, n_train: Number(f.n_train) } : { id: ref },
      solver: { method: f.method, rtol: Number(f.rtol), atol: Number(f.atol) },
      training: { iterations: Number(f.iterations), batch_size: Number(f.batch_size), seed: Number(f.seed) },
    };
    if (f.name) body.name = f.name;
    if (f.model === "ffjord" && f.hidden_dims) body.model_config = { hidden_dims: f.hidden_dims.split(",").map(Number) };
    const tags = f.tags.split(",").map((t) => t.trim()).filter(Boolean);
    if (tags.length) body.tags = tags;
    const result = await api("POST", "/train", body);
    if (!result.ok) return note.replaceChildren(el("div", { class: "problem" }, problemText(result)));
    const run = result.body;
    flash(["Run ", el("a", { href: `#/runs/${run.id}`, id: "new-run-link" }, run.name || run.id), " queued."], true);
    location.hash = "#/runs";
  });
}
