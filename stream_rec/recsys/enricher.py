"""The worker's smarter lists: one :class:`Enricher` per worker holds what the recsys stages need
between micro-batches (the exposure window, the item space of the served model, a view of the users'
negatives, the online quality monitor) and composes the stages.

``process_batch(..., enricher=...)`` (stream_rec/pipeline.py) calls it at three points of a micro-batch:

1. ``is_negative(event)`` -- before the GRU steps: a ``dislike``/``skip`` event, or a ``rate`` event with
   ``value <= negative_rating_threshold`` (``feedback.is_negative``), is *not* stepped through the GRU
   and not appended to the user's history (it would move the state toward the item and make it
   "seen"); it is added to the user's ``UserState.negatives`` instead (``remember_negatives``);
2. ``observe(...)`` -- the first new event of each user grades the list sent to that user before
   (online HR@k, ADWIN drift: ``learning.drift.OnlineQualityMonitor``; metrics ONLINE_* / DRIFT_DETECTED);
3. ``finish(batch, lists)`` -- after the plain top-K (``ranking.plain_lists``): users with a query,
   recent negatives or a diversity lambda below 1 (every user, with the exposure cap) are re-scored
   through the stages (``context.boost_queries``, ``feedback.NegativeFeedback``; the negatives
   themselves excluded), then picked by MMR with the exposure cap (``rerank``; lambda: the worker's
   ``mmr_lambda``, or the event's ``context.mmr_lambda``) or a plain top-k; every item gets a
   ``reason`` (``explain``) and the record an ``interests`` summary (``interests``).

Design decisions:

* **Negatives live in the user's state** (``UserState.negatives``, state codec version 2,
  stream_rec/state.py): the RocksDB table and its changelog, so a restarted worker, or the worker a
  partition moves to, still pushes a user's recent dislikes down. They are a list apart from
  ``history``, which keeps only positives (its meaning, "what the user consumed", is unchanged: a
  re-warm replays no negative, the record's ``history`` and the gap feature never see one). The last
  ``negatives_per_user`` items are kept, newest last; a negative event for an item already there moves
  it to the end. ``self.negatives`` is only a view of the lists this worker last wrote (LRU-bounded by
  ``max_users``, for ``negative_items`` and debugging): ``finish`` reads the states.
* **Per-request diversity.** An event's ``context.mmr_lambda`` (a number in [0, 1], checked by
  stream_rec/validation.py) replaces the worker's ``mmr_lambda`` for the list that event's user gets in
  this micro-batch (the user's newest event in the batch that carries one counts, as for
  ``context.text``). Users whose lambda is 1 and who have no negatives keep the plain list.
* **Parity by default.** With ``mmr_lambda=1``, ``exposure_cap=0`` and no negatives the lists are the
  plain model's lists, item for item and score for score (only ``reason``/``interests`` are added), so
  the existing parity tests hold with the enricher on.
* **Item space.** Text vectors when the model has them (they work for items never trained on and are
  what "about the same thing" means to a user); the model's own item table for an ID-only model.
  Cached per (model object, its item table, catalog size): a hot-reloaded model or new / updated catalog
  items (``Recommender.add_items`` rebuilds the table) rebuild it on the next batch, without a hook in
  the worker. The cache is one immutable :class:`ItemSpace`, replaced whole: lookups rank on another
  thread than the stream (worker/listener.py) and use the same enricher.
* **Interests** need labels: MovieLens texts carry ``Genres: A, B.``, live catalog records a
  ``genre: X`` attribute; without either the field is left out.
* **Drift -> fine-tune** (``drift_finetune``): the Enricher only keeps a ring buffer of this worker's
  recent positive events (``recent``); the decision to fine-tune is taken beside the stream
  (``learning.finetune.follow_alarms``, a worker task reading ``monitor.alarms``).
"""

from __future__ import annotations

