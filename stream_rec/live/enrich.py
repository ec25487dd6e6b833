"""Issue 8's smarter-recommendation modules, live in the worker: one :class:`Enricher` per worker.

``process_batch(..., enricher=...)`` (stream_rec/pipeline.py) calls it at three points of a micro-batch:

1. ``is_negative(event)`` -- before the GRU steps: a ``dislike``/``skip`` event, or a ``rate`` event with
   ``value <= negative_rating_threshold`` (``recsys.feedback.is_negative``), is *not* stepped through the
   GRU and not appended to the user's history (it would move the state toward the item and make it
   "seen"); it is remembered as a negative instead (``remember_negatives``);
2. ``observe(...)`` -- the first new event of each user grades the list sent to that user before
   (online HR@k, ADWIN drift: ``recsys.drift.OnlineQualityMonitor``; metrics ONLINE_* / DRIFT_DETECTED);
3. ``finish(...)`` -- after the plain top-K: lists of users with recent negatives are re-scored with the
   item and its near neighbours pushed down (``recsys.feedback.negative_penalty``; the negatives
   themselves excluded), the optional MMR diversity re-rank and exposure cap (``recsys.rerank``) run,
   and every item gets a ``reason`` (``recsys.explain``) and the record an ``interests`` summary
   (``recsys.interests``).

Design decisions:

* **Negatives live in worker memory, not in the state codec.** The state codec (stream_rec/state.py)
  is versioned and shared with the changelog readers of stream_rec/faults.py; adding a field means a
  version 2 and a migration, which is not this module's to change. A flag hidden inside the history
  (a marker prefix on the item id, or a negated timestamp) would leak into ``history`` in the rec
  record, the re-warm replay and the gap feature. So the state keeps only positives (its meaning,
  "what the user consumed", is unchanged; a re-warm replays no negative) and the last
  ``negatives_per_user`` negative items per user are kept here, LRU-bounded by ``max_users``. The cost:
  a worker restart or a partition moving to another worker forgets recent dislikes (the GRU state,
  which never saw them, is right either way). Moving them into the state is a codec-v2 change.
* **Parity by default.** With ``mmr_lambda=1``, ``exposure_cap=0`` and no negatives the lists are the
  plain model's lists, item for item and score for score (only ``reason``/``interests`` are added), so
  the existing parity tests hold with the enricher on.
* **Item space.** Text vectors when the model has them (they work for items never trained on and are
  what "about the same thing" means to a user); the model's own item table for an ID-only model.
  Cached per (model object, its item table, catalog size): a hot-reloaded model or new / updated catalog
  items (``Recommender.add_items`` rebuilds the table) rebuild it on the next batch, without a hook in
  app.py.
* **Interests** need labels: MovieLens texts carry ``Genres: A, B.``, live catalog records a
  ``genre: X`` attribute; without either the field is left out.
* **Drift -> fine-tune** (``drift_finetune``) only when ``--model`` is a directory of model
  directories: the fine-tuned model is written there and the model watcher (live/models.py) hot-reloads
  it. The recent events come from a ring buffer of this worker's positive events.
"""

from __future__ import annotations

import logging
import re
from collections import OrderedDict, deque
from pathlib import Path
from typing import Sequence

import numpy as np

from ..recsys.explain import explain_batch
from ..recsys.feedback import is_negative, negative_penalty
from ..recsys.interests import InterestProfiler, genres_of
from ..recsys.rerank import ExposureWindow, mmr_rerank_scores
from ..recsys.vectors import centred, pad_rows, unit_rows

log = logging.getLogger(__name__)

_GENRE_ATTRIBUTE = re.compile(r"\bgenres?:\s*([^,.]+)", re.IGNORECASE)


def interest_labels(text: str) -> list[str]:
    """Labels of one item text: MovieLens ``Genres: A, B.``, else a catalog ``genre: X`` attribute."""
    found = genres_of(text)
    if found:
        return found
    return [m.strip() for m in _GENRE_ATTRIBUTE.findall(text or "") if m.strip()]


def title_of_text(text: str, fallback: str) -> str:
    """The title part of an item text (``Title. more text``), or ``fallback`` (the item id)."""
    head = (text or "").split(". ", 1)[0].strip().rstrip(".")
    return head or fallback


