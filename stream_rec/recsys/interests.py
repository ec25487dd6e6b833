"""A user's recent taste as a few readable interests ("Sci-Fi", "space", ...).

The user vector is the recency-weighted mean of the unit text vectors of their recent items (weights
halve every ``half_life`` events back). Each candidate label (genres, keywords) is encoded by the same
text encoder, and ranked by *lift*::

    lift(label) = cos(user_vector, label_vector) - cos(catalog_mean_vector, label_vector)

Raw cosine would name the same broad labels for everyone (every movie is a bit "Drama" to MiniLM);
subtracting the catalog's own affinity keeps what is specific to this user. One [B, d] x [d, L] matmul
per micro-batch, so the worker can put the profile in every rec record.
"""

from __future__ import annotations

import re
from typing import Iterable, Sequence

import numpy as np

from .vectors import unit_rows

_GENRES = re.compile(r"Genres?:\s*([^.]+)\.")


def labels_from_texts(texts: Iterable[str]) -> list[str]:
    """Candidate interest labels from item texts: the ``Genres: A, B.`` lists that ``data.movie_text``
    writes (MovieLens), in order of first appearance."""
    seen: dict[str, None] = {}
    for text in texts:
        m = _GENRES.search(text or "")
        if m:
            for g in m.group(1).split(","):
                if g.strip():
                    seen.setdefault(g.strip(), None)
    return list(seen)


def recency_weights(history_rows: np.ndarray, half_life: float) -> np.ndarray:
    """Weight of each history position (most recent last; padding 0 gets weight 0).  [B, L] -> [B, L]"""
    rows = np.asarray(history_rows)
    valid = rows > 0
    # age = number of real events after this one
    age = np.flip(np.cumsum(np.flip(valid, axis=1), axis=1), axis=1) - 1
    return np.where(valid, 0.5 ** (age / max(half_life, 1e-6)), 0.0)


class InterestProfiler:
    def __init__(self, labels: Sequence[str], label_vectors: np.ndarray, item_text_vectors: np.ndarray,
                 half_life: float = 10.0):
        if len(labels) != len(label_vectors):
            raise ValueError(f"{len(labels)} labels but {len(label_vectors)} label vectors")
        if not len(labels):
            raise ValueError("no interest labels: give some (e.g. genres) to describe users with")
        self.labels = list(labels)
        self.label_vectors = unit_rows(label_vectors)  # [L, d]
        self.item_vectors = unit_rows(item_text_vectors)  # [N+1, d]
        catalog_mean = unit_rows(self.item_vectors[1:].mean(axis=0))
        self.baseline = catalog_mean @ self.label_vectors.T  # [L]
        self.half_life = half_life

    @classmethod
    def from_encoder(cls, encoder, labels: Sequence[str], item_text_vectors: np.ndarray,
                     half_life: float = 10.0) -> "InterestProfiler":
        return cls(labels, encoder.encode_cached(list(labels), progress=False), item_text_vectors, half_life)

    def lifts(self, history_rows: np.ndarray) -> np.ndarray:
        """Lift of every label for every user.  [B, L_hist] -> [B, n_labels] (0 for an empty history)"""
        rows = np.asarray(history_rows, dtype=np.int64)
        w = recency_weights(rows, self.half_life)  # [B, L_hist]
        user = unit_rows(np.einsum("bl,bld->bd", w, self.item_vectors[rows]))
        empty = w.sum(axis=1) == 0
        out = user @ self.label_vectors.T - self.baseline
        out[empty] = 0.0
        return out

    def summarise(self, history_rows: np.ndarray, top: int = 3) -> list[list[tuple[str, float]]]:
        """The ``top`` labels with positive lift per user, best first (empty for an empty history)."""
        lift = self.lifts(history_rows)
        order = np.argsort(-lift, axis=1)[:, :top]
        return [[(self.labels[j], round(float(lift[b, j]), 4)) for j in order[b] if lift[b, j] > 0]
                for b in range(lift.shape[0])]
