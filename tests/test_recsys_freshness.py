"""Freshness policy: bounded slots for young items whose relevance passes a calibrated bar."""

import math

import numpy as np
import pytest
import torch

from stream_rec.recsys.freshness import FreshnessPolicy, fresh_rows, fresh_topk

# rows 1..8 old, 9..11 fresh; one user, log-probability-like scores
SCORES = torch.tensor([[-math.inf, 5.0, 4.0, 3.0, 2.0, 1.0, 0.5, 0.2, 0.1, 0.9, -0.5, -9.0]])
FRESH = np.array([False] * 9 + [True] * 3)


def test_off_is_the_plain_top_k():
    out = fresh_topk(SCORES, 4, [[]], FRESH, FreshnessPolicy(slots=0))
    assert out.rows == [[1, 2, 3, 4]] and out.inserted == [0]
    assert out.scores == [[5.0, 4.0, 3.0, 2.0]]


def test_slots_replace_the_bottom_items_only_when_the_bar_is_passed():
    # bar 0.02: row 9 (0.9) vs displaced row 4 (2.0): ratio e^-1.1 = 0.33 passes; row 10 (-0.5) vs row 3
    # (3.0): e^-3.5 = 0.03 passes; row 11 (-9) never.
    out = fresh_topk(SCORES, 4, [[]], FRESH, FreshnessPolicy(slots=3, min_ratio=0.02))
    assert out.rows == [[1, 2, 9, 10]] and out.inserted == [2]
    strict = fresh_topk(SCORES, 4, [[]], FRESH, FreshnessPolicy(slots=3, min_ratio=0.1))
    assert strict.rows == [[1, 2, 3, 9]] and strict.inserted == [1]
    explore = fresh_topk(SCORES, 4, [[]], FRESH, FreshnessPolicy(slots=3, min_ratio=0.0))
    assert explore.rows == [[1, 9, 10, 11]] and explore.inserted == [3]


def test_seen_items_stay_out_and_a_fresh_item_in_the_list_uses_a_slot():
    scores = SCORES.clone()
    scores[0, 10] = 4.5  # fresh row 10 makes the list on its own merit
    out = fresh_topk(scores, 4, [[1, 9]], FRESH, FreshnessPolicy(slots=1, min_ratio=0.0))
    assert out.rows == [[10, 2, 3, 4]] and out.inserted == [0]  # the one slot is taken; seen 1 and 9 never
    two = fresh_topk(scores, 4, [[1, 9]], FRESH, FreshnessPolicy(slots=2, min_ratio=0.0))
    assert two.rows == [[10, 2, 3, 11]] and two.inserted == [1]


def test_batches_and_ages():
    ages = np.array([0.0, np.inf, 10.0, 5e6, np.nan])
    assert fresh_rows(ages, 3600).tolist() == [False, False, True, False, False]  # row 0 is never fresh
    scores = torch.stack([SCORES[0], SCORES[0].flip(0)])
    scores[1, 0] = -math.inf
    out = fresh_topk(scores, 3, [[], []], FRESH, FreshnessPolicy(slots=1, min_ratio=0.5))
    assert out.inserted == [0, 0]  # user 0: the best fresh (0.9) is < half as likely as row 3 (3.0)
    assert out.rows[1][0] == 10  # user 1's scores favour the high rows: fresh 10 and 11 make it alone
    assert all(len(r) == 3 for r in out.rows)


def test_content_policy_ranks_fresh_items_by_text_similarity_to_the_recent_items():
    from stream_rec.recsys.freshness import content_relevance

    text = torch.zeros(12, 2)
    text[1:9] = torch.tensor([1.0, 0.0])  # the old items: all "about" the first axis
    text[9], text[10], text[11] = torch.tensor([0.0, 1.0]), torch.tensor([1.0, 0.1]), torch.tensor([1.0, 1.0])
    rel = content_relevance(text, [[1, 2], []], FRESH, profile_items=10)
    assert torch.isinf(rel[:, :9]).all() and torch.isinf(rel[1]).all()  # old rows; a user without history
    assert rel[0, 10] > rel[0, 11] > rel[0, 9] and abs(float(rel[0, 9])) < 1e-6
    # fresh row 9 makes the plain list (3, 4, 5, 9) on its model score and takes a slot; by content row 10
    # (cosine 0.995) comes next, then 11 (0.707), each displacing the lowest old item
    one = fresh_topk(SCORES, 4, [[1, 2]], FRESH, FreshnessPolicy(slots=2, by="content", min_similarity=0.8), rel[:1])
    assert one.rows == [[3, 4, 9, 10]] and one.inserted == [1] and one.added == [[10]]
    two = fresh_topk(SCORES, 4, [[1, 2]], FRESH, FreshnessPolicy(slots=3, by="content", min_similarity=0.5), rel[:1])
    assert two.rows == [[3, 9, 10, 11]] and two.inserted == [2] and two.added == [[10, 11]]
    with pytest.raises(ValueError):
        fresh_topk(SCORES, 4, [[]], FRESH, FreshnessPolicy(slots=1, by="content"))


def test_bad_policy_values():
    with pytest.raises(ValueError):
        FreshnessPolicy(slots=-1)
    with pytest.raises(ValueError):
        FreshnessPolicy(by="popularity")


