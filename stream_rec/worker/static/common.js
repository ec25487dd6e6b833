// Shared by the pages. Every value from the worker (ids, titles, texts, reasons) is untrusted: it goes
// into the DOM as text (textContent, attribute values), never as markup.

const SVG = "http://www.w3.org/2000/svg";

// el("a", {href: "...", class: "x", text: "..."}, child, ...): an element built from text and nodes only
export function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value === undefined || value === null) continue;
    if (key === "text") node.textContent = String(value);
    else if (key === "class") node.className = value;
    else if (key === "title") node.title = String(value);
    else if (key === "href") node.href = value;
    else node.setAttribute(key, String(value));
  }
  for (const child of children) {
    if (child !== null && child !== undefined) node.append(child);
  }
  return node;
}

export function svg(tag, attrs = {}) {
  const node = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, String(value));
  return node;
}

export function clear(node) {
  while (node.firstChild) node.removeChild(node.firstChild);
  return node;
}

export function $(id) {
  return document.getElementById(id);
}

// an id as one path segment: dots encoded too, so "." and ".." stay ids, never dot segments
export function encodeId(id) {
  return encodeURIComponent(id).replace(/\./g, "%2E");
}

export function userHref(id) {
  return "/ui/users/" + encodeId(id);
}

export function itemHref(id) {
  return "/ui/items/" + encodeId(id);
}

// the id of this page, from its own path (/ui/users/ID or /ui/items/ID)
export function idFromPath(prefix) {
  const raw = location.pathname.slice(prefix.length);
  try {
    return decodeURIComponent(raw);
  } catch (err) {
    return raw;
  }
}

export class HttpError extends Error {
  constructor(status, body) {
    super((body && (body.detail || body.error)) || "HTTP " + status);
    this.status = status;
  }
}

export async function getJSON(url) {
  const response = await fetch(url, {headers: {Accept: "application/json"}, cache: "no-store"});
  let body = null;
  try {
    body = await response.json();
  } catch (err) {
    body = null;
  }
  if (!response.ok) throw new HttpError(response.status, body);
  return body;
}

export function fmtTime(seconds) {
  if (seconds === null || seconds === undefined) return "";
  const d = new Date(seconds * 1000);
  const now = new Date();
  const time = d.toLocaleTimeString([], {hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false});
  if (d.toDateString() === now.toDateString()) return time;
  return d.toLocaleDateString([], {year: "numeric", month: "short", day: "numeric"}) + " " + time;
}

export function fmtAgo(seconds) {
  if (seconds === null || seconds === undefined || !isFinite(seconds)) return "";
  const s = Math.max(0, seconds);
  if (s < 60) return Math.round(s) + " s ago";
  if (s < 3600) return Math.round(s / 60) + " min ago";
  if (s < 86400) return (s / 3600).toFixed(1) + " h ago";
  return (s / 86400).toFixed(1) + " days ago";
}

export function fmtNumber(value, digits = 1) {
  if (value === null || value === undefined || !isFinite(value)) return "–";
  return Number(value).toLocaleString([], {maximumFractionDigits: digits});
}

// the worker answering this page (header, right)
export function showWorker(url) {
  const node = $("worker");
  if (node && url) node.textContent = "worker " + url.replace(/^https?:\/\//, "");
}

// a horizontal bar list: [{label, value, note, href}], value in 0..max
export function bars(list, entries, max) {
  clear(list);
  for (const entry of entries) {
    const fill = el("span", {class: "bar-fill"});
    fill.style.width = (max > 0 ? Math.max(2, (100 * entry.value) / max) : 0) + "%";
    const label = entry.href ? el("a", {href: entry.href, text: entry.label}) : el("span", {text: entry.label});
    list.append(el("li", {}, el("div", {class: "bar-head"}, label, el("span", {class: "bar-note", text: entry.note})),
      el("div", {class: "bar"}, fill)));
  }
}

// a small chart in an <svg> (viewBox 0 0 W H): line over time (values may hold nulls), y from 0
export function sparkline(node, times, values, {color = "#4338ca", step = false, yMax = null} = {}) {
  clear(node);
  const W = 300, H = 80, pad = 2;
  node.setAttribute("viewBox", `0 0 ${W} ${H}`);
  node.setAttribute("preserveAspectRatio", "none");
  const points = [];
  times.forEach((t, i) => {
    if (values[i] !== null && values[i] !== undefined && isFinite(values[i])) points.push([t, values[i]]);
  });
  if (points.length === 0 || times.length < 2) return 0;
  const t0 = times[0], t1 = times[times.length - 1];
  // y from 0 to the top value; a few outliers far above the rest (a start-up backlog) are clipped instead of
  // flattening every other point
  const sorted = points.map(p => p[1]).sort((a, b) => a - b);
  const highest = sorted[sorted.length - 1];
  const robust = Math.max(sorted[Math.floor(0.9 * (sorted.length - 1))] * 1.5, points[points.length - 1][1] * 1.2);
  const top = yMax !== null ? yMax : (highest > 5 * robust ? robust : highest * 1.15) || 1;
  const x = t => pad + ((W - 2 * pad) * (t - t0)) / Math.max(1e-9, t1 - t0);
  const y = v => H - pad - ((H - 2 * pad) * Math.min(v, top)) / top;
  for (const frac of [0.5, 1]) {
    node.append(svg("line", {x1: 0, x2: W, y1: y(top * frac), y2: y(top * frac), class: "grid-line"}));
  }
  let path = "";
  points.forEach(([t, v], i) => {
    if (step && i > 0) path += ` L${x(t).toFixed(1)},${y(points[i - 1][1]).toFixed(1)}`;
    path += `${i === 0 ? "M" : " L"}${x(t).toFixed(1)},${y(v).toFixed(1)}`;
  });
  const area = `${path} L${x(points[points.length - 1][0]).toFixed(1)},${H} L${x(points[0][0]).toFixed(1)},${H} Z`;
  node.append(svg("path", {d: area, fill: color, "fill-opacity": 0.12, stroke: "none"}));
  node.append(svg("path", {d: path, fill: "none", stroke: color, "stroke-width": 2, "vector-effect": "non-scaling-stroke",
    class: "series", "data-points": points.length}));
  node.dataset.clipped = highest > top ? "yes" : "";
  return points.length;
}
