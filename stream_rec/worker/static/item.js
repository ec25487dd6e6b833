// /ui/items/{id}: the item's text, when it joined the catalogue, whether it is fresh, and how often and why
// this worker put it into the lists it emitted in the last hour.
import {$, bars, clear, el, encodeId, fmtAgo, fmtNumber, fmtTime, getJSON, idFromPath, showWorker} from "./common.js";

const itemId = idFromPath("/ui/items/");

function fact(list, term, value) {
  list.append(el("dt", {text: term}), el("dd", {text: value}));
}

function joinedText(item) {
  if (!item.in_model) return "not in the model yet (catalogue record read, not applied)";
  if (item.trained_catalogue) return "part of the catalogue the model was built with";
  return fmtTime(item.joined_at) + " (" + fmtAgo(item.age_s) + ")";
}

function render(item) {
  showWorker(item.worker);
  $("item-id").textContent = item.item_id;
  $("title").textContent = item.title || item.item_id;
  document.title = (item.title || item.item_id) + " · stream-rec";
  $("text").textContent = item.text || "(no text)";
  const badges = clear($("badges"));
  badges.append(el("span", {class: "pill " + (item.fresh ? "ok" : "muted-pill"), text: item.fresh ? "fresh" : "not fresh"}));
  if (item.in_model) badges.append(el("span", {class: "pill muted-pill", text: "recommendable"}));
  const facts = clear($("facts"));
  fact(facts, "joined the catalogue", joinedText(item));
  fact(facts, "fresh", item.fresh
    ? "yes: joined after training, less than " + fmtAgo(item.fresh_max_age_s).replace(" ago", "") + " ago" +
      (item.fresh_slots > 0 ? " (" + item.fresh_slots + " fresh slots per list)" : " (fresh slots are off)")
    : "no" + (item.trained_catalogue ? ": in the catalogue the model was built with" : ""));
  if (item.first_seen) fact(facts, "first read by this worker", fmtTime(item.first_seen));
  for (const [key, value] of Object.entries(item.attributes)) fact(facts, key, value);
  $("window-note").textContent = "last " + Math.round(item.window_s / 60) + " min, lists of this worker";
  $("shown").textContent = fmtNumber(item.shown_last_hour, 0);
  const max = Math.max(...item.reasons.map(r => r.share), 1e-9);
  const pct = share => (share >= 0.1 ? Math.round(100 * share) : (100 * share).toFixed(1)) + "%";
  bars($("reasons"), item.reasons.map(r => ({label: r.reason || "(no reason given)", value: r.share,
    note: pct(r.share)})), max);
  $("other-reasons").textContent = item.other_reasons ? "and " + fmtNumber(item.other_reasons, 0) + " other reasons, " +
    pct(item.other_reasons_share) + " in all" : "";
  $("reasons-note").textContent = item.reasons_sampled ? "Why it was shown: shares of the reasons given with it in " +
    fmtNumber(item.reasons_sampled, 0) + " sampled appearances" : "";
  $("no-reasons").hidden = item.shown_last_hour > 0;
  $("saturated").hidden = !item.counts_saturated;
}

async function refresh() {
  try {
    render(await getJSON("/ui/api/items/" + encodeId(itemId)));
  } catch (err) {
    $("title").textContent = String(err.message || err);
  }
}

refresh();
setInterval(refresh, 5000);
