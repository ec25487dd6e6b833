"""Issue 8 live in the worker: stream_rec/recsys/enricher.py through process_batch, and one real-broker test."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from recsys_fixtures import theme_world
from stream_rec.io.data import catalog_text
from stream_rec.recsys.enricher import Enricher
from stream_rec.recsys.explain import title_of_text
from stream_rec.recsys.interests import interest_labels
from stream_rec.model.recommender import Recommender
from stream_rec.pipeline import Incoming, PipelineConfig, process_batch, read_state, states_in

T0 = 1_700_000_000.0


@pytest.fixture(scope="module")
def world():
    torch.set_num_threads(1)
    catalog, vecs, row_of, theme_of_row = theme_world()
    rec = Recommender.untrained([it["item_id"] for it in catalog], vecs[1:], device="cpu")
    rec.item_texts = [catalog_text(it) for it in catalog]
    theme_of = {it["item_id"]: it["attributes"]["genre"] for it in catalog}
    return rec, theme_of


def events_of(user: str, items: list[str], start: int = 0, types: dict[int, str] | None = None, **extra) -> list[dict]:
    return [{"user_id": user, "item_id": item, "event_type": (types or {}).get(n, "view"),
             "timestamp": T0 + 60 * (start + n), **extra} for n, item in enumerate(items)]


def batch_of(events: list[dict], first_offset: int = 0) -> list[Incoming]:
    return [Incoming(json.dumps(e).encode(), e["user_id"].encode(), "events", 0, first_offset + n, 0.0)
            for n, e in enumerate(events)]


def by_user(result) -> dict[str, dict]:
    return {r["user_id"]: r for r in result.recommendations}


def test_helpers_read_titles_and_labels():
    assert title_of_text("Toy Story (1995). Genres: Animation, Comedy.", "1") == "Toy Story (1995)"
    assert title_of_text("", "item-7") == "item-7"
    assert interest_labels("Toy Story (1995). Genres: Animation, Comedy.") == ["Animation", "Comedy"]
    assert interest_labels("Star trip. ships. genre: space, episode: 2") == ["space"]


def test_default_enricher_keeps_the_plain_lists_and_adds_reasons_and_interests(world):
    rec, theme_of = world
    msgs = batch_of(events_of("u1", ["space-00", "space-01", "space-02"]) + events_of("u2", ["cooking-00"]))
    plain = by_user(process_batch(msgs, states_in({}), rec, PipelineConfig()))
    rich = by_user(process_batch(msgs, states_in({}), rec, PipelineConfig(), enricher=Enricher()))
    for user in ("u1", "u2"):
        strip = [{"item_id": i["item_id"], "score": i["score"]} for i in rich[user]["items"]]
        assert strip == plain[user]["items"]  # lambda=1, no negatives: parity, item for item
        assert "reason" not in plain[user]["items"][0] and "interests" not in plain[user]
    titles = {title_of_text(t, i) for i, t in zip(rec.item_ids, rec.item_texts)}
    u1_titles = {title_of_text(rec.item_texts[rec.row_of[i] - 1], i) for i in ("space-00", "space-01", "space-02")}
    for item in rich["u1"]["items"]:
        assert item["reason"].startswith("because you watched ")
        assert item["reason"].removeprefix("because you watched ") in u1_titles  # names a history item
    assert u1_titles <= titles
    assert rich["u1"]["interests"][0] == "space"
    assert rich["u2"]["interests"][0] == "cooking"


def test_dislike_is_not_stepped_and_pushes_the_item_and_its_theme_down(world):
    rec, theme_of = world
    views = ["space-00", "cooking-01", "garden-02"] if "garden-02" in rec.row_of else ["space-00", "cooking-01"]
    plain = by_user(process_batch(batch_of(events_of("a", views)), states_in({}), rec, PipelineConfig(),
                                  enricher=Enricher()))["a"]
    target = plain["items"][0]["item_id"]
    theme = theme_of[target]
    enricher = Enricher(negative_strength=5.0)
    events = events_of("b", views) + events_of("b", [target], start=len(views), types={0: "dislike"})
    disliked = by_user(process_batch(batch_of(events), states_in({}), rec, PipelineConfig(), enricher=enricher))["b"]
    ids = [i["item_id"] for i in disliked["items"]]
    assert target not in ids and target not in disliked["history"]  # excluded, and not "watched"
    assert enricher.negative_items("b") == [target]
    same_theme = lambda items: sum(theme_of[i["item_id"]] == theme for i in items)  # noqa: E731
    assert same_theme(disliked["items"]) < same_theme(plain["items"])
    # the GRU never saw the dislike: items of other themes keep the plain list's scores
    other = {i["item_id"]: i["score"] for i in plain["items"] if theme_of[i["item_id"]] != theme}
    for item in disliked["items"]:
        if item["item_id"] in other:
            assert item["score"] == pytest.approx(other[item["item_id"]], abs=1e-5)
    # a low rating counts as negative, a high one does not
    low = events_of("c", views) + [{**events_of("c", [target], start=9)[0], "event_type": "rate", "value": 1}]
    high = events_of("d", views) + [{**events_of("d", [target], start=9)[0], "event_type": "rate", "value": 5}]
    out = by_user(process_batch(batch_of(low + high), states_in({}), rec, PipelineConfig(), enricher=enricher))
    assert target not in out["c"]["history"] and target in out["d"]["history"]


def test_delete_user_forgets_the_enrichers_memory_of_the_user(world):
    rec, _ = world
    enricher = Enricher()
    events = events_of("e", ["space-00", "space-01"], types={1: "dislike"})
    process_batch(batch_of(events), states_in({}), rec, PipelineConfig(), enricher=enricher)
    assert enricher.negative_items("e") == ["space-01"] and "e" in enricher.monitor.last_lists
    forget = [{"user_id": "e", "event_type": "delete_user", "timestamp": T0 + 600}]
    out = process_batch(batch_of(forget, 10), states_in({}), rec, PipelineConfig(), enricher=enricher)
    assert out.deleted == {"e": 0}
    assert enricher.negative_items("e") == [] and "e" not in enricher.monitor.last_lists


def test_a_dislike_survives_a_restart_through_the_state(world):
    """The negatives live in the user's state: a later batch read from the stored bytes alone, with a
    fresh Enricher (a restarted or rebalanced worker), still keeps the disliked item and its theme down."""

    rec, theme_of = world
    views = ["space-00", "cooking-01"]
    plain = by_user(process_batch(batch_of(events_of("a", views)), states_in({}), rec, PipelineConfig(),
                                  enricher=Enricher()))["a"]
    target = plain["items"][0]["item_id"]
    store: dict[str, bytes] = {}
    first = events_of("r", views) + events_of("r", [target], start=2, types={0: "dislike"})
    first += events_of("s", views)  # control: the same views, no dislike
    out = process_batch(batch_of(first), states_in(store), rec, PipelineConfig(), enricher=Enricher(negative_strength=5.0))
    store.update(out.states)
    assert read_state(store["r"], rec).negatives == [target] and read_state(store["s"], rec).negatives == []
    assert target not in read_state(store["r"], rec).seen_items()

    theme = theme_of[target]
    mates = [i for i in rec.item_ids if theme_of[i] == theme and i != target and i not in views]
    restarted = Enricher(negative_strength=5.0)  # nothing in memory
    # both watch another item of the disliked item's theme: the control's list leans to that theme
    later = events_of("r", mates[:1], start=3) + events_of("s", mates[:1], start=3)
    out = process_batch(batch_of(later, 100), states_in(store), rec, PipelineConfig(), enricher=restarted)
    store.update(out.states)
    r, s = by_user(out)["r"], by_user(out)["s"]
    assert r["history"] == s["history"]  # same positives, so the same GRU state
    assert target in [i["item_id"] for i in s["items"]]
    assert target not in [i["item_id"] for i in r["items"]]
    same_theme = lambda items: sum(theme_of[i["item_id"]] == theme for i in items)  # noqa: E731
    assert same_theme(r["items"]) < same_theme(s["items"])
    assert read_state(store["r"], rec).negatives == [target] and restarted.negative_items("r") == [target]

    # a second dislike appends (newest last); delete_user erases them with the rest of the state
    more = events_of("r", mates[1:2], start=4, types={0: "dislike"})
    out = process_batch(batch_of(more, 200), states_in(store), rec, PipelineConfig(), enricher=restarted)
    store.update(out.states)
    assert read_state(store["r"], rec).negatives == [target, mates[1]]
    forget = [{"user_id": "r", "event_type": "delete_user", "timestamp": T0 + 600}]
    forget += events_of("r", ["space-00"], start=11)
    out = process_batch(batch_of(forget, 300), states_in(store), rec, PipelineConfig(), enricher=Enricher())
    assert read_state(out.states["r"], rec).negatives == []


def test_negatives_kept_per_user_are_bounded_newest_last(world):
    rec, _ = world
    items = ["space-00", "space-01", "space-02", "space-01"]  # space-01 twice: moves to the end
    out = process_batch(batch_of(events_of("n", items, types={n: "skip" for n in range(4)})), states_in({}), rec,
                        PipelineConfig(), enricher=Enricher(negatives_per_user=2))
    assert read_state(out.states["n"], rec).negatives == ["space-02", "space-01"]


def test_a_later_positive_event_takes_an_item_out_of_the_negatives(world):
    rec, _ = world
    events = events_of("p", ["space-00", "space-01", "space-01"], types={0: "dislike", 1: "dislike"})
    out = process_batch(batch_of(events), states_in({}), rec, PipelineConfig(), enricher=Enricher())
    assert read_state(out.states["p"], rec).negatives == ["space-00"]  # space-01 was viewed after its dislike


def mean_pairwise_cosine(rec, items: list[dict]) -> float:
    v = rec.model.text_vectors.detach().cpu().numpy()[rec.rows_for([i["item_id"] for i in items])]
    v = v / np.linalg.norm(v, axis=1, keepdims=True)
    sim = v @ v.T
    n = len(v)
    return float((sim.sum() - np.trace(sim)) / (n * (n - 1)))


def test_context_mmr_lambda_diversifies_that_request_only(world):
    """Two users with identical histories; one asks for lambda 0.3 in its event's context, the worker's
    lambda is 1.0: that user's list is more diverse and differs, the other keeps the plain list."""
    rec, _ = world
    history = ["space-00", "space-01", "cooking-00"]
    events = events_of("p", history[:-1]) + events_of("p", history[-1:], start=2, context={"mmr_lambda": 0.3})
    events += events_of("q", history)
    out = process_batch(batch_of(events), states_in({}), rec, PipelineConfig(), enricher=Enricher())
    assert not out.dlq
    p, q = by_user(out)["p"], by_user(out)["q"]
    plain = by_user(process_batch(batch_of(events_of("q", history)), states_in({}), rec, PipelineConfig()))["q"]
    assert [i["item_id"] for i in q["items"]] == [i["item_id"] for i in plain["items"]]
    assert [i["item_id"] for i in p["items"]] != [i["item_id"] for i in q["items"]]
    assert p["items"][0]["item_id"] == q["items"][0]["item_id"]  # MMR keeps the best item first
    assert mean_pairwise_cosine(rec, p["items"]) < mean_pairwise_cosine(rec, q["items"]) - 0.05
    # the other way round: a worker lambda of 0.2, and a request asking for pure relevance
    relevance = events_of("q", history[:-1]) + events_of("q", history[-1:], start=2, context={"mmr_lambda": 1})
    back = by_user(process_batch(batch_of(relevance), states_in({}), rec, PipelineConfig(),
                                 enricher=Enricher(mmr_lambda=0.2)))["q"]
    assert [i["item_id"] for i in back["items"]] == [i["item_id"] for i in plain["items"]]


