"""The pure parts of the worker's pages, without Kafka or a browser: the live pages' bounded queues
(worker/live.py), the item counts of the last hour, the catalogue index and its search, the id checks,
the views (worker/views.py) and the metrics sampler (worker/sampler.py)."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
import torch

from stream_rec.model.recommender import Recommender
from stream_rec.pipeline import Incoming, PipelineConfig, current_record, process_batch, read_state, states_in
from stream_rec.settings import Settings
from stream_rec_devtools.synthetic import make_catalog
from stream_rec.worker.live import ERASED, ItemExposure, ItemIndex, UiState, Watchers
from stream_rec.worker.sampler import MetricsSampler, Reading
from stream_rec.worker.views import id_problem, item_view, path_segment, user_view

torch.set_num_threads(1)
CATALOG = make_catalog(items_per_theme=4, themes=["space", "cooking"])


def record(user: str, items: list[str], reason: str = "because") -> dict:
    return {"user_id": user, "items": [{"item_id": i, "score": 1.0, "reason": reason} for i in items]}


# --- live pages --------------------------------------------------------------------------------------------
def test_nobody_watching_keeps_nothing_per_user():
    ui = UiState()
    ui.on_batch([record("a", ["x"]), record("b", ["y"])], erased=[])
    assert ui.watchers.by_user == {} and len(ui.watchers) == 0
    assert ui.recent_users() == ["b", "a"]


def test_a_watched_user_gets_the_newest_lists_and_a_slow_page_drops_the_oldest():
    watchers = Watchers(max_pages=2)
    sub = watchers.subscribe("a")
    for n in range(10):  # the page does not read: only the last few wait
        watchers.publish([record("a", [f"i{n}"]), record("b", ["other"])])
    assert [r["items"][0]["item_id"] for r in sub.take()] == ["i6", "i7", "i8", "i9"] and sub.dropped == 6
    assert watchers.subscribe("a") is not None and watchers.subscribe("c") is None  # at most 2 pages
    watchers.publish([], erased=["a"])
    watchers.publish([record("a", ["after"])])  # nothing queued after the end, and the end is never dropped
    assert sub.ended == ERASED and sub.take() == []
    watchers.unsubscribe(sub)
    watchers.unsubscribe(sub)
    assert len(watchers) == 1 and set(watchers.by_user) == {"a"}


def test_a_live_page_wakes_on_an_update_and_times_out_without_one():
    async def go():
        watchers = Watchers()
        sub = watchers.subscribe("a")
        assert await sub.wait(0.05) is False
        asyncio.get_running_loop().call_later(0.01, watchers.publish, [record("a", ["x"])])
        assert await sub.wait(2.0) is True and sub.take()[0]["user_id"] == "a"
        watchers.close_all("moved")
        assert await sub.wait(2.0) is True and sub.ended == "moved"

    asyncio.run(go())


def test_item_exposure_counts_the_last_hour_with_reasons_and_stays_bounded():
    now = [1_000_000.0]
    exposure = ItemExposure(clock=lambda: now[0])
    exposure.add([record("a", ["x", "y"], "because you watched A")])
    exposure.add([record("b", ["x"], "popular right now")])
    exposure.add([record("c", ["x"], "because you watched A")])
    assert exposure.of("x") == (3, [("because you watched A", 2), ("popular right now", 1)])
    assert exposure.top(1) == [("x", 3)] and exposure.of("nothing") == (0, [])
    exposure.add([record(f"u{n}", ["z"], f"reason {n}") for n in range(8)])  # reasons of every 4th list of a batch
    assert exposure.of("z") == (8, [("reason 0", 1), ("reason 4", 1)])
    now[0] += 30 * 60
    exposure.add([record("d", ["y"])])
    assert exposure.of("y")[0] == 2
    now[0] += 45 * 60  # the first bucket is more than an hour old now
    assert exposure.of("x") == (0, []) and exposure.of("y")[0] == 1
    exposure.MAX_REASON_KEYS = 3
    exposure.add([record("e", ["p", "q", "r", "s"])])  # a bucket's reasons admit new pairs up to the cap...
    assert not exposure.is_saturated
    exposure.add([record("f", ["t", "p"])])  # ... then only count the pairs they hold; the items stay exact
    assert exposure.of("t") == (1, []) and exposure.of("p") == (2, [("because", 2)]) and exposure.is_saturated
    assert len(exposure._buckets[-1][2]) == 4 and ItemExposure.REASON_SAMPLE == 4


def test_item_index_keeps_catalogue_titles_and_finds_items_by_id_or_words():
    index = ItemIndex(clock=lambda: 5.0)
    index.add(CATALOG + [{"item_id": "long", "title": "t" * 1000, "text": "x" * 10_000, "attributes": [1]}])
    assert index.title("space-01") == CATALOG[1]["title"] and index.items["space-01"].first_seen == 5.0
    assert len(index.items["long"].title) == ItemIndex.MAX_TITLE and len(index.items["long"].text) == ItemIndex.MAX_TEXT
    assert index.items["long"].attributes == {}
    assert index.search("space-02")[0] == "space-02"
    assert set(index.search("SPACE")) == {c["item_id"] for c in CATALOG if c["item_id"].startswith("space")}
    words = CATALOG[5]["title"].lower() + " cooking"
    assert CATALOG[5]["item_id"] in index.search(words) and index.search("space cooking-01") == []
    assert index.search("") == [] and len(index.search("e", limit=3)) == 3


def test_ids_from_urls_are_checked_like_event_ids_and_quoted_as_one_segment():
    assert id_problem("u" * 10_240).startswith("an id has at most 256 characters")
    assert id_problem("  ") and id_problem("\udc00") and id_problem("u1") is None and id_problem("\x00") is None
    assert path_segment("..") == "%2E%2E" and path_segment("a/b c") == "a%2Fb%20c" and path_segment("é") == "%C3%A9"


# --- views -------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def model():
    return Recommender.untrained([c["item_id"] for c in CATALOG], device="cpu")


def test_user_view_is_the_lookup_list_with_titles_events_and_a_profile(model):
    raws = [json.dumps({"user_id": "a", "item_id": i, "event_type": "view", "timestamp": 1_750_000_000.0 + n}).encode()
            for n, i in enumerate(["space-00", "space-01", "cooking-02"])]
    batch = [Incoming(r, b"a", "events", 0, n, time.time()) for n, r in enumerate(raws)]
    out = process_batch(batch, states_in({}), model, PipelineConfig(top_k=3))
    index = ItemIndex()
    index.add(CATALOG)
    rec = current_record("a", out.states["a"], model, PipelineConfig(top_k=3))
    view = user_view("a", rec, read_state(out.states["a"], model), index, model=model, partition=1,
                     source="lookup")
    assert [it["item_id"] for it in view["items"]] == [it["item_id"] for it in rec["items"]]
    assert all(it["title"] == index.title(it["item_id"]) for it in view["items"])
    assert [e["item_id"] for e in view["events"]] == ["cooking-02", "space-01", "space-00"]  # newest first
    assert view["events"][0]["timestamp"] == 1_750_000_002.0 and view["n_events"] == 3
    assert view["history_mix"] == [{"label": "genre: space", "share": 0.6667}, {"label": "genre: cooking", "share": 0.3333}]
    assert view["interests"] == []
    state = read_state(out.states["a"], model)
    with_interests = user_view("a", {**rec, "interests": ["space", "cooking"]}, state, index,
                               partition=1, source="stream")
    assert with_interests["interests"] == ["space", "cooking"]


def test_item_view_says_when_an_item_joined_and_whether_it_is_fresh(model):
    index, exposure = ItemIndex(), ItemExposure()
    index.add(CATALOG + [{"item_id": "new-1", "title": "New", "text": "brand new"}])
    model.add_items(["new-1"], now=1000.0)
    exposure.add([record("a", ["new-1"], "popular right now")])
    fresh = item_view("new-1", model, index, exposure, fresh_max_age_s=600, fresh_slots=2, now=1300.0)
    assert fresh["fresh"] and fresh["joined_at"] == 1000.0 and fresh["age_s"] == 300.0 and not fresh["trained_catalogue"]
    assert fresh["shown_last_hour"] == 1 and fresh["reasons"] == [{"reason": "popular right now", "share": 1.0}]
    assert not item_view("new-1", model, index, exposure, fresh_max_age_s=600, fresh_slots=2, now=1700.0)["fresh"]
    old = item_view("space-00", model, index, exposure, fresh_max_age_s=600, fresh_slots=2)
    assert old["trained_catalogue"] and not old["fresh"] and old["title"] == CATALOG[0]["title"]
    assert item_view("nope", model, index, exposure, fresh_max_age_s=600, fresh_slots=2) is None


# --- the system page's sampler --------------------------------------------------------------------------
def test_sampler_computes_rates_quantiles_and_readiness_and_keeps_only_the_last_minutes():
    ready = [True]

    def read(now: float) -> Reading:  # 50 events/s, all of them in the 10-20 ms bucket, batches of 5
        n = 50.0 * (now - 1000.0)
        return Reading(now, n, n / 2, [(0.01, 0.0), (0.02, n), (float("inf"), n)], n, n / 5, 7.0)

    sampler = MetricsSampler(lambda: ready[0], keep_s=20, window_s=5, read=read)
    for s in range(30):
        ready[0] = s < 25
        sampler.tick(1000.0 + s)
    series = sampler.series()
    assert len(series["t"]) == 20 and series["t"][-1] == 1029.0  # bounded: the last keep_s seconds
    assert series["events_per_s"][-1] == pytest.approx(50.0) and series["recs_per_s"][-1] == pytest.approx(25.0)
    assert 10.0 < series["p50_ms"][-1] < 20.0 and series["p99_ms"][-1] == pytest.approx(19.9)
    assert series["batch_mean"][-1] == pytest.approx(5.0) and series["lag"][-1] == 7.0
    assert series["ready"][-6:] == [1, 0, 0, 0, 0, 0]


def test_pages_off_keep_nothing():
    from stream_rec.worker.services import WorkerServices

    assert WorkerServices(Settings(ui=False, device="cpu")).ui is None
    assert WorkerServices(Settings(metrics_port=0, device="cpu")).ui is None  # no listener, no pages
    assert WorkerServices(Settings(device="cpu")).ui is not None
