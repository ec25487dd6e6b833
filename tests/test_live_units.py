"""Unit tests of the worker's live-model pieces without Kafka: encoding queue batching, prequential scoring,
model resolution and re-warming."""

from __future__ import annotations

import asyncio
import os
import time

import numpy as np
import pytest

from stream_rec.worker.encoding import EncodingError, EncodingQueue
from stream_rec_devtools.prequential import PrequentialScorer, rank_metrics


class CountingEncoder:
    """Deterministic fake encoder: 4-d vector from the text's characters; records batch sizes."""

    def __init__(self, delay_s: float = 0.0):
        self.batches: list[list[str]] = []
        self.delay_s = delay_s

    def __call__(self, texts: list[str]) -> np.ndarray:
        self.batches.append(list(texts))
        time.sleep(self.delay_s)
        return np.array([[len(t), sum(map(ord, t)) % 97, t.count("a"), 1.0] for t in texts], dtype=np.float32)


def test_queue_gathers_concurrent_requests_into_batches():
    enc = CountingEncoder(delay_s=0.01)

    async def main():
        q = EncodingQueue(enc, max_batch=8, max_wait_ms=20)
        texts = [f"text number {i}" for i in range(20)]
        vecs = await asyncio.gather(*(q.encode(t) for t in texts))
        again = await q.encode("text number 3")  # LRU hit: no new batch
        await q.close()
        return texts, vecs, again

    texts, vecs, again = asyncio.run(main())
    assert all(len(b) <= 8 for b in enc.batches)
    assert len(enc.batches) <= 4  # 20 texts in batches of <= 8, not 20 single calls
    np.testing.assert_array_equal(np.stack(vecs), enc(texts))
    np.testing.assert_array_equal(again, vecs[3])


def test_queue_dedupes_and_keeps_loop_responsive():
    enc = CountingEncoder(delay_s=0.05)

    async def main():
        q = EncodingQueue(enc, max_batch=16, max_wait_ms=5)
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                await asyncio.sleep(0.005)
                ticks += 1

        t = asyncio.create_task(ticker())
        vecs = await q.encode_many(["same"] * 5 + ["other"])
        t.cancel()
        await q.close()
        return vecs, ticks

    vecs, ticks = asyncio.run(main())
    assert vecs.shape == (6, 4)
    assert sum(len(b) for b in enc.batches) == 2  # "same" encoded once
    assert ticks >= 3  # the event loop kept running while the encoder worked in its thread


def test_queue_reports_encoder_failure_and_survives():
    calls = []

    def flaky(texts):
        calls.append(texts)
        if len(calls) == 1:
            raise RuntimeError("boom")
        return np.ones((len(texts), 2), dtype=np.float32)

    async def main():
        q = EncodingQueue(flaky, max_batch=4, max_wait_ms=1)
        with pytest.raises(EncodingError):
            await q.encode("a")
        ok = await q.encode("b")
        await q.close()
        return ok

    assert asyncio.run(main()).tolist() == [1.0, 1.0]


def test_rank_metrics_and_scorer():
    assert rank_metrics(["a", "b", "c"], "a") == (1.0, 1.0)
    hr, ndcg = rank_metrics(["a", "b", "c"], "c")
    assert hr == 1.0 and abs(ndcg - 0.5) < 1e-9
    assert rank_metrics(["a"], "z") == (0.0, 0.0)
    seq = [("i1", 1.0), ("i2", 2.0), ("i3", 2.0)]
    sc = PrequentialScorer({"u": seq}, test_index={"u": 2})
    rec = lambda hist, ts, items: {"user_id": "u", "history": hist, "event_timestamp": ts,
                                   "items": [{"item_id": i} for i in items]}
    sc.add(rec(["i1"], 1.0, ["i2"]), received_at=1.0, sent_at={("u", 0): 0.99})
    sc.add(rec(["i1", "i2"], 2.0, ["x", "i3"]), received_at=2.0)
    sc.add(rec(["i1", "i2", "i3"], 2.0, []), received_at=3.0)  # after the last event
    sc.add({"user_id": "nobody", "history": ["i1"], "items": []}, received_at=3.0)
    s = sc.summary()
    assert s["all"]["n"] == 2 and s["all"]["HR@10"] == 1.0
    assert s["test"]["n"] == 1 and abs(s["test"]["NDCG@10"] - 1 / np.log2(3)) < 1e-9
    assert s["coverage"] == 1.0 and sc.unmatched == 1 and sc.last_event == 1 and sc.done("u")
    assert s["latency_ms"]["n"] == 1


# --- model resolution, hot reload, re-warming ----------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    """Two small ID-only models of the synthetic world (different hidden sizes), trained in ~1 s each."""
    import torch

    from stream_rec_devtools.demo_model import train_demo_model

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("models")
    a = train_demo_model(root / "a", use_text=False, train={"epochs": 3}, version_suffix="a")
    b = train_demo_model(root / "b", model={"hidden": 16}, use_text=False, train={"epochs": 3}, version_suffix="b")
    return root, a, b


