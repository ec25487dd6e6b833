"""Small vector helpers shared by the recsys modules (one copy of each)."""

from __future__ import annotations

import numpy as np


def unit_rows(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Rows scaled to unit L2 norm (zero rows stay zero), float32.  [..., d] -> [..., d]"""
    x = np.asarray(x, dtype=np.float32)
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norm, eps)


def score_scale(scores: np.ndarray) -> np.ndarray:
    """Standard deviation of each row's finite scores (1.0 where undefined): the unit in which score
    adjustments are expressed, so a strength of 1 means "one standard deviation of this user's scores"
    whatever the model's logit scale.  [B, N] -> [B, 1]"""
    s = np.asarray(scores, dtype=np.float64)
    finite = np.isfinite(s)
    n = np.maximum(finite.sum(axis=1, keepdims=True), 1)
    mean = np.where(finite, s, 0.0).sum(axis=1, keepdims=True) / n
    var = (np.where(finite, s - mean, 0.0) ** 2).sum(axis=1, keepdims=True) / n
    std = np.sqrt(var)
    return np.where(std > 1e-9, std, 1.0).astype(np.float32)


def pad_rows(lists: list[list[int]], pad: int = 0) -> np.ndarray:
    """Ragged lists of item rows -> a padded int64 matrix (pad = row 0, the model's padding row).  [B, L]"""
    width = max((len(r) for r in lists), default=0)
    out = np.full((len(lists), max(width, 1)), pad, dtype=np.int64)
    for b, rows in enumerate(lists):
        out[b, :len(rows)] = rows
    return out


def centred(vectors: np.ndarray) -> np.ndarray:
    """Item vectors minus the mean of the real rows (row 0 = padding stays zero).  [N+1, d] -> [N+1, d]

    Sentence-encoder vectors of one catalog share a large common component (MovieLens texts all read
    "Title (year). Genres: ..."), so every pair has cosine ~0.5 and "similar" barely discriminates.
    Removing the mean spreads cosines over [-1, 1] around what actually differs between items."""
    v = np.asarray(vectors, dtype=np.float32)
    out = v - v[1:].mean(axis=0, keepdims=True)
    out[0] = 0.0
    return out