def test_invalid_context_mmr_lambda_goes_to_the_dlq(world):
    rec, _ = world
    bad = [events_of("x", ["space-00"], context={"mmr_lambda": 1.5})[0],
           events_of("y", ["space-00"], context={"mmr_lambda": "diverse"})[0],
           events_of("z", ["space-00"], context={"mmr_lambda": None})[0]]  # null = not given
    out = process_batch(batch_of(bad), states_in({}), rec, PipelineConfig(), enricher=Enricher())
    assert [d["offset"] for d in out.dlq] == [0, 1]
    assert all(d["reason"] == "wrong_type" and "context.mmr_lambda" in d["detail"] for d in out.dlq)
    assert out.invalid["wrong_type"] == 2
    assert [r["user_id"] for r in out.recommendations] == ["z"]


def test_mmr_below_one_changes_the_list_toward_more_themes(world):
    rec, theme_of = world
    msgs = batch_of(events_of("u", ["space-00", "space-01", "cooking-00"]))
    plain = by_user(process_batch(msgs, states_in({}), rec, PipelineConfig(), enricher=Enricher()))["u"]
    diverse = by_user(process_batch(msgs, states_in({}), rec, PipelineConfig(),
                                    enricher=Enricher(mmr_lambda=0.2)))["u"]
    assert [i["item_id"] for i in diverse["items"]] != [i["item_id"] for i in plain["items"]]
    themes = lambda r: len({theme_of[i["item_id"]] for i in r["items"][:5]})  # noqa: E731
    assert themes(diverse) >= themes(plain)
    assert all("reason" in i for i in diverse["items"])
    with pytest.raises(ValueError):
        Enricher(mmr_lambda=1.5)