import dataclasses
import logging
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..learning.drift import OnlineQualityMonitor
from .context import boost_queries
from .explain import explain_batch, title_of_text
from .feedback import NegativeFeedback, is_negative
from .interests import InterestProfiler, interest_labels
from .ranking import RankBatch, lists_of_rows, rescore, top_k_lists
from .rerank import ExposureWindow, mmr_rerank_scores
from .vectors import centred, pad_rows, unit_rows

log = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class ItemSpace:
    """The item vectors of one catalogue as the stages use them, for the (model, item table, catalogue size)
    in ``key``. Replaced whole, never changed in place: the stream's micro-batches and the lookups (ranked
    on the HTTP listener's thread, worker/listener.py) each take one and see vectors and titles of the same
    catalogue, whichever of them built it."""

    key: tuple
    unit: np.ndarray  # unit vectors for similarity [N+1, d]
    mmr: np.ndarray | None  # centred for MMR (None until a list needs it)
    profiler: InterestProfiler | None
    raw: np.ndarray  # before unit_rows
    titles: list[str]  # by row, row 0 = padding


class Enricher:
    """Per-worker state and glue for negatives, re-ranking, reasons, interests and the quality monitor."""

    def __init__(self, settings=None, *, mmr_lambda: float = 1.0, mmr_candidates: int = 50,
                 exposure_cap: int = 0, exposure_window: int = 5000, explain: bool = True,
                 interests_top: int = 3, negative_rating_threshold: float = 2.0, negative_radius: float = 0.8,
                 negative_strength: float = 1.0, negatives_per_user: int = 20, max_users: int = 100_000,
                 online_k: int = 10, drift_delta: float = 0.002, recent_events: int = 0,
                 export_metrics: bool = True):
        if settings is not None:  # Settings fields override the keyword defaults
            mmr_lambda, mmr_candidates = settings.mmr_lambda, settings.mmr_candidates
            exposure_cap, exposure_window = settings.exposure_cap, settings.exposure_window
            explain, interests_top = settings.explain, settings.interests_top
            negative_rating_threshold = settings.negative_rating_threshold
            negative_radius, negative_strength = settings.negative_radius, settings.negative_strength
            negatives_per_user = settings.negatives_per_user
            online_k, drift_delta = settings.top_k, settings.drift_delta
        if not 0.0 <= mmr_lambda <= 1.0:
            raise ValueError(f"mmr_lambda must be in [0, 1], got {mmr_lambda}")
        self.mmr_lambda, self.mmr_candidates = mmr_lambda, mmr_candidates
        self.exposure = ExposureWindow(exposure_window, exposure_cap) if exposure_cap > 0 else None
        self.explain, self.interests_top = explain, interests_top
        self.negative_rating_threshold = negative_rating_threshold
        self.negative_radius, self.negative_strength = negative_radius, negative_strength
        self.negatives_per_user, self.max_users = negatives_per_user, max_users
        self.negatives: OrderedDict[str, list[str]] = OrderedDict()  # user -> last written negatives (a view)
        self.recent = deque(maxlen=recent_events) if recent_events > 0 else None  # for a drift fine-tune
        self.monitor = OnlineQualityMonitor(k=online_k, delta=drift_delta, max_users=max_users,
                                            export_metrics=export_metrics)
        self._space: ItemSpace | None = None  # replaced whole, never changed in place (see ItemSpace)

    @classmethod
    def from_settings(cls, settings) -> "Enricher":
        """The worker's enricher (keeping recent events for a fine-tune when ``drift_finetune`` is on)."""
        return cls(settings, recent_events=settings.drift_recent_events if settings.drift_finetune else 0)

    # --- 1. negatives ------------------------------------------------------------------------------
    def is_negative(self, event) -> bool:
        return is_negative(event.event_type, event.value, self.negative_rating_threshold)

    def remember_negatives(self, user_id: str, events: Sequence, negatives: Sequence[str] = ()) -> list[str]:
        """The user's negatives after ``events``: ``negatives`` (from the user's state, newest last) plus
        the negative items among ``events`` (an item already there moves to the end; a later positive
        event on an item takes it out again), at most
        ``negatives_per_user``. The caller stores the result in the user's state. Also keeps the recent
        positive events (for a drift fine-tune)."""
        items = list(negatives)
        for e in events:
            if self.is_negative(e):
                if e.item_id in items:
                    items.remove(e.item_id)
                items.append(e.item_id)
            else:
                if e.item_id in items:  # consumed after all (a view, a good rating): no longer a negative
                    items.remove(e.item_id)
                if self.recent is not None:
                    self.recent.append({"user_id": user_id, "item_id": e.item_id, "timestamp": e.timestamp})
        items = items[-self.negatives_per_user:] if self.negatives_per_user > 0 else []
        if items:
            self.negatives[user_id] = items
            self.negatives.move_to_end(user_id)
            if len(self.negatives) > self.max_users:
                self.negatives.popitem(last=False)
        else:
            self.negatives.pop(user_id, None)
        return items

    def forget(self, user_id: str) -> None:
        """A ``delete_user`` event: drop this worker's view of the user's negatives (the state holding them
        is erased by process_batch) and last list (their recent events in the fine-tune buffer too)."""
        self.negatives.pop(user_id, None)
        self.monitor.last_lists.pop(user_id, None)
        if self.recent:
            kept = [e for e in self.recent if e["user_id"] != user_id]
            self.recent.clear()
            self.recent.extend(kept)

    def negative_items(self, user_id: str) -> list[str]:
        """The negatives this worker last wrote to the user's state (empty after a restart until the
        user's next event; the state is what ``finish`` reads)."""
        return list(self.negatives.get(user_id, ()))

    def request_lambda(self, events: Sequence) -> float:
        """MMR lambda for one user's list: the newest ``context.mmr_lambda`` among the user's new events,
        else the worker's ``mmr_lambda``."""
        for e in reversed(events):
            lam = e.context.get("mmr_lambda") if e.context else None
            if lam is not None:
                return float(lam)
        return self.mmr_lambda

    # --- 2. online quality -------------------------------------------------------------------------
    def observe(self, users: Sequence[str], first_events: Sequence) -> None:
        """Grade each user's first new event against the list sent before (negatives are not graded)."""
        graded = [(u, e.item_id) for u, e in zip(users, first_events) if not self.is_negative(e)]
        self.monitor.observe_batch([u for u, _ in graded], [i for _, i in graded])

    # --- 3. lists, reasons, interests --------------------------------------------------------------
    def space_of(self, model) -> "ItemSpace":
        """The :class:`ItemSpace` of ``model``'s catalogue as it is now (built when the model, its item table
        or its size changed since the last one)."""
        key = (model, getattr(model, "_table", None), model.n_items)  # add_items replaces ``_table``
        space = self._space
        if space is None or space.key[0] is not key[0] or space.key[1] is not key[1] or space.key[2] != key[2]:
            space = self._space = self._build_space(model, key)
        return space

    def _build_space(self, model, key: tuple) -> "ItemSpace":
        import torch

        with torch.no_grad():
            text = model.model.text_vectors.detach().cpu().numpy()
            use_text = text.ndim == 2 and text.shape[1] > 0 and bool(np.abs(text[1:]).sum() > 0)
            vectors = text if use_text else model._table.detach().cpu().numpy()  # the model's item table
        profiler = None
        if self.interests_top > 0 and use_text:
            labels = [interest_labels(t) for t in model.item_texts]
            if any(labels):
                try:
                    profiler = InterestProfiler.from_genres([f"Genres: {', '.join(g)}." for g in labels], text)
                except ValueError as exc:
                    log.info("interests off for model %s: %s", model.version, exc)
        # titles by row (row 0 = padding), computed once: rendering reasons is per item per record
        titles = [""] + [title_of_text(t, i) for i, t in zip(model.item_ids, model.item_texts)]
        return ItemSpace(key, unit_rows(vectors), centred(vectors) if self.mmr_lambda < 1.0 else None, profiler,
                         vectors, titles)

    def item_space(self, model) -> tuple[np.ndarray, np.ndarray | None, InterestProfiler | None]:
        """(unit vectors for similarity [N+1, d], MMR vectors centred once, interest profiler or None)."""
        space = self.space_of(model)
        return space.unit, space.mmr, space.profiler

    def mmr_vectors(self, model) -> np.ndarray:
        """The centred item vectors for MMR (computed on first need when the worker's lambda is 1 and a
        request asks for diversity; kept until the item space changes)."""
        space = self.space_of(model)
        if space.mmr is None:
            space = self._space = dataclasses.replace(space, mmr=centred(space.raw))
        return space.mmr

    def finish(self, batch: RankBatch, lists: list[list[tuple[str, float]]], record: bool = True
               ) -> tuple[list[list[tuple[str, float]]], list[dict]]:
        """Final lists and the extra record fields of each user: ``{"reasons": [...], "interests": [...]}``.

        ``lists`` are the plain lists (``ranking.plain_lists``); only users with a query, negatives or a
        lambda below 1, or every user when the exposure cap is on, are re-scored here. ``record``: the lists
        are sent (the exposure window and the quality monitor count them); False for a lookup."""
        space = self.space_of(batch.model)
        vectors, profiler = space.unit, space.profiler
        feedback = NegativeFeedback(vectors, self.negative_strength, self.negative_radius)
        lams = np.array([self.request_lambda(events) for events in batch.events], dtype=np.float64)
        positions = [n for n in range(len(batch.users)) if self.exposure is not None or lams[n] < 1.0
                     or n in batch.queries or feedback.rows(batch, n)]
        lists = list(lists)
        if positions:
            for n, items in zip(positions, self._rescored(batch, positions, lams[positions], feedback, record)):
                lists[n] = items
        extras = self.annotate(batch, lists, vectors, profiler, space.titles)
        if record:
            self.monitor.record_batch(batch.users, [[i for i, _ in items] for items in lists])
        return lists, extras

    def _rescored(self, batch: RankBatch, positions: list[int], lams: np.ndarray,
                  feedback: NegativeFeedback, record: bool = True) -> list[list[tuple[str, float]]]:
        """Lists of the users at ``positions``: stages, then MMR (with the exposure cap) or top-k."""
        scores = rescore(batch, positions, [boost_queries, feedback])
        excluded = [list(batch.seen[n]) + feedback.rows(batch, n) for n in positions]
        diverse = bool((lams < 1.0).any())  # one lambda per user: the worker's or the request's
        if self.exposure is None and not diverse:  # MMR with lambda 1 is the top-k
            return top_k_lists(batch.model, scores, batch.k, excluded)
        rows = mmr_rerank_scores(scores, self.mmr_vectors(batch.model) if diverse else feedback.item_vectors,
                                 batch.k, lams, self.mmr_candidates, excluded, self.exposure, centre=False,
                                 record=record)
        return lists_of_rows(batch.model, scores, rows)

    def annotate(self, batch: RankBatch, lists: list[list[tuple[str, float]]], vectors: np.ndarray,
                 profiler: InterestProfiler | None, titles: Sequence[str]) -> list[dict]:
        """The extra record fields of each user: a reason per item, the user's interests."""
        extras = [{} for _ in batch.users]
        if not len(batch.users):
            return extras
        history = pad_rows(batch.seen)
        if self.explain:
            rec_rows = pad_rows([batch.model.rows_for([i for i, _ in items]) for items in lists])
            q = np.zeros((len(batch.users), vectors.shape[1]), dtype=np.float32)
            texts = [None] * len(batch.users)
            use_query = batch.queries and vectors.shape[1] == next(iter(batch.queries.values())).shape[-1]
            if use_query:
                for n, vec in batch.queries.items():
                    q[n], texts[n] = vec, batch.query_texts.get(n)
            reasons = explain_batch(rec_rows, history, vectors, titles,
                                    query_vectors=q if use_query else None, queries=texts, unit=True)
            for n, items in enumerate(lists):
                extras[n]["reasons"] = reasons[n][:len(items)]
        if profiler is not None:
            for n, found in enumerate(profiler.summarise(history, top=self.interests_top)):
                if found:
                    extras[n]["interests"] = [label for label, _ in found]
        return extras
