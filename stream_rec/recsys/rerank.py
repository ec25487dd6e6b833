"""Diversity re-ranking (MMR) with an exposure cap, and the two list metrics it trades accuracy for.

Maximal Marginal Relevance (Carbonell & Goldstein 1998) picks the list greedily::

    next = argmax_{c not chosen}  lam * rel(c) - (1 - lam) * max_{s chosen} cos(v_c, v_s)

* ``rel`` is the model score min-max normalised over each user's candidates to [0, 1], so ``lam`` has
  the same meaning for every model and user (cosines of text vectors also live in about [0, 1]).
  ``lam = 1`` returns the candidates in score order (pure relevance).
* ``v`` are item *text* vectors: "similar" means "about the same thing", which is what a user perceives
  as a repetitive list, and it works for items the model has never seen. They are centred on the
  catalog mean first (``vectors.centred``): sentence vectors of one catalog share a common component
  that makes every pair look half-similar.
* The greedy loop runs ``k`` steps over the whole batch at once ([B, C] arrays per step), so the cost is
  one [B, C, C] similarity tensor plus ``k`` vector operations per micro-batch.

The exposure cap (``ExposureWindow``) counts how often each item was recommended in a sliding window of
the most recent lists; candidates above the cap are demoted behind every other candidate (not removed:
when nothing else is left they still fill the list).
"""

from __future__ import annotations

from collections import deque

import numpy as np

from .vectors import centred, unit_rows


def normalised_relevance(relevance: np.ndarray) -> np.ndarray:
    """Per-row min-max to [0, 1]; non-finite entries (masked candidates) become NaN.  [B, C] -> [B, C]"""
    r = np.asarray(relevance, dtype=np.float64)
    finite = np.isfinite(r)
    lo = np.where(finite, r, np.inf).min(axis=1, keepdims=True)
    hi = np.where(finite, r, -np.inf).max(axis=1, keepdims=True)
    span = np.where(hi - lo > 1e-12, hi - lo, 1.0)
    out = np.where(finite, (r - lo) / span, np.nan)
    out[~np.isfinite(lo).ravel()] = np.nan  # a row with no finite candidate
    return out


