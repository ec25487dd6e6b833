"""The trained model live in the stream, end to end on the real embedded broker (issue 5):

* online/offline parity: the worker's recs after a sequence of events == `stream-rec recommend`;
* a catalog item published mid-stream shows up in the recs of a user whose history matches its text;
* hot reload: a new model version replaces the served one without losing any user's state.

A small model is trained once per session on the synthetic world (seconds, see live/demo_model.py).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from stream_rec.io.data import write_events_csv
from stream_rec_devtools.demo_model import train_demo_model
from stream_rec_devtools.synthetic import make_world

from conftest import WorkerProcess, consume, produce, wait_until

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="session")
def trained_model(tmp_path_factory) -> Path:
    import torch

    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("live-model") / "model"
    train_demo_model(out, use_text=True)
    return out


def user_events(n_users: int = 6, seed: int = 7) -> dict[str, list[dict]]:
    """Fresh synthetic users (not the training ones) with their events in time order."""
    world = make_world(n_users=n_users, events_per_user=(6, 12), seed=seed)
    by_user: dict[str, list[dict]] = {}
    for e in world.events:
        by_user.setdefault(f"live-{e['user_id']}", []).append({**e, "user_id": f"live-{e['user_id']}"})
    return by_user


def last_recs(records: list[dict]) -> dict[str, dict]:
    """user -> newest recommendation record."""
    out = {}
    for r in records:
        out[r["value"]["user_id"]] = r["value"]
    return out


def recs_after(settings, expected_last_ts: dict[str, float], timeout_s: float = 90.0) -> dict[str, dict]:
    """Consume recommendations until every user has one for its last event."""
    def complete(records):
        latest = last_recs(records)
        return all(u in latest and abs(latest[u]["event_timestamp"] - ts) < 1e-6
                   for u, ts in expected_last_ts.items())

    records = consume(settings, settings.topic("recommendations"), timeout_s=timeout_s, until=complete)
    latest = last_recs(records)
    assert complete(records), f"missing recommendations: got {sorted(latest)} of {sorted(expected_last_ts)}"
    return latest


def offline_recommend(model: Path, events: list[dict], tmp_path: Path, k: int = 10) -> dict[str, list[str]]:
    csv = tmp_path / "history.csv"
    write_events_csv(csv, events)
    out = tmp_path / "offline.jsonl"
    subprocess.run([sys.executable, "-m", "stream_rec", "recommend", "--model", str(model), "--events-file", str(csv),
                    "--top-k", str(k), "--out", str(out), "--device", "cpu", "--quiet"], check=True)
    return {row["user_id"]: row["items"] for row in map(json.loads, out.read_text().splitlines())}


def test_online_offline_parity(spine_settings, trained_model, tmp_path):
    settings = spine_settings
    by_user = user_events()
    events = sorted((e for evs in by_user.values() for e in evs), key=lambda e: e["timestamp"])
    with WorkerProcess(settings, tmp_path, extra_args=["--model", str(trained_model)]) as worker:
        produce(settings, settings.topic("events"), events)
        online = recs_after(settings, {u: evs[-1]["timestamp"] for u, evs in by_user.items()})
        assert worker.alive(), worker.log_tail()
    offline = offline_recommend(trained_model, events, tmp_path)
    version = (trained_model / "VERSION").read_text().strip()
    for user, rec in online.items():
        assert rec["model_version"] == version
        assert [i["item_id"] for i in rec["items"]] == offline[user], (user, rec["items"], offline[user])


def wait_for_rec(settings, predicate, timeout_s: float = 90.0, nudge=None, nudge_every_s: float = 3.0) -> dict:
    """The first recommendation record satisfying ``predicate``; ``nudge()`` (e.g. send one more event)
    is called every few seconds while waiting."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if nudge is not None:
            nudge()
        records = consume(settings, settings.topic("recommendations"), timeout_s=nudge_every_s,
                          until=lambda rs: any(predicate(r["value"]) for r in rs))
        hits = [r["value"] for r in records if predicate(r["value"])]
        if hits:
            return hits[0]
    pytest.fail("no matching recommendation in time")


def test_catalog_item_published_mid_stream_is_recommended(spine_settings, trained_model, tmp_path):
    from stream_rec_devtools.synthetic import DESCRIPTIONS

    settings = spine_settings
    user = "cat-fan"
    history = [f"space-{i:02d}" for i in range(6)]
    t0 = time.time() - 3600
    events = [{"user_id": user, "item_id": item, "event_type": "view", "timestamp": t0 + 60 * n}
              for n, item in enumerate(history)]
    new_item = {"item_id": "space-new-01", "title": "Quasar", "text": DESCRIPTIONS["space"],
                "attributes": {"genre": "space", "episode": "99"}}
    with WorkerProcess(settings, tmp_path, extra_args=["--model", str(trained_model)]) as worker:
        produce(settings, settings.topic("events"), events)
        before = recs_after(settings, {user: events[-1]["timestamp"]})[user]
        assert new_item["item_id"] not in [i["item_id"] for i in before["items"]]
        wait_until(lambda: "text encoder ready" in worker.log_tail(200_000), timeout_s=90,
                   message="the worker's text encoder (loaded at start, in a thread)")
        published = time.time()
        produce(settings, settings.topic("catalog"), [new_item], key_field="item_id")
        counter = iter(range(1000))

        def one_more_event():  # the user keeps watching: each event gets a fresh list
            n = next(counter)
            produce(settings, settings.topic("events"), [{"user_id": user, "item_id": history[n % 2],
                                                          "event_type": "view", "timestamp": time.time()}])

        rec = wait_for_rec(settings, lambda r: r["user_id"] == user and any(
            i["item_id"] == new_item["item_id"] for i in r["items"]), timeout_s=60, nudge=one_more_event)
        print(f"new catalog item recommended {rec['produced_at'] - published:.1f} s after it was published")

        # an event with a context text (a query) pulls the list toward matching items right away
        query_ts = time.time()
        produce(settings, settings.topic("events"), [{"user_id": user, "item_id": history[0], "event_type": "view",
                                                      "timestamp": query_ts, "context": {"text": DESCRIPTIONS["cooking"]}}])
        asked = recs_after(settings, {user: query_ts})[user]
        assert worker.alive(), worker.log_tail()
    assert rec["produced_at"] - published < 15, "new item took too long to become recommendable"
    cooking = lambda r: sum(i["item_id"].startswith("cooking") for i in r["items"])  # noqa: E731
    assert cooking(asked) > cooking(rec), (asked["items"], rec["items"])