def test_newest_model_dir_skips_broken_and_incomplete(tiny_models, tmp_path):
    import shutil

    from stream_rec.worker.models import ModelResolutionError, candidate_dirs, load_newest, newest_model_dir

    root, a, b = tiny_models
    models = tmp_path / "models"
    shutil.copytree(root / "a", models / "1-old")
    os.utime(models / "1-old" / "VERSION", (time.time() - 100, time.time() - 100))
    for f in (models / "1-old").iterdir():
        os.utime(f, (time.time() - 100, time.time() - 100))
    shutil.copytree(root / "b", models / "2-new")
    (models / "3-half-copied").mkdir()
    (models / "3-half-copied" / "config.json").write_text("{}")
    assert newest_model_dir(models).name == "2-new"
    assert [p.name for p in candidate_dirs(models)] == ["2-new", "1-old"]
    (models / "2-new" / "weights.safetensors").write_bytes(b"garbage")  # newest is corrupt: served the older one
    loaded_dir, rec = load_newest(models, "cpu")
    assert loaded_dir.name == "1-old" and rec.version == a.version
    with pytest.raises(ModelResolutionError):
        newest_model_dir(tmp_path / "nothing-here")


def test_rewarm_equals_stepping_through_history(tiny_models):
    from stream_rec.model.sequences import rewarm, time_gaps

    _, a, _ = tiny_models
    items = ["space-01", "space-02", "space-03", "cooking-04"]
    ts = [100.0, 400.0, 4000.0, 4100.0]
    rows, gaps = a.rows_for(items), time_gaps(ts)
    assert gaps == [0.0, 300.0, 3600.0, 100.0]
    h = a.init_state(1)
    for r, g in zip(rows, gaps):
        h = a.step(h, [r], [g])
    other = [("space-05", 50.0), ("unknown-item", 60.0), ("space-06", 80.0)]  # an unknown item is skipped
    h2 = a.init_state(1)
    for r, g in zip(a.rows_for(["space-05", "space-06"]), [0.0, 30.0]):
        h2 = a.step(h2, [r], [g])
    warmed = rewarm(a, [list(zip(items, ts)), other, []])  # batched across users of different lengths
    np.testing.assert_allclose(warmed[0], h[0], atol=1e-5)
    np.testing.assert_allclose(warmed[1], h2[0], atol=1e-5)
    np.testing.assert_allclose(warmed[2], a.init_state(1)[0], atol=1e-6)


def test_live_model_reload_swaps_and_carries_live_items(tiny_models, tmp_path):
    import shutil

    from stream_rec.io.topics import reload_request
    from stream_rec.worker.models import LiveModel

    root, a, b = tiny_models
    models = tmp_path / "models"
    shutil.copytree(root / "a", models / "a")
    swapped = []
    live = LiveModel.from_path(models, "cpu", on_swap=swapped.append)
    assert live.version == a.version and live.changed_on_disk() is None
    live.current.add_items(["brand-new"], None, texts=["a brand new item"])  # arrived on the catalog topic

    async def main():
        same = await live.reload()
        shutil.copytree(root / "b", models / "b")
        assert live.changed_on_disk() == models / "b"
        swap = await live.reload()
        pinned = await live.reload(models / "a")  # asked for explicitly (control topic): stays served
        return same, swap, pinned

    same, result, pinned = asyncio.run(main())
    assert pinned.reloaded and live.version == a.version and live.changed_on_disk() is None
    live.current = swapped[0]
    assert not same.reloaded and result.reloaded and result.version == b.version and len(swapped) == 2
    assert "brand-new" in live.current.row_of and live.current.model.config.hidden == 16
    assert live.current.item_ages()[live.current.row_of["brand-new"]] < 3600  # still new: its age was carried
    assert reload_request(b'{"type": "reload"}') is None
    assert reload_request({"type": "reload", "path": "/m"}) == "/m"
    assert reload_request(b"junk") is False and reload_request({"type": "other"}) is False


def test_context_query_moves_the_list_toward_matching_items(tmp_path_factory):
    """An event carrying context.text gets a list boosted toward items whose text matches the query
    (here the query vector is a space item's own text vector: no encoder needed)."""
    import json as _json

    import torch

    from stream_rec.recsys.context import context_text_of
    from stream_rec_devtools.demo_model import train_demo_model
    from stream_rec.pipeline import Incoming, PipelineConfig, process_batch, states_in

    torch.set_num_threads(1)
    rec = train_demo_model(tmp_path_factory.mktemp("ctx") / "m", train={"epochs": 3}, use_text=True)
    events = [{"user_id": "u", "item_id": f"cooking-0{i}", "event_type": "view", "timestamp": 1_700_000_000 + 60 * i}
              for i in range(3)]
    events[-1]["context"] = {"text": "a science fiction space adventure among stars and planets"}
    msgs = [Incoming(_json.dumps(e).encode(), b"u", "events", 0, n, 0.0) for n, e in enumerate(events)]
    assert context_text_of(msgs[-1].value).startswith("a science") and context_text_of(msgs[0].value) == ""
    query = rec.model.text_vectors[rec.row_of["space-03"]].numpy()
    plain = process_batch(msgs, states_in({}), rec, PipelineConfig())
    asked = process_batch(msgs, states_in({}), rec, PipelineConfig(), queries={2: query})
    space = lambda r: sum(i["item_id"].startswith("space") for i in r["items"])  # noqa: E731
    assert space(asked.recommendations[0]) > space(plain.recommendations[0])
    off = process_batch(msgs, states_in({}), rec, PipelineConfig(context_alpha=0.0), queries={2: query})
    assert off.recommendations[0]["items"] == plain.recommendations[0]["items"]
