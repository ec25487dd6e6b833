"""The worker's pages (stream_rec/worker/ui.py) in a real browser: Debian's chromium driven by Selenium
(stream_rec_devtools/browser.py), against one real worker on the embedded broker shared by the module, with
a background producer (~10 events/s for users of its own) running meanwhile.

Skipped, with the reason, only where the browser cannot be driven (no selenium, no chromium/chromedriver:
deploy/ensure-test-tools.sh installs them on Debian as root).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import urllib.error
import urllib.request

import pytest

from conftest import WorkerProcess, make_settings, produce, wait_until, write_items
from stream_rec.commands.forget import delete_user_event
from stream_rec.io.kafka import ensure_topics, kafka_producer, produce_json
from stream_rec_devtools.synthetic import make_catalog
from stream_rec_devtools import browser

pytestmark = pytest.mark.skipif(browser.unavailable() is not None, reason=f"no browser: {browser.unavailable()}")

HOSTILE = "<img src=x onerror=alert(1)>"
CATALOG = make_catalog(items_per_theme=12, themes=["space", "cooking", "detective"]) + [
    {"item_id": "hostile", "title": HOSTILE, "text": "<script>alert(2)</script>", "attributes": {"genre": "<b>x</b>"}}]
CHANGED_AT = """
window.__changes = [];
new MutationObserver(() => window.__changes.push({t: performance.timeOrigin + performance.now(),
    produced: document.getElementById('list').dataset.producedAt}))
  .observe(document.getElementById('list'), {attributes: true, attributeFilter: ['data-produced-at']});
