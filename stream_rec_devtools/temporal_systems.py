"""The systems of the temporal replay (``temporal``) built on stream-rec's own serving code.

* :class:`PipelineSystem` -- the worker without Kafka: every event goes through
  ``stream_rec.pipeline.process_batch`` (validation, the state codec, ``Recommender.step``, the top-K,
  the record), states kept as the bytes the worker's table stores; the list a user holds is the record
  the worker would have sent after her previous event. ``live`` and ``live_fresh`` (the new-item policy,
  :func:`new_item_policy`) are this.
* :class:`OnlinePipeline` -- the same with online learning as the worker does it: the enricher's drift
  monitor grades every list, a drift alarm starts ``learning.finetune.DriftFinetuner`` (the worker's
  fine-tune on its ring buffer of recent events, within its cooldown), the new model directory is loaded
  and swapped in (``worker.models.carry_live_items`` keeps the live catalogue) once the fine-tune's
  measured wall time has passed in stream time, and user states written by the old version are re-warmed
  by the pipeline itself.
* :class:`CadenceGRU` -- the same model, lists refreshed at a cadence (hourly, nightly) from the state at
  the boundary (``temporal.CadenceLists``), seen items and items not yet released at the boundary left out.
* :class:`MarkovLive`, :class:`PopularityLive` -- the count baselines.

:func:`warm_pipeline` builds every user's state at T through the same ``process_batch`` (the users'
k-th events batched together: the state is per user), and :class:`Catalogue` adds the items released
after T to a model from their text, at their release, as the worker's live catalogue does.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from stream_rec.pipeline import Incoming, PipelineConfig, process_batch, states_in
from stream_rec.recsys.freshness import serving_policy
from stream_rec.state import decode_state

from .harness import event_record
from .temporal import CadenceLists, Held, Log, WindowPopularity

log = logging.getLogger(__name__)
LIST_LENGTH = 60  # items a batch system keeps per user (the client filters what the user saw since, shows 10)


def new_item_policy(rec, settings):
    """The new-item (freshness) policy the stream applies with ``rec``: the settings' when they give one
    (STREAM_REC_FRESH_SLOTS >= 0), else the one `stream-rec train` chose for the model."""
    return serving_policy(PipelineConfig.from_settings(settings).freshness, rec)


class Catalogue:
    """Items that join the catalogue after training, with their text and release time (the worker's
    live catalogue: ``Recommender.add_items`` with the text vector, the release time as the item's age)."""

    def __init__(self, texts: dict[str, str], released: dict[str, float], encoder_factory: Callable | None):
        self.texts, self.released = texts, released
        self.encoder_factory = encoder_factory
        self._vectors: dict[str, np.ndarray] = {}
        self.order = sorted(released, key=lambda i: released[i])

    def vectors(self, items: list[str]) -> np.ndarray | None:
        missing = [i for i in items if i not in self._vectors]
        if missing and self.encoder_factory is not None:
            enc = self.encoder_factory().encode_cached([self.texts.get(i, "") for i in missing])
            self._vectors.update(zip(missing, enc))
        return np.stack([self._vectors[i] for i in items]) if self.encoder_factory is not None else None

    def add(self, rec, items: Sequence[str]) -> None:
        """Add ``items`` (those ``rec`` lacks) to ``rec`` from their text, aged from their release."""
        new = [i for i in dict.fromkeys(items) if i not in rec.row_of]
        if not new:
            return
        use_text = rec.model.config.use_text
        rec.add_items(new, self.vectors(new) if use_text else None, texts=[self.texts.get(i, "") for i in new])
        rec.added_at[rec.rows_for(new)] = [self.released.get(i, -np.inf) for i in new]

    def released_by(self, t: float) -> list[str]:
        stop = int(np.searchsorted([self.released[i] for i in self.order], t, side="right"))
        return self.order[:stop]


def ranked_ids(values, rows, ids: Sequence) -> list[list[str]]:
    """Item ids of top-k rows [B, k] (``ids[row]``), leaving out padding and the masked (-inf) rows a
    top-k longer than what is left returns."""
    return [[ids[r] for v, r in zip(vs, rs) if r and np.isfinite(v)] for vs, rs in zip(values.tolist(), rows.tolist())]


def incoming(users: Sequence[str], items: Sequence[str], ts: Sequence[float], offsets: Sequence[int]) -> list[Incoming]:
    """The events as the worker takes them from Kafka (one partition; offsets = positions in the log)."""
    return [Incoming(json.dumps(event_record(u, i, t)).encode(), u.encode(), "events", 0, int(o), t)
            for u, i, t, o in zip(users, items, ts, offsets)]


def warm_pipeline(rec, log_: Log, stop: int, config: PipelineConfig, batch: int = 256,
                  progress: bool = True) -> tuple[dict[str, bytes], dict[str, Held]]:
    """Every user's state after the events before index ``stop``, through ``process_batch``, and the
    list the worker sent after each user's last event. Users' k-th events are batched together."""
    from tqdm import tqdm

    by_user: dict[str, list[int]] = {}
    for e in range(stop):
        by_user.setdefault(log_.users[e], []).append(e)
    states: dict[str, bytes] = {}
    lists: dict[str, Held] = {}
    longest = max((len(v) for v in by_user.values()), default=0)
    for r in tqdm(range(longest), desc="states at T", unit="round", disable=not progress, mininterval=1.0):
        active = [v[r] for v in by_user.values() if len(v) > r]
        for s in range(0, len(active), batch):
            part = active[s:s + batch]
            _apply(rec, config, None, states, lists, [log_.users[e] for e in part], [log_.items[e] for e in part],
                   [float(log_.ts[e]) for e in part], part)
    return states, lists


def _apply(rec, config, enricher, states: dict, lists: dict, users, items, ts, offsets) -> None:
    """``process_batch`` on these events; new states and the lists sent go into ``states`` / ``lists``."""
    t_max = max(ts)
    result = process_batch(incoming(users, items, ts, offsets), states_in(states), rec, config=config,
                           now=lambda: t_max, enricher=enricher)
    if result.dlq:
        raise RuntimeError(f"the pipeline dead-lettered replayed events: {result.invalid}")
    states.update(result.states)
    for record in result.recommendations:
        lists[record["user_id"]] = Held([it["item_id"] for it in record["items"]], float(record["event_timestamp"]))


class PipelineSystem:
    """The worker's pipeline without Kafka (module docstring)."""

    def __init__(self, rec, config: PipelineConfig, catalogue: Catalogue | None = None, enricher=None):
        self.rec, self.config, self.catalogue, self.enricher = rec, config, catalogue, enricher
        self.states: dict[str, bytes] = {}
        self.lists: dict[str, Held] = {}

    def start(self, states: dict[str, bytes], lists: dict[str, Held]) -> None:
        self.states, self.lists = dict(states), dict(lists)

    def window(self, t: float) -> None:
        if self.catalogue is not None:
            self.catalogue.add(self.rec, self.catalogue.released_by(t))

    def held(self, users, ts) -> list[Held | None]:
        return [self.lists.get(u) for u in users]

    def update(self, users, items, ts, offsets) -> None:
        if self.catalogue is not None:  # released inside this window, consumed before its end
            self.catalogue.add(self.rec, items)
        _apply(self.rec, self.config, self.enricher, self.states, self.lists, users, items, ts, offsets)


class OnlinePipeline(PipelineSystem):
    """:class:`PipelineSystem` with the worker's drift monitor, fine-tune and hot reload (module docstring).
    ``model_dir``: the served model's directory (the fine-tune reads it, as the worker's does)."""

    def __init__(self, rec, config: PipelineConfig, model_dir: str | Path, work_dir: str | Path, settings,
                 catalogue: Catalogue | None = None):
        from stream_rec.learning.finetune import DriftFinetuner
        from stream_rec.recsys.enricher import Enricher

        # the worker's enricher with the online monitor and the ring buffer of recent events; reasons and
        # interests off (they only annotate records; the lists are the same)
        enricher = Enricher(settings, recent_events=settings.drift_recent_events)
        enricher.explain, enricher.interests_top = False, 0
        super().__init__(rec, config, catalogue, enricher)
        self.model_dir = Path(model_dir)
        self.finetuner = DriftFinetuner(Path(work_dir), lambda: self.model_dir, lambda: list(enricher.recent or ()),
                                        cooldown_s=settings.drift_finetune_cooldown_s)
        self.cooldown_s = settings.drift_finetune_cooldown_s
        self.last_start = -np.inf  # stream time of the last fine-tune
        self.alarms_seen = 0
        self.pending: tuple[float, object, Path] | None = None  # (swap at stream time, model, its dir)
        self.finetunes: list[dict] = []

    def start(self, states, lists, recent: Sequence[dict] = ()) -> None:
        super().start(states, lists)
        for user, held in lists.items():  # the lists the worker sent before T are graded by the monitor
            self.enricher.monitor.record(user, held.items)
        if self.enricher.recent is not None:
            self.enricher.recent.extend(recent)

    def update(self, users, items, ts, offsets) -> None:
        if self.pending is not None and min(ts) >= self.pending[0]:
            self._swap()
        super().update(users, items, ts, offsets)
        alarms = self.enricher.monitor.alarms
        if len(alarms) > self.alarms_seen:
            self.alarms_seen = len(alarms)
            if self.pending is None and max(ts) - self.last_start >= self.cooldown_s:
                self._finetune(max(ts), alarms[-1])

    def _finetune(self, t: float, alarm) -> None:
        from stream_rec.model.recommender import Recommender

        self.last_start = t
        out, version, report = self.finetuner.run_now()
        new = Recommender.load(out, device="cpu")
        self.pending = (t + report.seconds, new, Path(out))
        self.finetunes.append({"t": t, "wall_seconds": round(report.seconds, 1),
                               "best_epoch": report.best_epoch, "users": report.users, "events": report.events,
                               "hit_rate_before": alarm.hit_rate_before, "hit_rate_after": alarm.hit_rate_after})
        log.info("drift fine-tune at %.0f: %s (best epoch %d, %.0f s)", t, version, report.best_epoch, report.seconds)

    def _swap(self) -> None:
        from stream_rec.worker.models import carry_live_items

        _, new, path = self.pending
        carry_live_items(self.rec, new)
        self.rec, self.model_dir, self.pending = new, path, None


class CadenceGRU:
    """The same model with lists refreshed every ``period_s`` (module docstring). It steps its own copy
    of every user's state (``Recommender.step``, float16 as the worker stores it)."""

    def __init__(self, rec, start: float, period_s: float, popularity: WindowPopularity,
                 catalogue: Catalogue | None = None, length: int = LIST_LENGTH):
        self.rec, self.catalogue, self.length = rec, catalogue, length
        self.lists = CadenceLists(start, period_s, popularity)
        self.hidden: dict[str, np.ndarray] = {}
        self.last_ts: dict[str, float] = {}
        self.seen: dict[str, set[str]] = {}

    def start(self, states: dict[str, bytes], seen: dict[str, set[str]]) -> None:
        for user, raw in states.items():
            st = decode_state(raw)
            self.hidden[user], self.last_ts[user] = st.hidden, st.last_timestamp
        self.seen = {u: set(s) for u, s in seen.items()}

    def window(self, t: float) -> None:
        if self.catalogue is not None:
            self.catalogue.add(self.rec, self.catalogue.released_by(t))

    def held(self, users, ts) -> list[Held]:
        held = self.lists.held(users, ts, lambda u: u in self.hidden, self._compute)
        if self.lists.period_s <= 0:  # a list of the state as it is since the user's last event: aged from it
            held = [Held(h.items, self.last_ts.get(u, h.computed_at)) for u, h in zip(users, held)]
        return held

    def _compute(self, users: list[str], bounds: list[float]) -> list[list[str]]:
        from stream_rec.model.gru import topk_excluding

        rec = self.rec
        late = [np.flatnonzero(rec.added_at > b).tolist() for b in bounds]  # not released at the boundary
        exclude = [[r for r in rec.rows_for(sorted(self.seen.get(u, ()))) if r] + lt for u, lt in zip(users, late)]
        scores = rec.score_rows(np.stack([self.hidden[u] for u in users]))
        values, rows = topk_excluding(scores, self.length, exclude, inplace=True)
        return ranked_ids(values, rows, [None] + rec.item_ids)

    def update(self, users, items, ts, offsets) -> None:
        if self.catalogue is not None:
            self.catalogue.add(self.rec, items)
        rec = self.rec
        states = np.stack([self.hidden[u] if u in self.hidden else rec.init_state(1)[0] for u in users])
        gaps = [max(0.0, t - self.last_ts[u]) if u in self.last_ts else 0.0 for u, t in zip(users, ts)]
        out = rec.step(states, rec.rows_for(items), gaps).astype(np.float16).astype(np.float32)
        for u, i, t, h in zip(users, items, ts, out):
            self.hidden[u], self.last_ts[u] = h, t
            self.seen.setdefault(u, set()).add(i)


class MarkovLive:
    """First-order transition counts of the training events (``model.evaluate.markov_scorer``: ties and
    unknown last items by training popularity), the list recomputed after every event."""

    def __init__(self, train_rows: Sequence[np.ndarray], row_of: dict[str, int], length: int = LIST_LENGTH):
        from stream_rec.model.evaluate import markov_scorer

        self.row_of, self.length = row_of, length
        self.ids = [None] * (len(row_of) + 1)
        for item, row in row_of.items():
            self.ids[row] = item
        self.scorer = markov_scorer(list(train_rows), len(row_of) + 1)
        self.history: dict[str, list[int]] = {}
        self.lists: dict[str, Held] = {}

    def start(self, sequences: dict[str, list[tuple[str, float]]]) -> None:
        users = list(sequences)
        for u in users:
            self.history[u] = [self.row_of[i] for i, _ in sequences[u] if i in self.row_of]
        for s in range(0, len(users), 512):
            part = users[s:s + 512]
            self._relist(part, [sequences[u][-1][1] for u in part])

    def window(self, t: float) -> None:
        pass

    def held(self, users, ts) -> list[Held | None]:
        return [self.lists.get(u) for u in users]

    def update(self, users, items, ts, offsets) -> None:
        for u, i in zip(users, items):
            if i in self.row_of:
                self.history.setdefault(u, []).append(self.row_of[i])
        self._relist(list(users), list(ts))

    def _relist(self, users: list[str], ts: list[float]) -> None:
        from stream_rec.model.evaluate import EvalCase
        from stream_rec.model.gru import topk_excluding

        cases = [EvalCase(u, np.asarray(self.history.get(u, [])[-1:], dtype=np.int64), None, 0) for u in users]
        values, rows = topk_excluding(self.scorer(cases), self.length, [self.history.get(u, []) for u in users])
        for u, t, items in zip(users, ts, ranked_ids(values, rows, self.ids)):
            self.lists[u] = Held(items, t)


class PopularityLive:
    """The most consumed items of the last 24 hours, at every event."""

    def __init__(self, popularity: WindowPopularity):
        self.popularity = popularity

    def window(self, t: float) -> None:
        pass

    def held(self, users, ts) -> list[Held]:
        return [Held(self.popularity.top(t), t) for t in ts]

    def update(self, users, items, ts, offsets) -> None:
        pass


def recent_events(log_: Log, stop: int, n: int) -> list[dict]:
    """The last ``n`` events before index ``stop`` as the worker's ring buffer holds them."""
    lo = max(0, stop - n)
    return [{"user_id": u, "item_id": i, "timestamp": float(t)}
            for u, i, t in zip(log_.users[lo:stop], log_.items[lo:stop], log_.ts[lo:stop])]


class WorkerLists:
    """The lists a real worker sent (``live_worker``): ``lists[(user, i)]`` followed the user's event i
    (``worker_lists``); ``sequences_before``: each user's events before the replay."""

    def __init__(self, lists: dict, sequences_before: dict):
        self.lists = lists
        self.count = {u: len(s) for u, s in sequences_before.items()}
        self.last_ts = {u: s[-1][1] for u, s in sequences_before.items()}

    def window(self, t: float) -> None:
        pass

    def held(self, users, ts) -> list[Held | None]:
        out = []
        for u in users:
            items = self.lists.get((u, self.count.get(u, 0) - 1))
            out.append(None if items is None else Held(items, self.last_ts[u]))
        return out

    def update(self, users, items, ts, offsets) -> None:
        for u, t in zip(users, ts):
            self.count[u] = self.count.get(u, 0) + 1
            self.last_ts[u] = t


def worker_lists(log_: Log, model_dir, rec, bootstrap: str | None = None, in_flight: int = 256,
                 progress: bool = True) -> dict:
    """Stream the whole log through a real ``stream-rec worker`` serving ``model_dir`` (on ``bootstrap``,
    or an embedded broker started for it), one list per event (``replay --order paced``), timestamps moved
    to end now (the gaps kept), and return every list it sent: ``{"lists": {(user, i): [item, ...]}, ...}``."""
    import asyncio
    import contextlib
    import tempfile
    import types

    from stream_rec.io.broker import EmbeddedBroker

    from .replay import shift_to_now, stream_through_worker

    seqs = shift_to_now(log_.sequences())
    flags = types.SimpleNamespace(order="paced", rate=0.0, in_flight=in_flight, event_type="view", max_events=0,
                                  batch_max_events=None, history_len=None, timeout_s=120.0, progress=progress)
    with contextlib.ExitStack() as stack:
        tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="temporal-worker-"))
        if bootstrap is None:
            bootstrap = stack.enter_context(EmbeddedBroker()).bootstrap
        run = asyncio.run(stream_through_worker(flags, bootstrap, seqs, list(seqs), model_dir, rec, Path(tmp),
                                                keep_lists=True))
    scorer = run["scorer"]
    return {"lists": scorer.lists, "events_streamed": run["events_streamed"], "finished": run["finished"],
            "lists_received": len(scorer.lists), "unmatched_records": scorer.unmatched,
            "wall_seconds": run["wall_seconds"],
            "events_per_s": round(run["events_streamed"] / max(run["drain_seconds"], 1e-9), 1)}
