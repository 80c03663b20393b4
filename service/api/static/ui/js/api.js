// HTTP helpers: the API key (localStorage), JSON calls, problem+json messages, images, events.
const KEY = "odeserve.apiKey";
export const TERMINAL = ["succeeded", "failed", "canceled"];

export const getKey = () => localStorage.getItem(KEY) || "";
export const setKey = (value) => (value ? localStorage.setItem(KEY, value) : localStorage.removeItem(KEY));

function headers(extra = {}) {
  const key = getKey();
  return key ? { ...extra, Authorization: `Bearer ${key}` } : extra;
}

export function query(params) {
  const search = new URLSearchParams();
  for (const [name, value] of Object.entries(params)) {
    for (const item of Array.isArray(value) ? value : [value]) {
      if (item !== undefined && item !== null && item !== "") search.append(name, item);
    }
  }
  const text = search.toString();
  return text ? `?${text}` : "";
}

// -> {ok, status, body, headers}; never throws for HTTP errors (network errors become status 0).
export async function api(method, path, body) {
  const init = { method, headers: headers(body === undefined ? {} : { "Content-Type": "application/json" }) };
  if (body !== undefined) init.body = JSON.stringify(body);
  let response;
  try {
    response = await fetch(path, init);
  } catch (err) {
    return { ok: false, status: 0, body: { title: "network error", detail: String(err) }, headers: new Headers() };
  }
  const type = response.headers.get("content-type") || "";
  const parsed = type.includes("json") ? await response.json().catch(() => null) : await response.text();
  return { ok: response.ok, status: response.status, body: parsed, headers: response.headers };
}

// A one-line reading of a problem+json answer: detail plus the fields it names.
export function problemText(result) {
  const body = result.body || {};
  if (typeof body !== "object") return `HTTP ${result.status}`;
  const fields = (body.errors || []).map((e) => `${e.field}: ${e.message}`).join("; ");
  return `${result.status} ${body.detail || body.title || ""}${fields ? ` (${fields})` : ""}`;
}

// Images go through fetch so the Authorization header is sent; errors show their problem text.
export async function loadImage(img, path, onError) {
  try {
    const response = await fetch(path, { headers: headers(), cache: "no-store" });
    if (!response.ok) {
      const body = await response.json().catch(() => ({}));
      onError?.(problemText({ status: response.status, body }));
      return false;
    }
    const old = img.src;
    img.src = URL.createObjectURL(await response.blob());
    if (old.startsWith("blob:")) URL.revokeObjectURL(old);
    return true;
  } catch (err) {
    onError?.(String(err));
    return false;
  }
}

// Live events of a run. Without a key: EventSource. With one: the same stream read through fetch,
// so the key goes in the Authorization header, never in a URL (access logs keep URLs).
export function runEvents(runId, handlers) {
  const path = `/runs/${runId}/events`;
  let stopped = false;
  const dispatch = (name, data, close) => {
    handlers[name]?.(data);
    if (name === "status" && TERMINAL.includes(data.status)) close();
  };
  if (!getKey()) {
    const source = new EventSource(path);
    const close = () => source.close();
    for (const name of ["status", "progress", "metrics"]) {
      source.addEventListener(name, (event) => dispatch(name, JSON.parse(event.data), close));
    }
    return { close };
  }
  const controller = new AbortController();
  const close = () => { stopped = true; controller.abort(); };
  (async () => {
    let lastId = null, delay = 2000;
    while (!stopped) {
      const extra = lastId === null ? {} : { "Last-Event-ID": lastId };
      const response = await fetch(path, { headers: headers(extra), signal: controller.signal }).catch(() => null);
      if (response && !response.ok) return; // 401/403/404: reconnecting will not help
      if (response) {
        const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
        let buffer = "";
        for (;;) {
          const { value, done } = await reader.read().catch(() => ({ done: true }));
          if (done) break;
          buffer += value;
          let cut;
          while ((cut = buffer.indexOf("\n\n")) >= 0) {
            const frame = { data: "" };
            for (const line of buffer.slice(0, cut).split("\n")) {
              const [name, ...rest] = line.split(":");
              frame[name] = rest.join(":").replace(/^ /, "");
            }
            buffer = buffer.slice(cut + 2);
            if (frame.id) lastId = frame.id;
            if (frame.retry) delay = Number(frame.retry) || delay;
            if (frame.event && !stopped) dispatch(frame.event, JSON.parse(frame.data), close);
          }
        }
      }
      if (!stopped) await new Promise((resolve) => setTimeout(resolve, delay));
    }
  })();
  return { close };
}

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else if (value !== undefined && value !== null && value !== false) node.setAttribute(name, value);
  }
  for (const child of children.flat()) {
    if (child !== null && child !== undefined) node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

export const fmt = (value, digits = 4) =>
  value === null || value === undefined ? "" : typeof value === "number" ? Number(value.toPrecision(digits)) : String(value);

export function progressBar(progress, status) {
  const bar = el("div", { class: `bar ${status || ""}`, role: "progressbar", "aria-valuemin": 0, "aria-valuemax": 100 });
  const fill = el("span");
  bar.append(fill);
  const text = el("span", { class: "bar-text" });
  const wrap = el("div", { class: "progress" }, bar, text);
  wrap.update = (p, s) => {
    const percent = Math.round((p.fraction || 0) * 100);
    fill.style.width = `${percent}%`;
    bar.setAttribute("aria-valuenow", percent);
    if (s) bar.className = `bar ${s}`;
    const eta = p.eta_s ? ` · ${Math.ceil(p.eta_s)} s left` : "";
    text.textContent = `${percent} % (${p.iteration}/${p.total})${eta}`;
  };
  wrap.update(progress, status);
  return wrap;
}

