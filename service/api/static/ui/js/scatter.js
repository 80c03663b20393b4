// A small scatter plot of 1-D or 2-D samples on a canvas (1-D: a histogram).
export function scatter(samples, size = 320) {
  const canvas = document.createElement("canvas");
  canvas.width = canvas.height = size;
  canvas.id = "sample-canvas";
  const ctx = canvas.getContext("2d");
  const xs = samples.map((s) => s[0]);
  const ys = samples.map((s) => (s.length > 1 ? s[1] : 0));
  const lo = (v) => Math.min(...v), hi = (v) => Math.max(...v);
  const [x0, x1, y0, y1] = [lo(xs), hi(xs), lo(ys), hi(ys)];
  const sx = (x) => 10 + ((x - x0) / (x1 - x0 || 1)) * (size - 20);
  const sy = (y) => size - 10 - ((y - y0) / (y1 - y0 || 1)) * (size - 20);
  ctx.fillStyle = "rgba(47, 111, 219, 0.5)";
  if (samples[0]?.length === 1) {
    const bins = new Array(40).fill(0);
    for (const x of xs) bins[Math.min(39, Math.floor(((x - x0) / (x1 - x0 || 1)) * 40))] += 1;
    const top = Math.max(...bins);
    bins.forEach((b, i) => ctx.fillRect(10 + (i * (size - 20)) / 40, size - 10 - (b / top) * (size - 20), (size - 20) / 40 - 1, (b / top) * (size - 20)));
  } else {
    xs.forEach((x, i) => ctx.fillRect(sx(x) - 1.5, sy(ys[i]) - 1.5, 3, 3));
  }
  return canvas;
}
