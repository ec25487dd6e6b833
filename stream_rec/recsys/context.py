"""Context-aware scoring: a request's free-text context (``event.context.text``, e.g. a search query)
moves the list toward matching items right away, without waiting for the GRU state to catch up.

    score'[b, i] = score[b, i] + alpha * scale_b * z_b(cos(text_i, query_b))

``z_b`` standardises the query's cosines over the catalog (mean 0, std 1), and ``scale_b`` is the
user's score standard deviation (``score_scale``): ``alpha = 1`` means "one standard deviation of the
query match is worth one standard deviation of the model score", whatever the logit scale of the model
or the cosine range of the encoder (MiniLM cosines of unrelated texts sit around 0.1-0.3, not 0).
Fusion happens at scoring time rather than in the GRU input: the trained GRU never saw queries, and a
query describes this request, not a lasting change of taste. The time gap between events is already a
GRU input feature (``HybridGRU`` ``use_time_gap``).

Queries are encoded by the same text encoder as the items (``model.encoder.TextEncoder``), so they live
in the item text space; ``encode_queries`` batches a micro-batch's queries into one encoder call (the
worker encodes them through its encoding queue instead). ``boost_queries`` is the scoring stage
(``recsys.ranking``) that applies ``context_boost`` to the users of a batch who asked something.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np

from .. import boundedjson
from .vectors import score_scale, unit_rows

if TYPE_CHECKING:
    from .ranking import RankBatch


def context_text(context: dict | None) -> str:
    """The free text of an event's ``context`` object ('' when there is none)."""
    if not context:
        return ""
    text = context.get("text") or context.get("query") or ""
    return text.strip() if isinstance(text, str) else ""


def context_text_of(raw: bytes | None, max_bytes: int = 16384) -> str:
    """The ``context.text`` of a raw event value ('' when none, or when the value is not an event the
    validator could accept: over ``max_bytes``, not bounded JSON). Cheap for the common case: records
    without the word ``context`` are not parsed twice."""
    if not raw or b'"context"' not in raw:
        return ""
    try:
        doc = boundedjson.parse(raw, max_bytes=max_bytes)
    except boundedjson.JSONRejected:
        return ""
    return context_text(doc.get("context")) if isinstance(doc, dict) and isinstance(doc.get("context"), dict) else ""


def encode_queries(encoder, texts: Sequence[str]) -> np.ndarray:
    """[B, d] query vectors; rows of requests without a query are zero (= no boost).
    ``encoder`` is a ``TextEncoder`` (anything with ``encode(texts) -> [n, d]`` and ``dim``)."""
    out = np.zeros((len(texts), encoder.dim), dtype=np.float32)
    idx = [i for i, t in enumerate(texts) if t]
    if idx:
        out[idx] = encoder.encode([texts[i] for i in idx])
    return out


def context_boost(scores: np.ndarray, query_vectors: np.ndarray, item_text_vectors: np.ndarray,
                  alpha: float = 1.0) -> np.ndarray:
    """Scores with each request's query match added.

    scores [B, N+1] (row 0 = padding), query_vectors [B, d] (zero row = no query), item_text_vectors
    [N+1, d]. Returns a new array; rows without a query are unchanged."""
    scores = np.asarray(scores, dtype=np.float32)
    q = unit_rows(query_vectors)
    if q.shape[0] != scores.shape[0]:
        raise ValueError(f"{q.shape[0]} query vectors for {scores.shape[0]} score rows")
    has_query = np.abs(q).sum(axis=1) > 0
    if not has_query.any() or alpha == 0.0:
        return scores.copy()
    items = unit_rows(item_text_vectors)
    cos = q[has_query] @ items[1:].T  # [b, N]; row 0 (padding) left out of the statistics
    z = (cos - cos.mean(axis=1, keepdims=True)) / np.maximum(cos.std(axis=1, keepdims=True), 1e-6)
    out = scores.copy()
    out[has_query, 1:] += alpha * score_scale(scores[has_query]) * z
    return out


def boost_queries(scores: np.ndarray, positions: list[int], batch: "RankBatch") -> np.ndarray:
    """Scoring stage: the rows of users who sent a query get ``context_boost`` with ``batch.context_alpha``
    (in the item text space of ``batch.model``); other rows are unchanged.  [b, N+1] -> [b, N+1]"""
    asked = [j for j, n in enumerate(positions) if n in batch.queries]
    if not asked or batch.context_alpha == 0.0:
        return scores
    scores[asked] = context_boost(scores[asked], np.stack([batch.queries[positions[j]] for j in asked]),
                                  batch.model.model.text_vectors.detach().cpu().numpy(), batch.context_alpha)
    return scores
