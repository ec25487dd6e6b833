"""Where a simulated user's list comes from: the seam between the simulator and the system under test.

A ``ListSource`` answers three calls, in simulated time:

    lists = source.warm(histories, now)   # every user's list after her history (the state the stream holds)
    source.release({item_id: text}, now)  # new items join the catalogue (a `catalog` record each)
    lists = source.answer(events)         # [(user, item, ts)] -> {user: Shown}: each user's list after her event

``ServingSource`` is the offline path: ``stream_rec.model.recommender.Recommender`` stepped once per event
(batched across users, as ``pipeline.process_batch`` does), each user's last ``history_len`` items excluded,
new items added from their text (``Recommender.add_catalog``), and a new-item policy picking the list from
the scores. ``WorkerSource`` puts a real worker behind the same three calls (events to the ``events`` topic,
new items to ``catalog``, each list from the record emitted for the event it answers), so one simulation
runs through either (``benchmarks/closed_loop.py --through-worker``).
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from stream_rec.model.sequences import rewarm


@dataclass
class Shown:
    items: list[str]  # the list the user holds, best first
    fresh: list[str] = field(default_factory=list)  # the items a new-item policy put in (not in the plain list)
    plain: list[str] | None = None  # the plain ranking's list for the same state (offline only: the warm cost)


class ListSource(Protocol):
    def warm(self, histories: dict[str, list[tuple[str, float]]], now: float) -> dict[str, Shown]: ...

    def release(self, items: dict[str, str], now: float) -> None: ...

    def answer(self, events: list[tuple[str, str, float]]) -> dict[str, Shown]: ...


class ServingSource:
    """The offline serving path: one Recommender step per event and ``policy`` choosing each list.

    ``policy.lists(rec, users, scores, seen, now)`` -> [Shown] (``scores``: the model's scores [B, N+1],
    ``seen``: each user's excluded rows); ``policy.feedback(user, item, ts)`` is told every event first
    (a bandit's hits) and ``policy.released(rec, item_ids, now)`` the new items."""

    def __init__(self, rec, policy, encoder=None, k: int = 10, history_len: int = 50, batch: int = 256):
        self.rec, self.policy, self.encoder = rec, policy, encoder
        self.k, self.history_len, self.batch = k, history_len, batch
        self.states: dict[str, np.ndarray] = {}
        self.history: dict[str, list[tuple[str, float]]] = {}

    def warm(self, histories, now):
        users = list(histories)
        for s in range(0, len(users), self.batch):  # the states a stream holds after these histories
            part = users[s:s + self.batch]
            for u, state in zip(part, rewarm(self.rec, [histories[u] for u in part])):
                self.states[u] = state
                self.history[u] = list(histories[u][-self.history_len:])
        return self._lists(users, now)

    def release(self, items, now):
        factory = (lambda: self.encoder) if self.encoder is not None else None
        added = self.rec.add_catalog(items, factory)
        self.policy.released(self.rec, added, now)

    def answer(self, events):
        for user, item, ts in events:
            self.policy.feedback(user, item, ts)
        users = [u for u, _, _ in events]
        if len(set(users)) != len(users):
            raise ValueError("one event per user per answer (the simulator splits batches)")
        gaps = [max(ts - self.history[u][-1][1], 0.0) if self.history.get(u) else 0.0 for u, _, ts in events]
        states = self.rec.step(np.stack([self.states[u] for u in users]), self.rec.rows_for([i for _, i, _ in events]),
                               gaps)
        for n, (u, item, ts) in enumerate(events):
            self.states[u] = states[n]
            self.history[u] = (self.history[u] + [(item, ts)])[-self.history_len:]
        return self._lists(users, max(ts for _, _, ts in events))

    def _lists(self, users, now) -> dict[str, Shown]:
        out = {}
        for s in range(0, len(users), self.batch):
            part = users[s:s + self.batch]
            scores = self.rec.score_rows(np.stack([self.states[u] for u in part]))
            seen = [self.rec.rows_for([i for i, _ in self.history[u]]) for u in part]
            out.update(zip(part, self.policy.lists(self.rec, part, scores, seen, now)))
        return out


def plain_rows(scores, seen: list[list[int]], k: int):
    """The plain top-k rows and values per user (seen rows and padding excluded)."""
    from stream_rec.model.gru import topk_excluding

    values, rows = topk_excluding(scores.clone(), k, [list(r) for r in seen], inplace=True)
    return values.cpu().tolist(), rows.cpu().tolist()


def ids_of(rec, rows) -> list[str]:
    return [rec.item_ids[r - 1] for r in rows if r > 0]


class WorkerSource:
    """The real worker behind the three calls: ``stream-rec worker`` (``harness.WorkerProcess``, its settings
    from ``settings``: the model directory, the exploration) on a broker. ``warm`` produces every user's
    history, ``release`` catalog records ``{item_id, text}`` (the simulator's text already reads
    ``title. text``: the worker encodes exactly it) and waits until the worker applied them, ``answer`` the
    events, each call then waiting for the record emitted for each user's event (the newest, when a
    restart sends one twice). Simulated times are shifted by ``shift`` seconds (the worker refuses events
    more than a day ahead of its clock; only differences matter to it)."""

    def __init__(self, settings, workdir, shift: float = 0.0, timeout_s: float = 300.0):
        from stream_rec_devtools.harness import WorkerProcess

        self.settings, self.shift, self.timeout_s = settings, shift, timeout_s
        self.worker = WorkerProcess(settings, workdir, threads=1)
        self.loop = asyncio.new_event_loop()
        self.records: dict[tuple[str, float], dict] = {}  # (user, event time) -> the newest record for it
        self.released = 0

    def start(self) -> "WorkerSource":
        from stream_rec.io.kafka import ensure_topics
        from stream_rec_devtools.harness import RecCollector, make_producer

        async def go():
            await ensure_topics(self.settings)
            self.worker.start()
            self.collector = await RecCollector(self.settings, on_record=self._on_record).start()
            self.producer = await make_producer(self.settings)
        self.loop.run_until_complete(go())
        return self

    def stop(self) -> None:
        async def go():
            await self.producer.stop()
            await self.collector.stop()
        try:
            self.loop.run_until_complete(go())
        finally:
            self.worker.stop()
            self.loop.close()

    def _on_record(self, rec: dict, arrived: float) -> None:
        self.records[(rec.get("user_id"), rec.get("event_timestamp"))] = rec

    def warm(self, histories, now):
        events = sorted((ts + self.shift, u, i) for u, h in histories.items() for i, ts in h)
        return self._lists(events, {u: h[-1][1] + self.shift for u, h in histories.items() if h})

    def release(self, items, now):
        from stream_rec_devtools.harness import catalog_applied

        async def go():
            topic = self.settings.topic(self.settings.catalog_topic)
            for item_id, text in items.items():
                await self.producer.send(topic, json.dumps({"item_id": item_id, "text": text}).encode(),
                                         key=item_id.encode())
            await self.producer.flush()
        self.loop.run_until_complete(go())
        self.released += len(items)
        deadline = time.monotonic() + self.timeout_s
        while catalog_applied(self.worker) < self.released:
            if time.monotonic() > deadline or not self.worker.alive():
                raise TimeoutError(f"the worker applied {catalog_applied(self.worker)} of {self.released} "
                                   f"catalog records:\n{self.worker.log_tail()}")
            time.sleep(0.05)

    def answer(self, events):
        shifted = [(ts + self.shift, u, i) for u, i, ts in events]
        return self._lists(shifted, {u: ts for ts, u, _ in shifted})

    def _lists(self, events, wanted: dict[str, float]) -> dict[str, Shown]:
        from stream_rec_devtools.harness import event_record, send_events

        async def go():
            await send_events(self.producer, self.settings, [event_record(u, i, ts) for ts, u, i in events])
            keys = [(u, ts) for u, ts in wanted.items()]
            if not await self.collector.wait_for(lambda: all(k in self.records for k in keys), self.timeout_s):
                missing = [k for k in keys if k not in self.records]
                raise TimeoutError(f"no list for {len(missing)} events, e.g. {missing[:3]}:\n{self.worker.log_tail()}")
        self.loop.run_until_complete(go())
        out = {}
        for user, ts in wanted.items():
            rec = self.records.pop((user, ts))
            out[user] = Shown([e["item_id"] for e in rec["items"]], list(rec.get("explore", {}).get("inserted", ())))
        return out