def mmr_rerank_batch(candidate_rows: np.ndarray, relevance: np.ndarray, item_vectors: np.ndarray, k: int,
                     lam: float | np.ndarray = 1.0, demote: np.ndarray | None = None) -> np.ndarray:
    """Re-rank each user's candidates with MMR and return the chosen item rows.

    candidate_rows [B, C] item rows (0 = padding), relevance [B, C] model scores (-inf = not eligible),
    item_vectors [N+1, d] (text vectors by item row), lam one lambda or [B] (one per user: per-request
    diversity), demote [B, C] bool (exposure-capped candidates).
    Returns [B, k] item rows, 0 where a user had fewer than k eligible candidates."""
    lam_arr = np.asarray(lam, dtype=np.float64)
    if not np.all((lam_arr >= 0.0) & (lam_arr <= 1.0)):
        raise ValueError(f"MMR lambda must be in [0, 1], got {lam}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    cand = np.asarray(candidate_rows, dtype=np.int64)
    if cand.ndim != 2 or np.shape(relevance) != cand.shape:
        raise ValueError(f"candidate_rows {cand.shape} and relevance {np.shape(relevance)} must both be [B, C]")
    B, C = cand.shape
    if lam_arr.ndim == 1 and lam_arr.shape == (B,):
        lam = lam_arr[:, None]  # [B, 1]: broadcasts over the candidates
    elif lam_arr.ndim != 0:
        raise ValueError(f"lam must be a number or one per user ([{B}]), got shape {lam_arr.shape}")
    diverse = bool((lam_arr < 1.0).any())
    rel = normalised_relevance(np.where(cand > 0, relevance, -np.inf))
    eligible = ~np.isnan(rel)
    gain = lam * np.nan_to_num(rel, nan=0.0)
    if demote is not None:
        gain = np.where(np.asarray(demote, dtype=bool), gain - 10.0, gain)  # behind every capped-free candidate
    vecs = unit_rows(np.asarray(item_vectors)[cand])  # [B, C, d]
    sim = vecs @ vecs.transpose(0, 2, 1) if diverse else None  # [B, C, C]
    max_sim = np.full((B, C), -1.0 if diverse else 0.0)  # nothing chosen yet: no redundancy term
    chosen = np.zeros((B, min(k, C)), dtype=np.int64)
    out = np.zeros((B, k), dtype=np.int64)
    b_idx = np.arange(B)
    for step in range(min(k, C)):
        redundancy = np.where(max_sim > -1.0, max_sim, 0.0) if sim is not None else 0.0
        objective = np.where(eligible, gain - (1.0 - lam) * redundancy, -np.inf)
        pick = objective.argmax(axis=1)  # [B]
        ok = np.isfinite(objective[b_idx, pick])
        chosen[:, step] = pick
        out[:, step] = np.where(ok, cand[b_idx, pick], 0)
        eligible[b_idx, pick] = False
        if sim is not None:
            max_sim = np.maximum(max_sim, np.where(ok[:, None], sim[b_idx, pick], -1.0))
    return out


def mmr_rerank_scores(scores: np.ndarray, item_vectors: np.ndarray, k: int, lam: float | np.ndarray = 1.0,
                      n_candidates: int = 50, exclude_rows: list[list[int]] | None = None,
                      exposure: "ExposureWindow | None" = None, centre: bool = True,
                      record: bool = True) -> np.ndarray:
    """Convenience for the worker: full score matrix -> top ``n_candidates`` -> exposure cap -> MMR.
    The chosen lists count as exposures unless ``record`` is False (a lookup shows a list, it sends none).

    scores [B, N+1] (row 0 = padding), exclude_rows[b] = seen rows. ``centre`` subtracts the catalog's
    mean vector first (``vectors.centred``; pass pre-centred vectors and ``centre=False`` to do it once
    per catalog instead of per call). ``lam``: one lambda, or [B] (one per user). Returns [B, k] item rows."""
    if centre and bool((np.asarray(lam) < 1.0).any()):
        item_vectors = centred(item_vectors)
    s = np.array(scores, dtype=np.float64, copy=True)
    s[:, 0] = -np.inf
    for b, rows in enumerate(exclude_rows or []):
        if len(rows):
            s[b, list(rows)] = -np.inf
    n_candidates = max(k, min(n_candidates, s.shape[1] - 1))
    part = np.argpartition(-s, n_candidates - 1, axis=1)[:, :n_candidates]
    order = np.take_along_axis(s, part, axis=1).argsort(axis=1)[:, ::-1]
    cand = np.take_along_axis(part, order, axis=1)
    rel = np.take_along_axis(s, cand, axis=1)
    demote = exposure.over_cap(cand) if exposure is not None else None
    out = mmr_rerank_batch(cand, rel, item_vectors, k, lam, demote)
    if exposure is not None and record:
        exposure.record(out)
    return out


class ExposureWindow:
    """Counts of each item row over the last ``window`` recommendation lists; ``over_cap`` flags rows
    recommended more than ``cap`` times in that window. One per worker (its own traffic), in memory."""

    def __init__(self, window: int = 1000, cap: int = 100):
        if window < 1 or cap < 0:
            raise ValueError(f"window must be >= 1 and cap >= 0, got window={window}, cap={cap}")
        self.window, self.cap = window, cap
        self._lists: deque[np.ndarray] = deque()
        self._counts: dict[int, int] = {}

    def record(self, lists: np.ndarray | list[list[int]]) -> None:
        for rows in lists:
            rows = np.asarray(rows, dtype=np.int64)
            rows = rows[rows > 0]
            self._lists.append(rows)
            for r in rows.tolist():
                self._counts[r] = self._counts.get(r, 0) + 1
            if len(self._lists) > self.window:
                for r in self._lists.popleft().tolist():
                    c = self._counts[r] - 1
                    if c:
                        self._counts[r] = c
                    else:
                        del self._counts[r]

    def count(self, row: int) -> int:
        return self._counts.get(int(row), 0)

    def over_cap(self, rows: np.ndarray) -> np.ndarray:
        """Bool mask, same shape as ``rows``: recommended more than ``cap`` times in the window."""
        rows = np.asarray(rows, dtype=np.int64)
        # a copy first (one C call): a lookup on the HTTP listener's thread reads while the stream records
        over = [r for r, c in list(self._counts.items()) if c > self.cap]
        return np.isin(rows, over) if over else np.zeros(rows.shape, dtype=bool)


# --- list metrics ----------------------------------------------------------------------------------
def intra_list_diversity(lists: np.ndarray | list[list[int]], item_vectors: np.ndarray) -> float:
    """Mean over lists of (1 - mean pairwise cosine of the list's item vectors); padding rows ignored."""
    vecs = unit_rows(np.asarray(item_vectors))
    values = []
    for rows in lists:
        rows = [r for r in np.asarray(rows).tolist() if r > 0]
        if len(rows) < 2:
            continue
        v = vecs[rows]
        sim = v @ v.T
        n = len(rows)
        values.append(1.0 - (sim.sum() - np.trace(sim)) / (n * (n - 1)))
    return float(np.mean(values)) if values else 0.0


def catalog_coverage(lists: np.ndarray | list[list[int]], n_items: int) -> float:
    """Share of the catalog's ``n_items`` that appears in at least one list."""
    seen = {r for rows in lists for r in np.asarray(rows).tolist() if r > 0}
    return len(seen) / max(n_items, 1)