def test_exposure_cap_spreads_recommendations(world):
    rec, _ = world
    events = [e for u in range(6) for e in events_of(f"u{u}", ["space-00"])]
    capped = Enricher(exposure_cap=1, exposure_window=100)
    lists = [tuple(i["item_id"] for i in r["items"])
             for r in process_batch(batch_of(events), states_in({}), rec, PipelineConfig(), enricher=capped).recommendations]
    assert len(set(lists)) == 1  # one batch: counts are taken before the batch
    again = [e for u in range(6, 8) for e in events_of(f"u{u}", ["space-00"])]
    later = process_batch(batch_of(again), states_in({}), rec, PipelineConfig(), enricher=capped).recommendations
    assert tuple(i["item_id"] for i in later[0]["items"])[:3] != lists[0][:3]


def test_online_hits_and_drift_counters_move(world):
    from stream_rec import metrics

    rec, _ = world
    before = (metrics.ONLINE_SCORED._value.get(), metrics.ONLINE_HIT._value.get())
    enricher = Enricher(drift_delta=0.5)
    store: dict[str, bytes] = {}
    offset = 0
    first = process_batch(batch_of(events_of("u", ["space-00"])), states_in(store), rec, PipelineConfig(), enricher=enricher)
    store.update(first.states)
    offset += 1
    recommended = first.recommendations[0]["items"][0]["item_id"]
    second = process_batch(batch_of(events_of("u", [recommended], start=1), offset), states_in(store), rec, PipelineConfig(),
                           enricher=enricher)
    store.update(second.states)
    assert enricher.monitor.n_scored == 1 and enricher.monitor.n_hits == 1
    assert metrics.ONLINE_SCORED._value.get() == before[0] + 1 and metrics.ONLINE_HIT._value.get() == before[1] + 1
    # the stream turns to items never recommended: ADWIN sees the hit rate fall and raises an alarm
    drift_before = metrics.DRIFT_DETECTED._value.get()
    users = [f"h{n}" for n in range(150)]
    for round_ in range(2):
        hits = []
        for u in users:
            last = enricher.monitor.last_lists.get(u)
            hits.append(events_of(u, [sorted(last)[0] if last else "space-00"], start=round_)[0])
        res = process_batch(batch_of(hits, 1000 * (round_ + 1)), states_in(store), rec, PipelineConfig(), enricher=enricher)
        store.update(res.states)
    for round_ in range(2, 8):
        misses = []
        for u in users:
            last = enricher.monitor.last_lists.get(u) or frozenset()
            miss = next(i for i in rec.item_ids if i not in last)
            misses.append(events_of(u, [miss], start=round_)[0])
        res = process_batch(batch_of(misses, 1000 * (round_ + 1)), states_in(store), rec, PipelineConfig(), enricher=enricher)
        store.update(res.states)
    assert enricher.monitor.alarms, "ADWIN should flag the drop from ~100% to 0% hits"
    assert metrics.DRIFT_DETECTED._value.get() > drift_before