# --- the policy in the worker's pipeline ------------------------------------------------------------
def test_pipeline_gives_new_items_slots_and_counts_them():
    import json
    import time

    from stream_rec import metrics
    from stream_rec.model.recommender import Recommender
    from stream_rec.pipeline import Incoming, PipelineConfig, process_batch, states_in
    from stream_rec.settings import Settings
    from stream_rec.worker.batch import record_metrics

    torch.manual_seed(0)
    model = Recommender.untrained([f"old-{n}" for n in range(30)], device="cpu")
    now = 1_750_000_000.0
    model.add_items(["new-young", "new-aged"], now=now - 60)
    model.added_at[model.row_of["new-aged"]] = now - 30 * 86400  # joined a month ago: no longer fresh
    young, aged = model.row_of["new-young"], model.row_of["new-aged"]
    with torch.no_grad():  # both new items the least likely of all: only the policy can list them
        model.model.item_bias[young] = model.model.item_bias[aged] = -50.0
    model.refresh_item_table()
    raw = json.dumps({"user_id": "u", "item_id": "old-1", "event_type": "view", "timestamp": now - 5}).encode()
    batch = [Incoming(raw, b"u", "events", 0, 0, time.time())]

    def listed(config):
        out = process_batch(batch, states_in({}), model, config, now=lambda: now)
        return [i["item_id"] for i in out.recommendations[0]["items"]], out

    plain, out = listed(PipelineConfig(top_k=5))
    assert "new-young" not in plain and out.fresh_slots == 0
    policy = FreshnessPolicy(slots=1, max_age_s=7 * 86400, min_ratio=0.0)  # explore: fill whatever the score
    items, out = listed(PipelineConfig(top_k=5, freshness=policy))
    assert items[:4] == plain[:4] and items[4] == "new-young" and "new-aged" not in items
    assert out.fresh_slots == 1
    strict, out = listed(PipelineConfig(top_k=5, freshness=FreshnessPolicy(slots=1, min_ratio=0.2)))
    assert strict == plain and out.fresh_slots == 0  # e^-50 of the displaced item's probability: below the bar
    with torch.no_grad():  # by content: the young item's text is the watched item's, the aged one's too
        model.model.text_vectors = torch.nn.functional.normalize(torch.randn(model.n_items + 1, 4), dim=1)
        model.model.text_vectors[young] = model.model.text_vectors[aged] = model.model.text_vectors[model.row_of["old-1"]]
    by_text, out = listed(PipelineConfig(top_k=5, freshness=FreshnessPolicy(slots=1, by="content", min_similarity=0.9)))
    assert by_text[:4] == plain[:4] and by_text[4] == "new-young" and out.fresh_slots == 1

    class Services:  # what record_metrics reads
        config = PipelineConfig.from_settings(Settings(fresh_slots=2, fresh_by="model", fresh_min_ratio=0.0))
        users_seen: set = set()

    assert Services.config.freshness == FreshnessPolicy(slots=2, min_ratio=0.0, by="model")
    before = metrics.FRESH_SLOTS._value.get()
    _, out = listed(Services.config)
    record_metrics(Services, 1, out, time.time())
    assert metrics.FRESH_SLOTS._value.get() == before + 1


def test_catalog_items_replayed_at_a_restart_keep_their_own_age(spine_settings):
    """worker/catalog.py: the catalog topic is read again from the beginning at every start; an item counts
    as new from its record's own time (its Kafka timestamp), so a restarted worker does not make last
    week's items fresh again, and a re-published record does not make an item newer."""
    import asyncio
    import json
    import time
    import types

    from stream_rec.io.kafka import kafka_producer, start_client
    from stream_rec.model.recommender import Recommender
    from stream_rec.worker.catalog import CatalogVectors, LiveCatalog, catalog_loop

    settings, now = spine_settings, time.time()
    topic = settings.topic(settings.catalog_topic)
    published = [("old-1", now - 8 * 86400), ("last-week", now - 7 * 86400), ("today", now - 5),
                 ("last-week", now - 86400)]  # last-week re-published yesterday

    async def publish() -> None:
        producer = await start_client(kafka_producer(settings), settings)
        try:
            for item_id, at in published:
                await producer.send_and_wait(topic, json.dumps({"item_id": item_id}).encode(), key=item_id.encode(),
                                             timestamp_ms=int(at * 1000))
        finally:
            await producer.stop()

    async def worker_start() -> Recommender:  # a worker starting now: its trained model, then the whole topic
        model = Recommender.untrained([f"old-{n}" for n in range(5)], device="cpu")
        catalog = LiveCatalog(settings, types.SimpleNamespace(current=model), CatalogVectors(settings))
        follow = asyncio.ensure_future(catalog_loop(catalog, settings, poll_ms=100))
        try:
            deadline = time.monotonic() + 30
            while not {"last-week", "today"} <= set(model.row_of) and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
        finally:
            follow.cancel()
        return model

    asyncio.run(publish())
    for restart in range(2):
        model = asyncio.run(worker_start())
        ages = model.item_ages(now)
        assert ages[model.row_of["last-week"]] == pytest.approx(7 * 86400, abs=2), restart
        assert ages[model.row_of["today"]] == pytest.approx(5, abs=2), restart
        assert ages[model.row_of["old-1"]] == float("inf")  # trained: never new
