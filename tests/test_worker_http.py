"""The worker's one HTTP listener (stream_rec/worker/http.py): /healthz, /readyz, /metrics and
GET /recommendations/{user_id}.

Pure parts without Kafka: what /readyz reports from its inputs (a stall watchdog among them), where a lookup
is answered, the user's partition, and ``pipeline.current_record`` (the lookup's list is the stream's list).
Then real workers on the embedded broker: the /readyz timeline through start-up (no model yet, group not
joined), steady state, a second worker that recovers its partitions from the changelog, a restart of it,
lookups answered by the owner and redirected (307) by the other worker.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from urllib.parse import quote

import pytest
import torch

from conftest import WorkerProcess, consume, make_settings, produce, scrape, wait_until, write_items
from stream_rec.io.broker import free_port
from stream_rec.io.kafka import ensure_topics
from stream_rec.model.recommender import Recommender
from stream_rec.pipeline import Incoming, PipelineConfig, current_record, current_records, process_batch, states_in
from stream_rec.recsys.enricher import Enricher
from stream_rec_devtools.synthetic import make_catalog
from stream_rec.worker.watchdog import StallWatchdog
from stream_rec.worker.http import Readiness, WorkerStatus, route, user_partition

torch.set_num_threads(1)
CATALOG = make_catalog(items_per_theme=4, themes=["space", "cooking", "detective"])


# --- pure ----------------------------------------------------------------------------------------------------
def test_readiness_names_what_is_missing():
    t = [0.0]
    dog = StallWatchdog(warn_after_s=30, clock=lambda: t[0])
    ready = Readiness(dog)
    steady = WorkerStatus(model_loaded=True, joined=True, rebalancing=False)
    assert ready.missing(steady) == {}
    assert set(ready.missing(WorkerStatus(model_loaded=False, joined=False, rebalancing=False))) == {"model", "group"}
    recovering = ready.missing(WorkerStatus(True, True, rebalancing=True, recovery_remaining=42))
    assert set(recovering) == {"recovery"} and "42 changelog records" in recovering["recovery"]
    assert set(ready.missing(WorkerStatus(True, True, False, stopping=True))) == {"running"}
    t[0] = 40.0
    dog.check(waiting=0)  # idle with nothing waiting is not a stall
    assert ready.missing(steady) == {}
    dog.check(waiting=7)  # events seen waiting ...
    t[0] = 80.0
    dog.check(waiting=7)  # ... and 40 s without a micro-batch since
    assert set(ready.missing(steady)) == {"progress"} and "40 s" in ready.missing(steady)["progress"]
    dog.batch_handled()
    dog.check(waiting=7)
    assert ready.missing(steady) == {}
    t[0] = 120.0
    dog.check(waiting=0, silent_s=35.0)  # the broker has not answered a fetch for 35 s
    assert set(ready.missing(steady)) == {"progress"}


def test_route_answers_redirects_or_says_the_owner_is_unknown():
    owners = {"http://a:1": {0, 2}, "http://b:2": {1, 3}}
    assert route(2, "http://a:1", {0, 2}, owners, rebalancing=False).kind == "here"
    to_b = route(3, "http://a:1", {0, 2}, owners, rebalancing=False)
    assert (to_b.kind, to_b.url) == ("redirect", "http://b:2")
    assert route(3, "http://a:1", {0, 2}, owners, rebalancing=True).kind == "unknown"  # owners being reassigned
    assert route(3, "http://a:1", {0, 2}, owners, rebalancing=False, redirected=True).kind == "unknown"  # no ping-pong
    assert route(5, "http://a:1", {0, 2}, owners, rebalancing=False).kind == "unknown"  # nobody owns it
    assert route(1, "http://b:2", set(), owners, rebalancing=False).kind == "unknown"  # stale: "we" own it, but don't


def test_user_partition_is_the_kafka_default_partitioner():
    from aiokafka.partitioner import DefaultPartitioner

    for user in ["u1", "alice.private@example.com", "42", "\u05e9\u05dc\u05d5\u05dd", "x" * 300]:
        for n in (1, 2, 4, 12):
            assert user_partition(user, n) == DefaultPartitioner()(user.encode(), list(range(n)), [])


@pytest.fixture(scope="module")
def model():
    return Recommender.untrained([c["item_id"] for c in CATALOG], device="cpu")


def test_current_record_is_the_list_the_stream_sent(model):
    """The lookup ranks the stored state with the stream's own phases: same items, same scores, same
    annotations; and a lookup records nothing (no exposure, no list for the quality monitor)."""
    enricher = Enricher(exposure_cap=3, exposure_window=100, export_metrics=False)
    config = PipelineConfig(top_k=5)
    store: dict[str, bytes] = {}
    raws = [json.dumps({"user_id": u, "item_id": i, "event_type": "view", "timestamp": 1_750_000_000.0 + n}).encode()
            for n, (u, i) in enumerate([("a", "space-00"), ("b", "cooking-01"), ("a", "space-01")])]
    batch = [Incoming(r, json.loads(r)["user_id"].encode(), "events", 0, n, time.time()) for n, r in enumerate(raws)]
    out = process_batch(batch, states_in(store), model, config, enricher=enricher)
    store.update(out.states)
    sent = {r["user_id"]: r for r in out.recommendations}
    exposures, graded = dict(enricher.exposure._counts), dict(enricher.monitor.last_lists)
    for user in ("a", "b"):
        looked_up = current_record(user, store[user], model, config, enricher=enricher)
        assert looked_up["items"] == sent[user]["items"]  # item ids, scores and reasons
        assert looked_up["model_version"] == model.version and looked_up["history"] == sent[user]["history"]
        assert looked_up["event_timestamp"] == sent[user]["event_timestamp"] and "latency_ms" not in looked_up
    assert dict(enricher.exposure._counts) == exposures and dict(enricher.monitor.last_lists) == graded
    assert current_record("nobody", store.get("nobody"), model, config) is None
    # ranked in one batch (the worker's lookups, worker/lookups.py): the same lists, None where no state
    batched = current_records(["a", "nobody", "b"], [store["a"], None, store["b"]], model, config, enricher=enricher)
    assert batched[1] is None and [r["items"] for r in (batched[0], batched[2])] == [sent["a"]["items"],
                                                                                    sent["b"]["items"]]


# --- real workers ----------------------------------------------------------------------------------------------
class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


_OPENER = urllib.request.build_opener(_NoRedirect)


def get(url: str) -> tuple[int, dict, dict]:
    """(status, JSON body, headers) without following redirects; (0, {}, {}) when nothing answers."""
    try:
        with _OPENER.open(url, timeout=5) as response:
            return response.status, json.loads(response.read() or b"{}"), dict(response.headers)
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}"), dict(err.headers)
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return 0, {}, {}


def readyz_timeline(worker, until, timeout_s: float = 90.0) -> list[tuple[int, int, list]]:
    """Poll /healthz and /readyz until ``until(status, body)``: [(healthz status, readyz status, missing)]."""
    timeline, deadline = [], time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert worker.alive(), worker.log_tail()
        health, _, _ = get(worker.url("/healthz"))
        status, body, _ = get(worker.url("/readyz"))
        timeline.append((health, status, body.get("missing")))
        if until(status, body):
            return timeline
        time.sleep(0.1)
    pytest.fail(f"/readyz never got there; timeline {timeline[-20:]}\n{worker.log_tail()}")


def test_health_readiness_and_lookups_through_start_two_workers_and_a_restart(broker, tmp_path):
    settings = make_settings(broker, tmp_path / "data-1")  # 2 partitions
    asyncio.run(ensure_topics(settings))
    items = write_items(tmp_path, CATALOG)
    users = [f"user-{n}" for n in range(10)]
    start = time.time() - 600
    events = [{"user_id": u, "item_id": CATALOG[(n * 3 + k) % len(CATALOG)]["item_id"], "event_type": "view",
               "timestamp": start + k} for n, u in enumerate(users) for k in range(3)]
    w1 = WorkerProcess(settings, tmp_path / "w1").start()  # no --items-file: no model until the catalog comes
    w2 = None
    try:
        # start-up: health first, then "no model" and "group not joined" until the catalog and the group are there
        early = readyz_timeline(w1, lambda status, body: status == 503 and "model" in body["missing"]
                                and "group" not in body["missing"])
        assert all(h == 200 for h, r, _ in early if r), early  # whenever /readyz answers, /healthz does
        assert any(r == 503 and "group" in (m or []) for _, r, m in early), early
        produce(settings, settings.topic(settings.catalog_topic), CATALOG, key_field="item_id")
        readyz_timeline(w1, lambda status, body: status == 200)
        wait_until(lambda: scrape(w1.metrics_url()).get("stream_rec_catalog_items_total") == len(CATALOG),
                   message="the catalog applied")
        health = get(w1.url("/healthz"))[1]
        assert health["status"] == "ok" and health["loop_lag_ms"] is not None
        assert scrape(w1.metrics_url())["process_resident_memory_bytes"] > 0  # process metrics on our registry

        # steady state: the lookup is the last list the stream sent; an unknown user is a 404
        produce(settings, settings.topic(settings.events_topic), events)
        recs = consume(settings, settings.topic(settings.recommendations_topic), timeout_s=60, until=lambda rs: {
            r["value"]["user_id"] for r in rs if r["value"]["event_timestamp"] == start + 2} >= set(users))
        last = {r["value"]["user_id"]: r["value"] for r in recs}
        by_partition = {r["key"].decode(): r["partition"] for r in consume(
            settings, settings.topic(settings.events_topic), count=len(events), timeout_s=30)}
        for user in users:
            status, body, _ = get(w1.url(f"/recommendations/{user}"))
            assert status == 200 and body["items"] == last[user]["items"], (user, body)
            assert body["partition"] == by_partition[user] == user_partition(user, settings.partitions)
        assert get(w1.url("/recommendations/nobody-at-all"))[0] == 404

        # a second worker (empty data dir) takes one partition and recovers it from the changelog
        s2 = settings.replace(data_dir=tmp_path / "data-2", metrics_port=free_port())
        w2 = WorkerProcess(s2, tmp_path / "w2", items=items).start()
        joined = readyz_timeline(w2, lambda status, body: status == 200 and len(body["partitions"]) == 1)
        assert any(r == 503 and "group" in (m or []) for _, r, m in joined), joined
        readyz_timeline(w1, lambda status, body: status == 200 and len(body["partitions"]) == 1)
        _check_redirects(w1, w2, users, last, settings.partitions)

        # restart of the second worker on its data dir: the partition moves back to w1, then to w2 again
        w2.stop()
        readyz_timeline(w1, lambda status, body: status == 200 and len(body["partitions"]) == 2)
        assert all(get(w1.url(f"/recommendations/{u}"))[1]["items"] == last[u]["items"] for u in users)
        w2 = WorkerProcess(s2, tmp_path / "w2", items=items).start()
        restarted = readyz_timeline(w2, lambda status, body: status == 200 and len(body["partitions"]) == 1)
        assert restarted[0][1] != 200 and any(r == 503 for _, r, _ in restarted), restarted
        readyz_timeline(w1, lambda status, body: status == 200 and len(body["partitions"]) == 1)
        _check_redirects(w1, w2, users, last, settings.partitions)
    finally:
        for w in (w1, w2):
            if w is not None:
                w.stop()
    for w in (w1, w2):  # request paths carry user ids: no access log
        assert not any(u in w.log_path.read_text(errors="replace") for u in users), w.log_path


def _check_redirects(w1, w2, users, last, partitions) -> None:
    """Each worker answers for the users of its own partition and redirects the others to the owner (307);
    following the redirect gives the list the stream sent."""
    owned = {w: set(get(w.url("/readyz"))[1]["partitions"]) for w in (w1, w2)}
    assert owned[w1] and owned[w2] and not owned[w1] & owned[w2]
    for user in users:
        owner = w1 if user_partition(user, partitions) in owned[w1] else w2
        other = w2 if owner is w1 else w1
        status, body, headers = get(other.url(f"/recommendations/{user}"))
        assert status == 307, (user, status, body)
        location = headers["Location"]
        assert location == owner.url(f"/recommendations?user_id={quote(user, safe='')}&redirected=1")
        status, body, _ = get(location)
        assert status == 200 and body["items"] == last[user]["items"], (user, body)
        status, body, _ = get(owner.url(f"/recommendations/{user}"))
        assert status == 200 and body["items"] == last[user]["items"]
        # the user's page (worker/ui.py) is answered by the same owner, through the same redirect
        status, _, headers = get(other.url(f"/ui/users/{user}"))
        assert status == 307 and headers["Location"].startswith(owner.url(f"/ui/users/{user}")), (user, status)
        status, body, _ = get(headers["Location"].replace("/ui/users/", "/ui/api/users/"))
        pick = lambda items: [(it["item_id"], it["score"], it.get("reason")) for it in items]  # noqa: E731
        assert status == 200 and pick(body["items"]) == pick(last[user]["items"]), (user, body)
