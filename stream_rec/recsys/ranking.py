"""The ranking step of a micro-batch: what the stages see, and the plain top-K they start from.

Every user with new events gets the model's plain top-K (``Recommender.topk``, seen items excluded).
Users whose request or state asks for more -- a query in the event's context, recent negatives, a
diversity lambda below 1, the exposure cap -- are *re-scored*: their score rows go through the scoring
stages, then one selection turns scores into lists. A scoring stage has one protocol::

    stage(scores, positions, batch) -> scores        # [b, N+1] -> [b, N+1]

``scores`` are the model's scores of the users at ``positions`` of the batch (row 0 = padding); a stage
returns adjusted scores of the same shape and leaves the rows it has nothing to say about unchanged:
``context.boost_queries`` (a request's query) and ``feedback.NegativeFeedback`` (recent dislikes and
their neighbours). Selection (top-k here, or ``rerank``'s MMR with the exposure cap) and annotation
(``explain``'s reasons, ``interests``) produce lists and text rather than scores, so they are steps of
their own after the stages (``enricher.Enricher.finish``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np


@dataclass
class RankBatch:
    """What the ranking sees of one micro-batch: position n = the n-th user with new events."""

    model: Any  # the Recommender serving this batch
    users: Sequence[str]  # [B]
    hiddens: Sequence[np.ndarray]  # [B] x [H]: each user's state after this batch's events
    seen: list[list[int]]  # [B] item rows the user has seen (never recommended)
    k: int
    events: Sequence[Sequence[Any]] = ()  # [B] the user's new validated events in this batch, oldest first
    negatives: Sequence[Sequence[str]] = ()  # [B] the user's recent negative item ids (from the state)
    queries: dict[int, np.ndarray] = field(default_factory=dict)  # position -> vector of the user's newest query
    query_texts: dict[int, str] = field(default_factory=dict)  # position -> that query's text
    context_alpha: float = 1.0  # weight of a query in the list (0 = queries ignored)


ScoreStage = Callable[[np.ndarray, list[int], RankBatch], np.ndarray]


def plain_lists(batch: RankBatch) -> list[list[tuple[str, float]]]:
    """The model's top-k (item_id, score) of every user, seen items excluded."""
    return batch.model.topk(np.stack(batch.hiddens), batch.k, batch.seen)


def fresh_lists(batch: RankBatch, policy, ages_s: np.ndarray) -> tuple[list[list[tuple[str, float]]], list[set[str]]]:
    """The top-k of every user with the freshness policy (``freshness.fresh_topk``): up to ``policy.slots``
    items younger than ``policy.max_age_s`` (``ages_s``: [N+1] seconds since each row joined the catalogue)
    whose relevance passes the policy's bar.  -> (lists, per user the ids the policy put in)"""
    from .freshness import content_relevance, fresh_rows, fresh_topk

    scores = batch.model.score_rows(np.stack(batch.hiddens))
    fresh = fresh_rows(ages_s, policy.max_age_s)
    relevance = (content_relevance(batch.model.model.text_vectors, batch.seen, fresh, policy.profile_items)
                 if policy.by == "content" else None)
    result = fresh_topk(scores, batch.k, batch.seen, fresh, policy, relevance)
    ids = batch.model.item_ids
    lists = [[(ids[r - 1], float(v)) for v, r in zip(vs, rs) if r and np.isfinite(v)]
             for vs, rs in zip(result.scores, result.rows)]
    return lists, [{ids[r - 1] for r in rows} for rows in result.added]


def rescore(batch: RankBatch, positions: list[int], stages: Sequence[ScoreStage]) -> np.ndarray:
    """Scores [b, N+1] of the users at ``positions``, through ``stages`` in order."""
    scores = batch.model.score_rows(np.stack([batch.hiddens[n] for n in positions])).cpu().numpy()
    for stage in stages:
        scores = stage(scores, positions, batch)
    return scores


def top_k_lists(model, scores: np.ndarray, k: int, excluded: list[list[int]]) -> list[list[tuple[str, float]]]:
    """Top-k (item_id, score) of each score row [b, N+1] with the rows in ``excluded[j]`` left out."""
    import torch

    from ..model.gru import topk_excluding

    values, rows = topk_excluding(torch.from_numpy(np.ascontiguousarray(scores)), k, excluded)
    return [[(model.item_ids[r - 1], float(v)) for v, r in zip(vs, rs) if r != 0 and np.isfinite(v)]
            for vs, rs in zip(values.numpy(), rows.numpy())]


def lists_of_rows(model, scores: np.ndarray, rows: np.ndarray) -> list[list[tuple[str, float]]]:
    """(item_id, score) lists from chosen item rows [b, k] (0 = none) and their score rows [b, N+1]."""
    return [[(model.item_ids[r - 1], float(scores[j, r])) for r in rows[j].tolist() if r and np.isfinite(scores[j, r])]
            for j in range(len(rows))]
