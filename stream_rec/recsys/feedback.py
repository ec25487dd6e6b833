"""Negative feedback: a dislike, a skip or a low rating pushes the item *and its near neighbours* down
for that user, instead of being fed to the GRU like a view.

* ``is_negative`` decides from the event alone: ``event_type`` in {dislike, skip}, or a ``rate`` event
  whose ``value`` is at or below ``rating_threshold`` (2 on a 1..5 scale by default). A negative event
  should not be stepped through the GRU (it would move the state *toward* the item).
* ``negative_penalty`` lowers every item's score by
  ``strength * scale_b * max_m relu((cos(item, neg_m) - radius) / (1 - radius))``: the disliked item
  itself loses ``strength`` standard deviations of the user's score distribution (``score_scale``), items
  within cosine ``radius`` of it are untouched, neighbours in between lose proportionally. Several
  negatives combine by max, not sum, so ten dislikes of one genre do not bury the catalog.
* The item space is the caller's choice: text vectors (work for items never trained on) or the model's
  item table (``HybridGRU.item_vectors()``, which knows substitutes). Defaults (text space,
  ``radius=0.8``, ``strength=1``) are conservative on purpose: on ML-100K (docs/SMARTER.md) a wide
  neighbourhood (radius 0.5, or the model space) *lowers* HR@10 of the liked next items -- people keep
  watching films similar to ones they rated low -- while radius 0.8 in text space only touches
  near-duplicates (sequels, other seasons) and costs nothing there. The measured gain on ML-100K comes
  from not stepping negatives through the GRU.

Pure function over the score matrix the worker already has: one [U, M, N+1] similarity tensor for the
U users of the batch that have negatives (at most M each); users without negatives cost nothing.
:class:`NegativeFeedback` is the scoring stage (``recsys.ranking``) that applies it to a batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .vectors import pad_rows, score_scale, unit_rows

if TYPE_CHECKING:
    from .ranking import RankBatch

NEGATIVE_EVENT_TYPES = frozenset({"dislike", "skip"})
RATING_EVENT_TYPES = frozenset({"rate", "rating"})  # events whose ``value`` is a rating


def is_negative(event_type: str | None, value: float | None = None, rating_threshold: float = 2.0) -> bool:
    """A negative signal: an explicit negative event type, or a rating at or below the threshold."""
    if event_type and event_type.lower() in NEGATIVE_EVENT_TYPES:
        return True
    if value is not None and (event_type is None or event_type.lower() in RATING_EVENT_TYPES) and np.isfinite(value):
        return float(value) <= rating_threshold
    return False


def negative_penalty(scores: np.ndarray, negative_rows: list[list[int]], item_vectors: np.ndarray,
                     strength: float = 1.0, radius: float = 0.8) -> np.ndarray:
    """Scores with each user's recent negatives (and their neighbours) pushed down.

    scores [B, N+1] (row 0 = padding), negative_rows[b] = item rows the user gave negative feedback on,
    item_vectors [N+1, d]. Returns a new [B, N+1] array; users without negatives are unchanged."""
    if not 0.0 <= radius < 1.0:
        raise ValueError(f"radius must be in [0, 1), got {radius}")
    scores = np.asarray(scores, dtype=np.float32)
    if len(negative_rows) != scores.shape[0]:
        raise ValueError(f"{len(negative_rows)} negative lists for {scores.shape[0]} score rows")
    if not any(len(r) for r in negative_rows):
        return scores.copy()
    users = [b for b, r in enumerate(negative_rows) if len(r)]  # only they pay for the similarity
    vecs = unit_rows(item_vectors)  # [N+1, d]
    neg = pad_rows([list(negative_rows[b]) for b in users])  # [U, M]
    U, M = neg.shape
    # one 2-D matmul (BLAS); numpy's stacked 3-D @ 2-D takes a non-BLAS loop, far slower (DEVELOPERS.md)
    sim = (vecs[neg].reshape(U * M, -1) @ vecs.T).reshape(U, M, -1)  # [U, M, N+1]
    closeness = np.clip((sim - radius) / (1.0 - radius), 0.0, 1.0)
    closeness = np.where((neg > 0)[:, :, None], closeness, 0.0).max(axis=1)  # [U, N+1]
    for u, b in enumerate(users):  # the disliked item itself: full penalty whatever its norm
        closeness[u, list(negative_rows[b])] = 1.0
    out = scores.copy()
    out[users] -= strength * score_scale(scores[users]) * closeness.astype(np.float32)
    return out


@dataclass
class NegativeFeedback:
    """Scoring stage: each user's recent negatives (``batch.negatives``) and their neighbours in
    ``item_vectors`` [N+1, d] pushed down (``negative_penalty``).  [b, N+1] -> [b, N+1]"""

    item_vectors: np.ndarray
    strength: float = 1.0
    radius: float = 0.8

    def rows(self, batch: "RankBatch", n: int) -> list[int]:
        """Item rows of the negatives of the user at position ``n`` (unknown items left out)."""
        negatives = batch.negatives[n] if batch.negatives else ()
        return [r for r in batch.model.rows_for(negatives) if r] if negatives else []

    def __call__(self, scores: np.ndarray, positions: list[int], batch: "RankBatch") -> np.ndarray:
        return negative_penalty(scores, [self.rows(batch, n) for n in positions], self.item_vectors,
                                self.strength, self.radius)
