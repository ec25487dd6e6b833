// /ui/: find a user (by id) or an item (by id or words of its text).
import {$, clear, el, fmtNumber, getJSON, itemHref, showWorker, userHref} from "./common.js";

function itemEntry(item, note) {
  return el("li", {}, el("a", {href: itemHref(item.item_id), text: item.title || item.item_id}),
    el("code", {class: "rec-id", text: item.item_id}), note ? el("span", {class: "bar-note", text: note}) : null);
}

function userNote(user) {
  if (!user.here) return "its partition is on another worker: the page opens there";
  return user.known ? "has a state on this worker" : "no state for this id";
}

async function search(query) {
  const results = $("results");
  if (!query.trim()) {
    results.hidden = true;
    return;
  }
  const found = await getJSON("/ui/api/search?q=" + encodeURIComponent(query));
  const userBox = clear($("user-result"));
  if (found.user && found.user.known !== false) {  // a user here with a state, or one another worker answers for
    const link = el("a", {class: "user-link", href: userHref(found.user.user_id)}, "User ",
      el("b", {text: found.user.user_id}));
    userBox.append(el("p", {}, link, el("span", {class: "muted", text: " — " + userNote(found.user)})));
  }
  const items = clear($("item-results"));
  for (const item of found.items) items.append(itemEntry(item));
  $("no-items").hidden = found.items.length > 0;
  results.hidden = false;
}

async function home() {
  const data = await getJSON("/ui/api/home");
  showWorker(data.url);
  const users = clear($("users"));
  for (const user of data.users) users.append(el("a", {class: "chip", href: userHref(user), text: user}));
  $("no-users").hidden = data.users.length > 0;
  const top = clear($("top-items"));
  for (const item of data.top_items) top.append(itemEntry(item, fmtNumber(item.shown, 0) + "×"));
  $("no-top").hidden = data.top_items.length > 0;
}

$("search").addEventListener("submit", event => {
  event.preventDefault();
  const query = $("q").value;
  history.replaceState(null, "", "/ui/?q=" + encodeURIComponent(query));
  search(query).catch(err => { $("no-items").textContent = String(err.message || err); $("no-items").hidden = false; });
});

const initial = new URLSearchParams(location.search).get("q") || "";
if (initial) {
  $("q").value = initial;
  search(initial).catch(() => {});
}
home().catch(() => {});
setInterval(() => home().catch(() => {}), 5000);