class Enricher:
    """Per-worker state and glue for negatives, re-ranking, reasons, interests and the quality monitor."""

    def __init__(self, settings=None, *, mmr_lambda: float = 1.0, mmr_candidates: int = 50,
                 exposure_cap: int = 0, exposure_window: int = 5000, explain: bool = True,
                 interests_top: int = 3, negative_rating_threshold: float = 2.0, negative_radius: float = 0.8,
                 negative_strength: float = 1.0, negatives_per_user: int = 20, max_users: int = 100_000,
                 online_k: int = 10, drift_delta: float = 0.002, on_drift=None, recent_events: int = 0,
                 export_metrics: bool = True):
        if settings is not None:  # Settings fields override the keyword defaults
            mmr_lambda, mmr_candidates = settings.mmr_lambda, settings.mmr_candidates
            exposure_cap, exposure_window = settings.exposure_cap, settings.exposure_window
            explain, interests_top = settings.explain, settings.interests_top
            negative_rating_threshold = settings.negative_rating_threshold
            negative_radius, negative_strength = settings.negative_radius, settings.negative_strength
            online_k, drift_delta = settings.top_k, settings.drift_delta
        if not 0.0 <= mmr_lambda <= 1.0:
            raise ValueError(f"mmr_lambda must be in [0, 1], got {mmr_lambda}")
        self.mmr_lambda, self.mmr_candidates = mmr_lambda, mmr_candidates
        self.exposure = ExposureWindow(exposure_window, exposure_cap) if exposure_cap > 0 else None
        self.explain, self.interests_top = explain, interests_top
        self.negative_rating_threshold = negative_rating_threshold
        self.negative_radius, self.negative_strength = negative_radius, negative_strength
        self.negatives_per_user, self.max_users = negatives_per_user, max_users
        self.negatives: OrderedDict[str, deque] = OrderedDict()  # user -> recent negative item ids
        self.recent = deque(maxlen=recent_events) if recent_events > 0 else None  # for a drift fine-tune
        from ..recsys.drift import OnlineQualityMonitor

        self.monitor = OnlineQualityMonitor(k=online_k, delta=drift_delta, max_users=max_users,
                                            on_drift=on_drift, export_metrics=export_metrics)
        self._space_key = None
        self._space: tuple[np.ndarray, np.ndarray | None, InterestProfiler | None] | None = None
        self._titles: list[str] = []

    @classmethod
    def from_settings(cls, settings) -> "Enricher":
        """The worker's enricher; wires the drift -> fine-tune callback when ``drift_finetune`` is on."""
        enricher = cls(settings, recent_events=settings.drift_recent_events if settings.drift_finetune else 0)
        if settings.drift_finetune:
            enricher.monitor.on_drift = drift_finetuner(settings, enricher)
        return enricher

    # --- 1. negatives ------------------------------------------------------------------------------
    def is_negative(self, event) -> bool:
        return is_negative(event.event_type, event.value, self.negative_rating_threshold)

    def remember_negatives(self, user_id: str, events: Sequence) -> None:
        """Keep the user's negative items (newest last, at most ``negatives_per_user``) and the recent
        positive events (for a drift fine-tune)."""
        for e in events:
            if self.is_negative(e):
                items = self.negatives.get(user_id)
                if items is None:
                    items = self.negatives[user_id] = deque(maxlen=self.negatives_per_user)
                if e.item_id in items:
                    items.remove(e.item_id)
                items.append(e.item_id)
                self.negatives.move_to_end(user_id)
                if len(self.negatives) > self.max_users:
                    self.negatives.popitem(last=False)
            elif self.recent is not None:
                self.recent.append({"user_id": user_id, "item_id": e.item_id, "timestamp": e.timestamp})

    def forget(self, user_id: str) -> None:
        """A ``delete_user`` event: drop the user's negatives and last list (their recent events in the
        fine-tune buffer are dropped as well)."""
        self.negatives.pop(user_id, None)
        self.monitor.last_lists.pop(user_id, None)
        if self.recent:
            kept = [e for e in self.recent if e["user_id"] != user_id]
            self.recent.clear()
            self.recent.extend(kept)

    def negative_items(self, user_id: str) -> list[str]:
        return list(self.negatives.get(user_id, ()))

    # --- 2. online quality -------------------------------------------------------------------------
    def observe(self, users: Sequence[str], first_events: Sequence) -> None:
        """Grade each user's first new event against the list sent before (negatives are not graded)."""
        graded = [(u, e.item_id) for u, e in zip(users, first_events) if not self.is_negative(e)]
        self.monitor.observe_batch([u for u, _ in graded], [i for _, i in graded])

    # --- 3. lists, reasons, interests --------------------------------------------------------------
    def item_space(self, model) -> tuple[np.ndarray, np.ndarray | None, InterestProfiler | None]:
        """(unit vectors for similarity [N+1, d], MMR vectors centred once, interest profiler or None)."""
        key = (model, getattr(model, "_table", None), model.n_items)  # add_items replaces ``_table``
        if self._space_key is None or any(a is not b for a, b in zip(key[:2], self._space_key[:2])) \
                or key[2] != self._space_key[2]:
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
            self._titles = [""] + [title_of_text(t, i) for i, t in zip(model.item_ids, model.item_texts)]
            self._space = (unit_rows(vectors), centred(vectors) if self.mmr_lambda < 1.0 else None, profiler)
            self._space_key = key
        return self._space

    def finish(self, model, users: Sequence[str], states: Sequence, pending: Sequence[Sequence],
               hiddens: Sequence[np.ndarray], exclude: list[list[int]], lists: list[list[tuple[str, float]]],
               k: int, query_vectors: dict[int, np.ndarray], batch_queries: dict[int, np.ndarray],
               context_alpha: float = 1.0) -> tuple[list[list[tuple[str, float]]], list[dict]]:
        """Final lists and the extra record fields of each user: ``{"reasons": [...], "interests": [...]}``.

        ``lists`` are the plain lists (model top-K, query-boosted where a query was given); only users
        with negatives, or every user when MMR / the exposure cap is on, are re-scored here.
        ``pending[n]`` = user n's new (batch index, event) pairs, ``query_vectors`` = user position ->
        the vector of the query that counts, ``batch_queries`` = batch index -> query vector."""
        from ..recsys.context import context_text

        query_texts = {n: context_text(next(e for i, e in reversed(pending[n]) if i in batch_queries).context)
                       for n in query_vectors}
        vectors, mmr_vectors, profiler = self.item_space(model)
        negatives = [[r for r in model.rows_for(self.negative_items(u)) if r] for u in users]
        rerank_all = self.mmr_lambda < 1.0 or self.exposure is not None
        todo = [n for n in range(len(users)) if rerank_all or negatives[n]]
        if todo:
            lists = list(lists)
            scores = model.score_rows(np.stack([hiddens[n] for n in todo])).cpu().numpy()
            asked = [j for j, n in enumerate(todo) if n in query_vectors]
            if asked and context_alpha != 0.0:
                from ..recsys.context import context_boost

                scores[asked] = context_boost(scores[asked], np.stack([query_vectors[todo[j]] for j in asked]),
                                              model.model.text_vectors.detach().cpu().numpy(), context_alpha)
            scores = negative_penalty(scores, [negatives[n] for n in todo], vectors, self.negative_strength,
                                      self.negative_radius)
            excluded = [list(exclude[n]) + negatives[n] for n in todo]
            if rerank_all:
                rows = mmr_rerank_scores(scores, mmr_vectors if mmr_vectors is not None else vectors, k,
                                         self.mmr_lambda, self.mmr_candidates, excluded, self.exposure, centre=False)
            else:  # negatives only: a plain top-k of the penalised scores (MMR with lambda 1 is the same list)
                import torch

                from ..model.gru import topk_excluding

                _, top = topk_excluding(torch.from_numpy(np.ascontiguousarray(scores)), k, excluded)
                rows = top.numpy()
            for j, n in enumerate(todo):
                lists[n] = [(model.item_ids[r - 1], float(scores[j, r])) for r in rows[j].tolist()
                            if r and np.isfinite(scores[j, r])]
        extras = [{} for _ in users]
        history = pad_rows([[r for r in model.rows_for(st.seen_items()) if r] for st in states])
        rec_rows = pad_rows([model.rows_for([i for i, _ in items]) for items in lists])
        if self.explain and len(users):
            q = np.zeros((len(users), vectors.shape[1]), dtype=np.float32)
            texts = [None] * len(users)
            use_query = query_vectors and vectors.shape[1] == next(iter(query_vectors.values())).shape[-1]
            if use_query:
                for n, vec in query_vectors.items():
                    q[n], texts[n] = vec, query_texts.get(n)
            reasons = explain_batch(rec_rows, history, vectors, self._titles,
                                    query_vectors=q if use_query else None, queries=texts)
            for n, items in enumerate(lists):
                extras[n]["reasons"] = reasons[n][:len(items)]
        if profiler is not None and len(users):
            for n, found in enumerate(profiler.summarise(history, top=self.interests_top)):
                if found:
                    extras[n]["interests"] = [label for label, _ in found]
        self.monitor.record_batch(users, [[i for i, _ in items] for items in lists])
        return lists, extras


def drift_finetuner(settings, enricher: Enricher):
    """``recsys.finetune.DriftFinetuner`` writing into ``settings.model`` (a directory of model
    directories, watched by the hot-reload), or None (with a warning) when that is not possible."""
    from ..model.recommender import resolve_model_dir
    from ..recsys.finetune import DriftFinetuner

    if not settings.model:
        log.warning("drift_finetune is on but no --model directory is given: drift is only reported")
        return None
    models_dir = Path(settings.model)
    try:
        if resolve_model_dir(models_dir) == models_dir:
            log.warning("drift_finetune needs --model to be a directory of model directories (got a model "
                        "directory): drift is only reported")
            return None
    except Exception as exc:
        log.warning("drift_finetune: %s: drift is only reported", exc)
        return None
    return DriftFinetuner(models_dir, lambda: resolve_model_dir(models_dir), lambda: list(enricher.recent or ()),
                          cooldown_s=settings.drift_finetune_cooldown_s)
