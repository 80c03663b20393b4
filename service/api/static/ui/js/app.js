// The page's router: #/runs, #/runs/<id>, #/sweeps, #/sweeps/<id>, #/compare?ids=a,b, #/train.
import { getKey, setKey } from "./api.js";
import { renderCompare } from "./compare.js";
import { renderRun } from "./run.js";
import { renderRuns } from "./runs.js";
import { renderSweep, renderSweeps } from "./sweeps.js";
import { renderTrain } from "./train.js";

let cleanup = [];

export function onLeave(fn) {
  cleanup.push(fn);
}

let keepFlash = false;

// A message above the page; ``keep`` lets it survive the next navigation.
export function flash(message, keep = false) {
  keepFlash = keep;
  const box = document.getElementById("flash");
  box.replaceChildren(...(Array.isArray(message) ? message : [message || ""]));
}

function route() {
  for (const fn of cleanup) fn();
  cleanup = [];
  const [path, search] = (location.hash.slice(1) || "/runs").split("?");
  const params = new URLSearchParams(search || "");
  const parts = path.split("/").filter(Boolean);
  const view = document.getElementById("view");
  view.replaceChildren();
  if (parts[0] === "runs" && parts[1]) return renderRun(view, parts[1]);
  if (parts[0] === "sweeps" && parts[1]) return renderSweep(view, parts[1]);
  if (parts[0] === "sweeps") return renderSweeps(view);
  if (parts[0] === "compare") return renderCompare(view, (params.get("ids") || "").split(",").filter(Boolean));
  if (parts[0] === "train") return renderTrain(view);
  return renderRuns(view, params);
}

function setupKey() {
  const input = document.getElementById("api-key");
  const state = document.getElementById("key-state");
  input.value = getKey();
  state.textContent = getKey() ? "saved" : "";
  document.getElementById("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    setKey(input.value.trim());
    state.textContent = input.value.trim() ? "saved" : "cleared";
    route();
  });
}

window.addEventListener("hashchange", () => {
  if (!keepFlash) flash("");
  keepFlash = false;
  route();
});
setupKey();
route();