window.__marker = 'not reloaded';
"""


def event(user: str, item: str) -> dict:
    return {"user_id": user, "item_id": item, "event_type": "view", "timestamp": time.time()}


def http(url: str) -> tuple[int, dict, str]:
    """(status, headers, body text) without following redirects."""
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, dict(response.headers), response.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read().decode("utf-8", "replace")


class Traffic:
    """~10 events/s for users ``bg-0``..``bg-9`` in a thread, until stopped; ``started``: when it began."""

    def __init__(self, settings):
        self.settings, self.stop = settings, threading.Event()
        self.started = time.monotonic()
        self.thread = threading.Thread(target=lambda: asyncio.run(self.run()), daemon=True)
        self.thread.start()

    async def run(self) -> None:
        producer = kafka_producer(self.settings, linger_ms=2)
        await producer.start()
        try:
            n = 0
            while not self.stop.is_set():
                e = event(f"bg-{n % 10}", CATALOG[(n * 7) % 36]["item_id"])
                await producer.send(self.settings.topic("events"), json.dumps(e).encode(), key=e["user_id"].encode())
                n += 1
                await asyncio.sleep(0.1)
        finally:
            await producer.stop()


@pytest.fixture(scope="module")
def worker(broker, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ui")
    settings = make_settings(broker, tmp / "data")
    asyncio.run(ensure_topics(settings))
    with WorkerProcess(settings, tmp / "w", items=write_items(tmp, CATALOG)) as w:
        wait_until(lambda: http(w.url("/readyz"))[0] == 200, timeout_s=90, message="the worker ready")
        traffic = Traffic(settings)
        w.traffic_started = traffic.started
        try:
            yield w
        finally:
            traffic.stop.set()
            traffic.thread.join(10)


@pytest.fixture(scope="module")
def page():
    with browser.chromium() as driver:
        yield driver


def lookup(w, user: str) -> dict | None:
    status, _, body = http(w.url(f"/recommendations/{user}"))
    return json.loads(body) if status == 200 else None


def shown_items(driver) -> list[str]:
    return [li.get_attribute("data-item-id") for li in driver.find_elements("css selector", "#list li.rec")]


def wait_js(driver, script: str, timeout_s: float = 15.0, message: str = "the page"):
    return wait_until(lambda: driver.execute_script(script), timeout_s=timeout_s, interval_s=0.05, message=message)


def test_user_page_shows_the_lookups_list_and_follows_the_stream_live(worker, page):
    """The page's list is the lookup's; an event for the user changes it within 1 s of the worker emitting
    the new list, without a reload, the new entries and the new event marked."""
    s = worker.settings
    produce(s, s.topic("events"), [event("alice", "space-00"), event("alice", "space-01")])
    before = wait_until(lambda: (r := lookup(worker, "alice")) and len(r["history"]) == 2 and r, message="alice's list")
    page.get(worker.url("/ui/users/alice"))
    wait_js(page, "return document.getElementById('live').textContent === 'live'", message="the live stream open")
    assert shown_items(page) == [it["item_id"] for it in before["items"]] and len(before["items"]) == 10
    assert page.find_element("id", "user-id").text == "alice"
    page.execute_script(CHANGED_AT)
    watched = before["items"][0]["item_id"]  # seen now: it leaves the list, so something new enters
    produce(s, s.topic("events"), [event("alice", watched)])
    change = wait_js(page, "return window.__changes.length && window.__changes[window.__changes.length - 1]",
                     message="the list to change")
    produced = float(change["produced"])
    assert change["t"] / 1000.0 - produced < 1.0, change  # the worker emitted -> the DOM changed
    assert page.execute_script("return window.__marker") == "not reloaded"
    after = lookup(worker, "alice")
    assert after["event_timestamp"] > before["event_timestamp"]
    wait_until(lambda: shown_items(page) == [it["item_id"] for it in after["items"]], timeout_s=5,
               message="the page's list to be the lookup's")
    first_event = page.find_element("css selector", "#events li")
    assert watched in first_event.text and "is-new" in first_event.get_attribute("class")
    new_items = {it["item_id"] for it in after["items"]} - {it["item_id"] for it in before["items"]}
    marked = {li.get_attribute("data-item-id") for li in page.find_elements("css selector", "#list li.is-new")}
    assert new_items and marked == new_items and watched not in shown_items(page)


def test_hostile_text_is_shown_as_text_and_runs_nothing(worker, page):
    """An item titled ``<img src=x onerror=alert(1)>`` and a user id of markup render as literal text: no
    element made of them, no alert; every answer carries the content-security policy."""
    from selenium.common.exceptions import NoAlertPresentException

    s = worker.settings
    user = "<script>alert(3)</script>"
    produce(s, s.topic("events"), [event(user, "hostile"), event(user, "space-03")])
    wait_until(lambda: lookup(worker, "%3Cscript%3Ealert(3)%3C%2Fscript%3E"), message="the hostile user's list")
    page.get(worker.url("/ui/items/hostile"))
    wait_js(page, "return document.getElementById('title').textContent.length > 0")
    assert page.find_element("id", "title").text == HOSTILE
    assert "<script>alert(2)</script>" in page.find_element("id", "text").text
    assert "<b>x</b>" in page.find_element("id", "facts").text
    page.get(worker.url("/ui/users/%3Cscript%3Ealert(3)%3C%2Fscript%3E"))
    wait_js(page, "return document.querySelectorAll('#events li').length >= 2", message="the hostile user's page")
    assert page.find_element("id", "user-id").text == user
    assert HOSTILE in page.find_element("id", "events").text
    assert page.find_elements("css selector", "main img, main script, [onerror]") == []
    with pytest.raises(NoAlertPresentException):
        page.switch_to.alert.text
    status, headers, _ = http(worker.url("/ui/items/hostile"))
    assert status == 200 and "script-src 'self'" in headers["Content-Security-Policy"]
    assert "unsafe-inline" not in headers["Content-Security-Policy"]


@pytest.mark.parametrize("path, status, title", [
    ("/ui/users/" + "u" * 10_240, 400, "Not a user id"),
    ("/ui/users/%00", 404, "Unknown user"),
    ("/ui/users/..%2F..%2Fhttp.py", 404, "Unknown user"),
    ("/ui/users/nobody-at-all", 404, "Unknown user"),
    ("/ui/items/..%2F..%2Fsettings.py", 404, "Unknown item"),
    ("/ui/static/..%2F..%2Fhttp.py", 404, "Not found"),
    ("/ui/api/users/" + "u" * 10_240, 400, "Not a user id"),
])
def test_bad_ids_get_a_clear_4xx_page(worker, page, path, status, title):
    got, headers, body = http(worker.url(path))
    assert got == status and "Traceback" not in body and "Content-Security-Policy" in headers
    if path.startswith("/ui/api/"):
        assert json.loads(body)["error"] == title
        return
    page.get(worker.url(path))
    assert page.find_element("id", "error-title").text == title
    assert page.find_element("id", "error-message").text


def test_erased_user_has_no_page_from_the_moment_the_erasure_is_applied(worker, page):
    s = worker.settings
    produce(s, s.topic("events"), [event("eve", "detective-00")])
    wait_until(lambda: lookup(worker, "eve"), message="eve's list")
    page.get(worker.url("/ui/users/eve"))
    wait_js(page, "return document.getElementById('live').textContent === 'live'", message="the live stream open")
    asyncio.run(produce_json(s, s.topic("events"), [delete_user_event("eve")], key_field="user_id", every_partition=True))
    wait_js(page, "return document.getElementById('live').textContent === 'erased'", message="the page to hear it")
    assert http(worker.url("/ui/users/eve"))[0] == 404  # the live page heard it: the erasure is applied
    assert http(worker.url("/ui/api/users/eve"))[0] == 404 and lookup(worker, "eve") is None
    assert shown_items(page) == [] and page.find_elements("css selector", "#events li") == []


def test_system_page_charts_have_points_after_ten_seconds_of_traffic(worker, page):
    time.sleep(max(0.0, 10.0 - (time.monotonic() - worker.traffic_started)))
    page.get(worker.url("/ui/system"))
    charts = ["events_per_s", "p50_ms", "p99_ms", "lag", "batch_mean", "ready"]
    script = ("return %s.map(k => { const p = document.querySelector('#svg-' + k + ' path.series'); "
              "return p ? Number(p.dataset.points) : 0; })" % json.dumps(charts))
    wait_until(lambda: min(page.execute_script(script)) >= 5, timeout_s=10, message="5 points in every chart")
    rate = page.find_element("id", "value-events_per_s").text
    assert float(rate.split()[0]) > 0, rate
    assert page.find_element("id", "ready").text == "ready"
    assert page.find_element("id", "model").text.startswith("untrained")