def test_hot_reload_swaps_version_and_keeps_user_state(spine_settings, trained_model, tmp_path):
    settings = spine_settings.replace(model_poll_s=1.0)
    root = tmp_path / "models"
    root.mkdir()
    shutil.copytree(trained_model, root / "v1")
    v1 = (root / "v1" / "VERSION").read_text().strip()
    by_user = user_events(n_users=4, seed=11)
    first = {u: evs[:-1] for u, evs in by_user.items()}
    probe = iter(range(10_000))

    def probe_event():  # a bystander user whose recs tell which version is being served
        produce(settings, settings.topic("events"), [{"user_id": "probe", "item_id": "space-0%d" % (next(probe) % 8),
                                                      "event_type": "view", "timestamp": time.time()}])

    with WorkerProcess(settings, tmp_path, extra_args=["--model", str(root)]) as worker:
        produce(settings, settings.topic("events"), sorted((e for evs in first.values() for e in evs),
                                                            key=lambda e: e["timestamp"]))
        recs_v1 = recs_after(settings, {u: evs[-1]["timestamp"] for u, evs in first.items()})
        assert {r["model_version"] for r in recs_v1.values()} == {v1}

        # a new version with another hidden size lands in the models directory: the watcher loads it
        v2 = train_demo_model(tmp_path / "staging-v2", model={"hidden": 32}, train={"seed": 1, "epochs": 8},
                              version_suffix="v2").version
        shutil.copytree(tmp_path / "staging-v2", root / "v2")
        wait_for_rec(settings, lambda r: r["model_version"] == v2, timeout_s=60, nudge=probe_event)
        produce(settings, settings.topic("events"), [evs[-1] for evs in by_user.values()])
        recs_v2 = recs_after(settings, {u: evs[-1]["timestamp"] for u, evs in by_user.items()})

        # and a reload announced on the control topic, from a directory outside the models root
        v3 = train_demo_model(tmp_path / "v3", train={"seed": 2, "epochs": 8}, version_suffix="v3").version
        subprocess.run([sys.executable, "-m", "stream_rec", "reload", "--broker", settings.broker, "--topic-prefix",
                        settings.topic_prefix, "--app-id", settings.app_id, "--path", str(tmp_path / "v3")], check=True, timeout=60)
        wait_for_rec(settings, lambda r: r["model_version"] == v3, timeout_s=60, nudge=probe_event)
        assert worker.alive(), worker.log_tail()

    # every user kept its state: the history continues across the swap, and the re-warmed hidden state
    # (history replayed through v2) gives exactly what v2 recommends offline for the whole history
    offline_v2 = offline_recommend(root / "v2", [e for evs in by_user.values() for e in evs], tmp_path)
    for u, evs in by_user.items():
        rec = recs_v2[u]
        assert rec["model_version"] == v2
        items = [e["item_id"] for e in evs]
        assert rec["history"] == items[-len(rec["history"]):], (u, rec["history"], items)
        assert [i["item_id"] for i in rec["items"]] == offline_v2[u]


def test_replay_scores_every_list_and_matches_offline(broker, trained_model, tmp_path):
    """`stream-rec replay --order paced` through the real broker and worker: every event gets its own
    list, and the lists before each user's last event score like the offline evaluation -- for a log as
    old as MovieLens-100K's (1997), whose timestamps the worker alone would dead-letter."""
    from stream_rec.io.data import write_items_csv

    world = make_world(n_users=30, events_per_user=(5, 9), seed=5)
    first = min(e["timestamp"] for e in world.events)
    write_events_csv(tmp_path / "events.csv", [dict(e, timestamp=875_000_000 + e["timestamp"] - first)
                                               for e in world.events])
    write_items_csv(tmp_path / "items.csv", world.items)
    out = tmp_path / "replay"
    proc = subprocess.run([sys.executable, "-m", "stream_rec", "replay", "--events-file", str(tmp_path / "events.csv"),
                           "--items-file", str(tmp_path / "items.csv"), "--model", str(trained_model), "--broker", broker,
                           "--order", "paced", "--out", str(out)], capture_output=True, text=True, timeout=200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((out / "replay.json").read_text())
    pre = result["prequential"]
    assert result["all_recommendations_received"] and pre["coverage"] == 1.0
    assert pre["all"]["n"] == len(world.events) - 30 and pre["test"]["n"] == 30
    assert abs(pre["test"]["NDCG@10"] - result["offline_same_users"]["ndcg@10"]) < 0.02
    assert (out / "replay.png").stat().st_size > 0
