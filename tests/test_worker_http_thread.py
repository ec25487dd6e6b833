"""The HTTP listener on a thread of its own (stream_rec/worker/listener.py, issue 23: lookups must not slow
the stream).

* ``test_lookups_are_served_while_the_stream_loop_is_blocked_and_see_the_newest_state``: the worker's own
  ``HttpService`` on the real state table (RocksDB, changelog on the embedded broker). While the stream's
  loop is blocked (a batch that takes 4 s, the gate saying "busy"), a lookup is answered at once; /healthz
  answers 503 ("stream loop not answering") within its timeout and /readyz names ``loop``; once the loop
  runs again /healthz is 200. A state the stream stages is what the next lookup returns (freshness), and a
  partition whose store is not open answers 503, never a wrong 404.
* ``test_lookups_rank_consistently_while_the_catalogue_grows_and_the_model_is_swapped``: a thread ranks
  lookups (``listener.ranked_while_unchanged`` around ``pipeline.current_records``, the enricher on) while another grows the catalogue without a
  pause and swaps the served model: no lookup fails, every list names items of the model it was ranked
  by. (Ranked once, without the re-ranking after a growth, 1-6 of the lookups failed with an IndexError.)
* ``test_a_live_page_on_another_loop_wakes_when_the_stream_publishes``, ``test_listener_thread_*``,
  ``test_readiness_names_a_silent_stream_loop``: the pieces.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import numpy as np
import pytest

from stream_rec.io.topics import key_partition
from stream_rec.pipeline import Incoming, current_records, process_batch_isolating
from stream_rec.worker.http import Readiness, WorkerStatus
from stream_rec.worker.listener import NICE, ListenerThread, StreamGate, StreamSnapshot, ping, ranked_while_unchanged
from stream_rec.worker.live import Watchers

ITEMS = [f"item-{n:02d}" for n in range(12)]
USERS = ["ann", "ben", "cat", "dan"]


def _get(url: str) -> tuple[int, dict, float]:
    """(status, JSON body, monotonic time of the answer)."""
    try:
        with urllib.request.urlopen(url, timeout=20) as response:
            status, body = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, body = exc.code, exc.read()
    return status, json.loads(body), time.monotonic()


def _incoming(user: str, item: str, ts: float, offset: int, partitions: int) -> Incoming:
    value = json.dumps({"user_id": user, "item_id": item, "event_type": "view", "timestamp": ts}).encode()
    return Incoming(value, user.encode(), topic="events", partition=key_partition(user.encode(), partitions),
                    offset=offset, received_at=time.time())


def test_lookups_are_served_while_the_stream_loop_is_blocked_and_see_the_newest_state(spine_settings):
    from stream_rec.worker.app import build_app
    from stream_rec.worker.batch import state_reader
    from stream_rec.worker.catalog import untrained_model
    from stream_rec.worker.http import HttpService, bind_listener
    from stream_rec.worker.services import WorkerServices, stage_user_states

    settings = spine_settings
    services = WorkerServices(settings, untrained_model([{"item_id": i} for i in ITEMS], settings))
    services.config = replace(services.config, partitions=settings.partitions)
    ctx = build_app(settings, services)
    http = HttpService(ctx, bind_listener(settings))
    http.readiness.silent_loop_s = 1.0
    base, now = settings.http_url, time.time() - 60

    def step(events: list[tuple[str, str]], first_offset: int) -> None:
        incoming = [_incoming(u, i, now + first_offset + n, first_offset + n, settings.partitions)
                    for n, (u, i) in enumerate(events)]
        result = process_batch_isolating(incoming, state_reader(ctx), services.model, services.config)
        stage_user_states(services.state_cache, ctx.table, result, incoming)

    async def scenario(pool: ThreadPoolExecutor) -> dict:
        step([(u, ITEMS[n]) for n, u in enumerate(USERS)], 0)
        await http.on_start()
        # as the stream's loop sees the group: this worker owns both partitions (no consumer runs here)
        status = WorkerStatus(model_loaded=True, joined=True, rebalancing=False)
        http.snapshot = StreamSnapshot(status, frozenset({0, 1}), {base: frozenset({0, 1})}, base, time.monotonic())
        assert (await asyncio.to_thread(_get, f"{base}/healthz"))[0] == 200
        # the stream's loop is stuck in a batch for 4 s: the listener answers from its own thread
        services.gate.busy()
        t0 = time.monotonic()
        asked = {path: pool.submit(_get, base + path) for path in ("/recommendations/ann", "/healthz")}
        time.sleep(1.5)  # blocks the stream's loop (this coroutine runs on it) ...
        asked["/readyz"] = pool.submit(_get, base + "/readyz")  # the snapshot is 1.5 s old now
        time.sleep(2.5)  # ... for 4 s in all
        unblocked = time.monotonic()
        services.gate.idle()
        out = {path: (*future.result()[:2], future.result()[2] - t0) for path, future in asked.items()}
        out["unblocked_s"] = unblocked - t0
        out["healthz_after"] = (await asyncio.to_thread(_get, f"{base}/healthz"))[0]
        # freshness: a state staged by the stream is what the next lookup reads
        step([("ann", ITEMS[9])], 10)
        out["fresh"] = (await asyncio.to_thread(_get, f"{base}/recommendations/ann"))[1]
        # a partition whose store is not open (a rebalance took it): 503, not "unknown user"
        partition = key_partition(b"ben", settings.partitions)
        futures = await ctx.table.send_changelog_batches()  # ben's state delivered: no longer staged in memory
        await asyncio.wait_for(asyncio.gather(*futures), 30)
        services.state_cache.clear()
        db = ctx.table.data._dbs.pop(partition)
        out["moved"] = await asyncio.to_thread(_get, f"{base}/recommendations/ben")
        ctx.table.data._dbs[partition] = db
        out["back"] = (await asyncio.to_thread(_get, f"{base}/recommendations/ben"))[0]
        return out

    async def main() -> dict:
        await ctx.app.producer.start()
        try:
            with ThreadPoolExecutor(4) as pool:
                return await scenario(pool)
        finally:
            await http.on_stop()
            await ctx.app.producer.stop()

    out = asyncio.run(main())
    status, body, answered_s = out["/recommendations/ann"]
    assert status == 200 and body["user_id"] == "ann" and len(body["items"]) > 0, out
    assert answered_s < 2.0 < out["unblocked_s"], out  # answered while the stream's loop was blocked
    health_status, health, health_s = out["/healthz"]
    assert health_status == 503 and health["status"] == "stream loop not answering", out
    assert health_s < out["unblocked_s"], out  # said so before the loop ran again
    ready_status, ready, _ = out["/readyz"]
    assert ready_status == 503 and "loop" in ready["missing"], out
    assert out["healthz_after"] == 200
    assert out["fresh"]["history"][-1] == ITEMS[9], out["fresh"]
    assert out["moved"][0] == 503 and out["moved"][1]["error"] == "owner unknown", out["moved"]
    assert out["back"] == 200


def test_lookups_rank_consistently_while_the_catalogue_grows_and_the_model_is_swapped():
    from stream_rec.model.recommender import Recommender
    from stream_rec.pipeline import PipelineConfig
    from stream_rec.recsys.enricher import Enricher
    from stream_rec.state import UserState, encode_state

    models = [Recommender.untrained(ITEMS, np.random.default_rng(s).normal(size=(len(ITEMS), 8)).astype(np.float32),
                                    seed=s, device="cpu") for s in (1, 2)]
    served = {"model": models[0]}
    enricher, config = Enricher(mmr_lambda=0.7), PipelineConfig(top_k=5)
    states = [encode_state(UserState(history=[(ITEMS[n], 1000.0 + n), (ITEMS[n + 1], 1001.0 + n)]))
              for n in range(8)]
    stop, failures, answered = threading.Event(), [], [0]

    def lookups() -> None:
        while not stop.is_set():
            model = served["model"]  # read once per batch, as the listener does
            try:
                records = ranked_while_unchanged(model, lambda: current_records(
                    [f"u{n}" for n in range(8)], states, model, config=config, enricher=enricher))
                for record in records:
                    assert record["model_version"] == model.version and len(record["items"]) == 5
                    assert all(item["item_id"] in model.row_of for item in record["items"])
                    assert len(record["items"][0].get("reason", "x")) > 0
                answered[0] += 1
            except Exception as exc:  # noqa: BLE001 -- any failure is the finding
                failures.append(repr(exc))

    thread = threading.Thread(target=lookups)
    thread.start()
    rng = np.random.default_rng(0)
    n = 0
    try:  # the stream's side: catalogue growth (with text) and hot reloads, until enough lookups overlapped
        while n < 150 or (answered[0] < 20 and n < 3000):
            models[n % 2].add_items([f"new-{n}-{k}" for k in range(20)], rng.normal(size=(20, 8)).astype(np.float32),
                                    texts=[f"new item {n} {k}" for k in range(20)])
            if n % 10 == 0:
                served["model"] = models[(n // 10) % 2]
            n += 1
    finally:
        stop.set()
        thread.join(30)
    assert not failures, (len(failures), answered[0], failures[:3])
    assert answered[0] >= 20, (answered[0], n)


def test_a_live_page_on_another_loop_wakes_when_the_stream_publishes():
    listener = ListenerThread(nice=0)
    listener.start()
    try:
        watchers = Watchers()

        async def subscribe():
            return watchers.subscribe("ann", loop=asyncio.get_running_loop())

        sub = listener.submit(subscribe()).result(5)
        woke = listener.submit(sub.wait(10.0))  # the page waits on the listener's loop
        time.sleep(0.2)
        t0 = time.monotonic()
        watchers.publish([{"user_id": "ann", "items": []}])  # from this thread: the stream's
        assert woke.result(5) is True and time.monotonic() - t0 < 1.0
        assert sub.take() == [{"user_id": "ann", "items": []}]
        watchers.close_all("stopping")
        assert listener.submit(sub.wait(10.0)).result(5) is True and sub.ended == "stopping"
    finally:
        listener.stop()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread niceness is Linux's")
def test_listener_thread_runs_at_a_lower_priority_and_pings_another_loop():
    listener = ListenerThread()
    listener.start()
    try:
        assert os.getpriority(os.PRIO_PROCESS, listener.native_id) == min(19, os.getpriority(os.PRIO_PROCESS, 0) + NICE)
        assert sys.getswitchinterval() <= 0.001
        blocked = asyncio.new_event_loop()  # a loop that runs nothing: it never answers
        assert listener.submit(ping(blocked, 0.3)).result(5) is False
        blocked.close()
        assert listener.submit(ping(blocked, 0.3)).result(5) is False  # closed: no answer, no error
        gate = StreamGate(max_wait_s=0.2)
        gate.busy()
        t0 = time.monotonic()
        gate.wait()  # a stuck stream slows the listener, never stops it
        assert 0.15 < time.monotonic() - t0 < 2.0
    finally:
        listener.stop()
    assert not listener.running


def test_readiness_names_a_silent_stream_loop():
    class Watchdog:
        stalled, stalled_for = False, 0.0

    readiness = Readiness(Watchdog(), silent_loop_s=5.0)
    fine = WorkerStatus(model_loaded=True, joined=True, rebalancing=False, loop_silent_s=0.2)
    assert readiness.missing(fine) == {}
    assert list(readiness.missing(replace(fine, loop_silent_s=6.0))) == ["loop"]
