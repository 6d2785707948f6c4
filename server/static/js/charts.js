// Small SVG charts (no library): a histogram, horizontal bars and a scatter plot. Each is an <svg role="img">
// with a text summary for screen readers; the pages show the numbers in a table beside it as well.
const NS = "http://www.w3.org/2000/svg";

function svg(tag, attrs = {}, text) {
  const node = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

function frame(width, height, label) {
  const root = svg("svg", { viewBox: `0 0 ${width} ${height}`, class: "chart", role: "img", "aria-label": label });
  root.append(svg("title", {}, label));
  return root;
}

const nice = (x) => Math.round(x * 100) / 100;

/** Counts per exact score -> a histogram of about `bins` bars over [lo, hi]. */
export function histogram({ scores, lo, hi, label, bins = 12 }) {
  const W = 480, H = 240, L = 36, B = 34, T = 10, R = 10;
  const root = frame(W, H, label);
  if (!scores.length) { root.append(svg("text", { x: W / 2, y: H / 2, "text-anchor": "middle" }, "No stored attempts yet")); return root; }
  lo = Math.min(lo ?? Infinity, ...scores.map((s) => s.score));
  hi = Math.max(hi ?? -Infinity, ...scores.map((s) => s.score));
  const width = Math.max(1, Math.ceil((hi - lo + 1) / bins));
  const counts = [];
  for (let start = lo; start <= hi; start += width) counts.push({ start, end: Math.min(hi, start + width - 1), n: 0 });
  for (const s of scores) counts[Math.floor((s.score - lo) / width)].n += s.count;
  const top = Math.max(...counts.map((c) => c.n));
  const bw = (W - L - R) / counts.length;
  root.append(svg("line", { x1: L, y1: H - B, x2: W - R, y2: H - B, class: "axis" }));
  root.append(svg("text", { x: 4, y: T + 8 }, String(top)), svg("text", { x: 4, y: H - B }, "0"));
  counts.forEach((c, i) => {
    const h = top ? ((H - B - T) * c.n) / top : 0;
    const bar = svg("rect", { x: L + i * bw + 1, y: H - B - h, width: Math.max(1, bw - 2), height: h, class: "bar" });
    bar.append(svg("title", {}, `${c.start === c.end ? c.start : `${c.start} to ${c.end}`}: ${c.n}`));
    root.append(bar);
    if (counts.length <= 14 || i % 2 === 0) root.append(svg("text", { x: L + i * bw + bw / 2, y: H - B + 14, "text-anchor": "middle" }, String(c.start)));
  });
  root.append(svg("text", { x: (W + L) / 2, y: H - 4, "text-anchor": "middle" }, "score"));
  return root;
}

/** [{label, value (0..1)}] -> horizontal bars, as percentages. */
export function bars({ items, label }) {
  const row = 24, W = 480, L = 170, R = 44, H = Math.max(40, items.length * row + 10);
  const root = frame(W, H, label);
  items.forEach((it, i) => {
    const y = 5 + i * row, w = (W - L - R) * Math.max(0, Math.min(1, it.value ?? 0));
    root.append(svg("text", { x: L - 6, y: y + 15, "text-anchor": "end" }, it.label));
    const bar = svg("rect", { x: L, y: y + 3, width: w, height: row - 8, class: "bar" });
    bar.append(svg("title", {}, `${it.label}: ${it.value === null ? "no data" : `${Math.round(it.value * 100)}%`}`));
    root.append(bar, svg("text", { x: L + w + 4, y: y + 15 }, it.value === null ? "–" : `${Math.round(it.value * 100)}%`));
  });
  return root;
}

/** [{x, y, label, flagged}] with x in [0, 1] and y in [-1, 1] -> a scatter plot (facility against discrimination). */
export function scatter({ points, label, xTitle, yTitle }) {
  const W = 480, H = 300, L = 40, B = 36, T = 10, R = 10;
  const root = frame(W, H, label);
  const px = (x) => L + (W - L - R) * x, py = (y) => T + (H - B - T) * (1 - (y + 1) / 2);
  root.append(svg("line", { x1: L, y1: py(0), x2: W - R, y2: py(0), class: "axis", "stroke-dasharray": "4 3" }));
  root.append(svg("line", { x1: L, y1: H - B, x2: W - R, y2: H - B, class: "axis" }), svg("line", { x1: L, y1: T, x2: L, y2: H - B, class: "axis" }));
  for (const t of [0, 0.5, 1]) root.append(svg("text", { x: px(t), y: H - B + 14, "text-anchor": "middle" }, String(t)));
  for (const t of [-1, 0, 1]) root.append(svg("text", { x: L - 4, y: py(t) + 4, "text-anchor": "end" }, String(t)));
  root.append(svg("text", { x: (W + L) / 2, y: H - 4, "text-anchor": "middle" }, xTitle), svg("text", { x: 12, y: T + 2 }, yTitle));
  for (const p of points) {
    if (p.y === null || p.y === undefined) continue;
    const dot = svg("circle", { cx: px(p.x), cy: py(p.y), r: 5, class: p.flagged ? "pt flagged" : "pt" });
    dot.append(svg("title", {}, `${p.label}: facility ${nice(p.x)}, discrimination ${nice(p.y)}`));
    root.append(dot);
  }
  return root;
}
