"""Privacy and exposure against the real broker and a real worker process.

* right to erasure: ``stream-rec forget USER`` -> ``delete_user`` control event -> the worker deletes the
  user's state -> a tombstone in the changelog; a worker restoring the table from the changelog (fresh
  data dir) does not bring the user back, and a later event starts a fresh state;
* pseudonymisation on ingest (``pseudonymize_key``): the table, its changelog and the recommendations
  hold only the keyed hash, never the raw id;
* logs and metrics never contain user ids (raw or pseudonymised);
* every listening socket of the worker is on localhost, it is the one HTTP listener (no Faust web server,
  no ``/table`` views), and its lookup takes the raw id and answers with the pseudonymised user's list;
  the lookup's request paths (raw ids) do not reach the worker's log.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from urllib.parse import quote

import pytest

from conftest import WorkerProcess, consume, make_settings, produce, wait_until, write_items
from stream_rec.io.kafka import ensure_topics, read_topic
from stream_rec.io.topics import STATE_TABLE
from stream_rec_devtools.harness import read_changelog_states
from stream_rec_devtools.procfs import listening_sockets
from stream_rec.privacy import pseudonymize
from stream_rec_devtools.synthetic import make_catalog

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs /proc")

CATALOG = make_catalog(items_per_theme=4, themes=["space", "cooking"])
KEY = "test-pseudonymize-key"
ALICE, BOB = "alice.private@example.com", "bob.private@example.com"


def events_for(user: str, n: int, start: float) -> list[dict]:
    return [{"user_id": user, "item_id": CATALOG[i % len(CATALOG)]["item_id"], "event_type": "view",
             "timestamp": start + i} for i in range(n)]


def changelog(settings) -> dict:
    return asyncio.run(read_changelog_states(settings, f"{settings.app_id}-{STATE_TABLE}-changelog",
                                             items=[i["item_id"] for i in CATALOG]))


def raw_changelog_bytes(settings) -> bytes:
    records = asyncio.run(read_topic(settings, f"{settings.app_id}-{STATE_TABLE}-changelog"))
    return b"".join((r.key or b"") + (r.value or b"") for r in records)


def wait_for_recs(settings, users: set[str], after_ts: float, timeout_s: float = 90) -> list[dict]:
    def done(records):
        got = {r["value"]["user_id"] for r in records
               if isinstance(r["value"], dict) and r["value"]["event_timestamp"] >= after_ts}
        return users <= got
    recs = consume(settings, settings.topic(settings.recommendations_topic), until=done, timeout_s=timeout_s)
    assert done(recs), f"no recommendations for all of {len(users)} users after {after_ts}"
    return recs


def forget_cli(settings, *users: str) -> None:
    env = {**os.environ, **settings.to_env()}
    out = subprocess.run([sys.executable, "-m", "stream_rec", "forget", *users], env=env, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    for user in users:
        assert user not in out.stdout + out.stderr  # the tool does not echo ids back either


def test_forget_pseudonymize_no_ids_in_logs_or_metrics_localhost_only(broker, tmp_path):
    settings = make_settings(broker, tmp_path / "data-1", pseudonymize_key=KEY)
    asyncio.run(ensure_topics(settings))
    items = write_items(tmp_path, CATALOG)
    alice, bob = pseudonymize(ALICE, KEY), pseudonymize(BOB, KEY)
    start = time.time() - 3600

    worker = WorkerProcess(settings, tmp_path / "w1", items=items).start()
    try:
        produce(settings, settings.topic(settings.events_topic), events_for(ALICE, 5, start) + events_for(BOB, 4, start))
        recs = wait_for_recs(settings, {alice, bob}, start)

        # pseudonymised on ingest: recommendations and stored state carry only the keyed hash
        assert {r["value"]["user_id"] for r in recs} == {alice, bob}
        assert all(r["key"] in (alice.encode(), bob.encode()) for r in recs)
        states = changelog(settings)
        assert states[alice].n_events == 5 and states[bob].n_events == 4
        stored = raw_changelog_bytes(settings)
        assert ALICE.encode() not in stored and BOB.encode() not in stored

        # exposure: every listening socket on loopback; no table contents over HTTP
        sockets = listening_sockets(worker.proc.pid)
        assert sockets, "the worker should at least serve /metrics"
        assert all(addr in ("127.0.0.1", "::1") for addr, _ in sockets), sockets
        assert {port for _, port in sockets} == {settings.metrics_port}, sockets  # the one HTTP listener
        for path in (f"/table/{STATE_TABLE}/", f"/table/{STATE_TABLE}/{alice}/", "/table/"):  # no Faust views
            with pytest.raises(urllib.error.HTTPError) as err:
                urllib.request.urlopen(worker.url(path), timeout=5)
            assert err.value.code == 404, path
        # the lookup takes the raw id and hashes it like the pipeline: alice's list, under her pseudonym
        all_recs = consume(settings, settings.topic(settings.recommendations_topic), idle_s=2, timeout_s=30)
        last_alice = [r["value"] for r in all_recs if r["value"]["user_id"] == alice][-1]
        looked_up = json.loads(urllib.request.urlopen(worker.url(f"/recommendations/{quote(ALICE)}"), timeout=5).read())
        assert looked_up["user_id"] == alice and looked_up["items"] == last_alice["items"]
        with pytest.raises(urllib.error.HTTPError) as err:  # the pseudonym is not an id the lookup takes
            urllib.request.urlopen(worker.url(f"/recommendations/{alice}"), timeout=5)
        assert err.value.code in (404, 307)
        metrics_text = urllib.request.urlopen(worker.metrics_url(), timeout=5).read().decode()
        for uid in (ALICE, BOB, alice, bob, "alice", "bob"):
            assert uid not in metrics_text, f"user id {uid!r} in /metrics"

        # right to erasure
        forget_cli(settings, ALICE)
        wait_until(lambda: alice in changelog(settings) and changelog(settings)[alice] is None, timeout_s=60,
                   message="a tombstone for the forgotten user in the changelog")
        assert changelog(settings)[bob].n_events == 4  # nobody else touched
    finally:
        worker.stop()

    # a worker that restores the table from the changelog only (new data dir) does not resurrect alice
    settings2 = settings.replace(data_dir=tmp_path / "data-2")
    worker2 = WorkerProcess(settings2, tmp_path / "w2", items=items).start()
    try:
        later = time.time() - 60
        produce(settings2, settings2.topic(settings2.events_topic), events_for(ALICE, 1, later) + events_for(BOB, 1, later))
        wait_for_recs(settings2, {alice, bob}, later)
        states = changelog(settings2)
        assert states[alice].n_events == 1, "the forgotten user's old state came back"
        assert states[alice].history == [(CATALOG[0]["item_id"], later)]
        assert states[bob].n_events == 5, "bob's state was not restored from the changelog"
    finally:
        worker2.stop()

    # logs: neither the raw ids nor the pseudonyms
    for w in (worker, worker2):
        log_text = w.log_path.read_text(errors="replace")
        for uid in (ALICE, BOB, alice, bob):
            assert uid not in log_text, f"user id {uid!r} in the worker log {w.log_path}"


def test_user_ids_stay_out_of_logs_without_pseudonymisation(broker, tmp_path):
    """The default (no key): ids are stored as given, but still never logged, even for bad events."""
    settings = make_settings(broker, tmp_path / "data")
    asyncio.run(ensure_topics(settings))
    items = write_items(tmp_path, CATALOG)
    start = time.time() - 3600
    secret = "carol.private@example.com"
    worker = WorkerProcess(settings, tmp_path / "w", items=items).start()
    try:
        bad = [{"user_id": secret, "item_id": "no-such-item", "event_type": "view", "timestamp": start},
               {"user_id": secret, "item_id": CATALOG[0]["item_id"], "event_type": "teleport", "timestamp": start}]
        produce(settings, settings.topic(settings.events_topic), bad + events_for(secret, 3, start))
        produce(settings, settings.topic(settings.events_topic), [b'{"user_id": "' + secret.encode() + b'", trunc'],
                keys=[secret.encode()])
        wait_for_recs(settings, {secret}, start)
        consume(settings, settings.topic(settings.dlq_topic), count=3, timeout_s=30)
        metrics_text = urllib.request.urlopen(worker.metrics_url(), timeout=5).read().decode()
        assert secret not in metrics_text
    finally:
        worker.stop()
    assert secret not in worker.log_path.read_text(errors="replace")