# --- the real worker on the embedded broker ------------------------------------------------------------
@pytest.mark.timeout(240)
def test_worker_recs_carry_reasons_and_a_dislike_pushes_the_theme_down(spine_settings, tmp_path):
    """Two users watch the same three space episodes; B then dislikes the next one. The worker's records
    carry a reason per item and interests; B's list leaves the disliked item out and holds fewer space
    items than A's (radius 0.5: the whole theme counts as neighbours in this catalog's text space)."""
    import dataclasses

    from conftest import WorkerProcess, consume, produce
    from stream_rec_devtools.demo_model import train_demo_model

    torch.set_num_threads(1)
    model_dir = tmp_path / "model"
    train_demo_model(model_dir, use_text=True)
    settings = dataclasses.replace(spine_settings, negative_radius=0.5)
    events = [e for u in ("A", "B") for e in events_of(u, ["space-00", "space-01", "space-02"])]
    events += events_of("B", ["space-03"], start=3, types={0: "dislike"})
    last_ts = {"A": events[2]["timestamp"], "B": events[-1]["timestamp"]}

    def complete(records):
        latest = {r["value"]["user_id"]: r["value"] for r in records}
        return all(u in latest and latest[u]["event_timestamp"] == ts for u, ts in last_ts.items())

    with WorkerProcess(settings, tmp_path, extra_args=["--model", str(model_dir)]) as worker:
        produce(settings, settings.topic("events"), events)
        records = consume(settings, settings.topic("recommendations"), timeout_s=120, until=complete)
        assert worker.alive(), worker.log_tail()
    assert complete(records), (records, worker.log_tail())
    latest = {r["value"]["user_id"]: r["value"] for r in records}
    a, b = latest["A"], latest["B"]
    for rec in (a, b):
        assert all(i["reason"].startswith("because you watched ") for i in rec["items"]), rec["items"]
        assert rec["interests"][0] == "space"
    b_ids = [i["item_id"] for i in b["items"]]
    assert "space-03" not in b_ids and "space-03" not in b["history"]
    space = lambda rec: sum(i["item_id"].startswith("space") for i in rec["items"])  # noqa: E731
    assert space(b) < space(a), (a["items"], b["items"])
