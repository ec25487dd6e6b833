// /ui/users/{id}: the user's list, profile and last events; updated live (Server-Sent Events from
// /ui/api/live/{id}) each time the worker emits a new list for the user, new entries marked.
import {$, HttpError, bars, clear, el, encodeId, fmtAgo, fmtNumber, fmtTime, getJSON, idFromPath, itemHref,
  showWorker} from "./common.js";

const userId = idFromPath("/ui/users/");
let shown = null; // the data on screen
let updates = 0;
let source = null;

function rankChange(itemId, rank, previous) {
  if (!previous) return null;
  const before = previous.items.findIndex(it => it.item_id === itemId);
  if (before < 0) return el("span", {class: "tag new-tag", text: "new"});
  if (before > rank) return el("span", {class: "tag up", text: "▲" + (before - rank), title: "was #" + (before + 1)});
  if (before < rank) return el("span", {class: "tag down", text: "▼" + (rank - before), title: "was #" + (before + 1)});
  return null;
}

function renderList(data, previous) {
  const list = clear($("list"));
  // bars over the list's own score range (scores are model logits: any sign, any scale)
  const scores = data.items.map(it => it.score || 0);
  const low = Math.min(...scores), span = Math.max(...scores) - low || 1;
  data.items.forEach((it, rank) => {
    const change = rankChange(it.item_id, rank, previous);
    const fill = el("span", {class: "bar-fill"});
    fill.style.width = 8 + (92 * ((it.score || 0) - low)) / span + "%";
    const li = el("li", {class: "rec", "data-item-id": it.item_id},
      el("span", {class: "rank", text: rank + 1}),
      el("div", {class: "rec-body"},
        el("div", {class: "rec-head"},
          el("a", {class: "rec-title", href: itemHref(it.item_id), text: it.title || it.item_id}),
          el("code", {class: "rec-id", text: it.item_id}), change),
        el("div", {class: "reason", text: it.reason || ""})),
      el("div", {class: "score"}, el("span", {class: "score-value", text: fmtNumber(it.score, 3)}),
        el("div", {class: "bar"}, fill)));
    if (previous && change && change.classList.contains("new-tag")) li.classList.add("is-new");
    list.append(li);
  });
  if (data.items.length === 0) {
    list.append(el("li", {class: "empty", text: "Nothing left to recommend: every item of the catalogue is in this user's " +
      "recent history (seen items are excluded)."}));
  }
  list.dataset.producedAt = data.produced_at === null ? "" : String(data.produced_at);
  list.dataset.items = data.items.map(it => it.item_id).join(" ");
}

function renderProfile(data) {
  const interests = clear($("interests"));
  data.interests.forEach((label, n) => interests.append(el("li", {class: "chip" + (n === 0 ? " strong" : ""), text: label})));
  $("interests-box").hidden = data.interests.length === 0;
  bars($("mix"), data.history_mix.map(m => ({label: m.label, value: m.share, note: Math.round(100 * m.share) + "%"})), 1);
  $("mix-box").hidden = data.history_mix.length === 0;
  $("no-profile").hidden = data.interests.length > 0 || data.history_mix.length > 0;
}

function renderEvents(data, previous) {
  const known = new Set(previous ? previous.events.map(e => e.item_id + "@" + e.timestamp) : []);
  const list = clear($("events"));
  for (const ev of data.events) {
    const li = el("li", {},
      el("time", {text: fmtTime(ev.timestamp), title: fmtAgo(Date.now() / 1000 - ev.timestamp)}),
      el("a", {href: itemHref(ev.item_id), text: ev.title || ev.item_id}),
      el("code", {class: "rec-id", text: ev.item_id}));
    if (previous && !known.has(ev.item_id + "@" + ev.timestamp)) li.classList.add("is-new");
    list.append(li);
  }
  const negatives = clear($("negatives"));
  for (const neg of data.negatives) negatives.append(el("li", {}, el("a", {href: itemHref(neg.item_id), text: neg.title || neg.item_id})));
  $("negatives-box").hidden = data.negatives.length === 0;
}

function render(data) {
  const previous = shown;
  $("user-id").textContent = data.user_id;
  document.title = "User " + data.user_id + " · stream-rec";
  $("model").textContent = data.model_version;
  $("partition").textContent = data.partition;
  $("n-events").textContent = fmtNumber(data.n_events, 0);
  renderList(data, previous);
  renderProfile(data);
  renderEvents(data, previous);
  const when = data.source === "stream" ? "list emitted " + fmtTime(data.produced_at) : "list as of " + fmtTime(data.produced_at);
  $("updated").textContent = when + (updates ? " · " + updates + (updates === 1 ? " live update" : " live updates") : "");
  $("list-note").textContent = data.source === "stream" && data.latency_ms !== null && data.latency_ms !== undefined
    ? fmtNumber(data.latency_ms, 1) + " ms in the worker" : "";
  shown = data;
}

function setLive(text, state) {
  const pill = $("live");
  pill.textContent = text;
  pill.className = "pill " + state;
}

function banner(text) {
  const node = $("banner");
  node.textContent = text;
  node.hidden = false;
}

function listen() {
  source = new EventSource("/ui/api/live/" + encodeId(userId));
  source.addEventListener("open", () => setLive("live", "ok"));
  source.addEventListener("list", event => {
    updates += 1;
    render(JSON.parse(event.data));
  });
  source.addEventListener("erased", () => {
    source.close();
    setLive("erased", "bad");
    clear($("list"));
    clear($("events"));
    clear($("interests"));
    clear($("mix"));
    shown = null;
    banner("This user was erased (stream-rec forget): the worker holds nothing of them any more.");
  });
  source.addEventListener("moved", () => {
    source.close();
    setLive("moving", "warn");
    banner("The user's partition moved to another worker: reloading.");
    setTimeout(() => location.reload(), 1500);
  });
  source.addEventListener("stopping", () => setLive("worker stopping", "warn"));
  source.addEventListener("error", () => {
    if (source.readyState === EventSource.CLOSED) setLive("disconnected", "bad");
    else setLive("reconnecting", "warn");
  });
}

async function start() {
  try {
    const data = await getJSON("/ui/api/users/" + encodeId(userId));
    showWorker(data.worker);
    render(data);
    listen();
  } catch (err) {
    setLive(err instanceof HttpError && err.status === 404 ? "unknown user" : "error", "bad");
    banner(String(err.message || err));
  }
}

start();
