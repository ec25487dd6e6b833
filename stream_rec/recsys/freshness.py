"""Freshness / exploration: give new items a bounded number of slots in the top-K.

A new item is scored from its text alone (the model learnt to do that with ID dropout, so its score is
on the scale of the others), but a text-only score is rarely the single best in a catalogue of
thousands: left to plain ranking, new items seldom reach a real list, and an item nobody is shown
never collects the events that would make it an ordinary item.

The policy: after the plain top-K, up to ``slots`` items younger than ``max_age_s`` that are not in the
list already replace the lowest-ranked older items, best first, but only while each one's relevance
passes the bar. Relevance is one of:

* ``by="model"``: the model's own score. Its probability under the model must be at least ``min_ratio``
  times that of the item it displaces. Scores are log-probabilities up to a per-user constant (the model
  is trained with softmax cross-entropy), so ``s_new - s_displaced >= log(min_ratio)`` is a calibrated,
  scale-free test that means the same for every model and user;
* ``by="content"``: the cosine between the item's text vector and the mean text vector of the user's
  last ``profile_items`` items (``content_relevance``), at least ``min_similarity``. The model scores a
  new item from its text alone and, trained on the old items' IDs, rarely ranks one near the top; the
  text similarity to what the user just watched is what the new item has (benchmarks/quality.py
  measures both on validation).

``min_ratio = 0`` / ``min_similarity = -1`` fill the slots whatever the relevance (pure exploration); a
fresh item that outranks older ones on its own merit takes no slot.

Pure functions over a batch of score rows; the worker calls ``fresh_topk`` in place of the plain top-K
and counts ``FreshResult.inserted`` in a metric.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

PAD = 0


@dataclass(frozen=True)
class FreshnessPolicy:
    slots: int = 0  # most fresh items a list may get by the policy (0 = off: the plain top-K)
    max_age_s: float = 7 * 86400.0  # an item is fresh while younger than this
    min_ratio: float = 0.2  # by="model": a fresh item's model probability relative to the item it displaces
    by: str = "model"  # "model" | "content": what ranks the fresh items and passes the bar
    min_similarity: float = 0.8  # by="content": cosine to the user's recent items' mean text vector
    profile_items: int = 10  # by="content": the user's last items that make the profile

    def __post_init__(self):
        if self.slots < 0 or self.max_age_s < 0 or self.min_ratio < 0 or self.profile_items < 1:
            raise ValueError(f"freshness policy values must be >= 0 (profile_items >= 1): {self}")
        if self.by not in ("model", "content"):
            raise ValueError(f"freshness policy 'by' must be 'model' or 'content', got {self.by!r}")


def model_policy(model) -> FreshnessPolicy:
    """The policy `stream-rec train` chose for ``model`` (a Recommender: config.json's ``freshness``, read
    into ``model.meta``; recsys/freshchoice.py), or none (0 slots) for a model without one."""
    entry = getattr(model, "meta", {}).get("freshness")
    return policy_from_config(entry) if entry else FreshnessPolicy(slots=0)


def serving_policy(configured: FreshnessPolicy | None, model) -> FreshnessPolicy:
    """The policy the stream applies: the settings' when they give one (``FRESH_SLOTS`` >= 0,
    ``PipelineConfig.freshness``), else the model's own."""
    return configured if configured is not None else model_policy(model)


def policy_from_config(entry: dict) -> FreshnessPolicy:
    """config.json's ``freshness`` entry as a policy (its fields were checked when the model was loaded)."""
    names = ("slots", "max_age_s", "min_ratio", "by", "min_similarity", "profile_items")
    return FreshnessPolicy(**{k: entry[k] for k in names if k in entry})


@dataclass
class FreshResult:
    rows: list[list[int]]  # per user: the k item rows, best first
    scores: list[list[float]]  # their model scores
    inserted: list[int]  # per user: how many fresh items the policy put in (not counting those that made it alone)
    added: list[list[int]]  # per user: the rows the policy put in


def fresh_rows(item_ages_s: np.ndarray, max_age_s: float) -> np.ndarray:
    """Boolean mask [N+1] of the rows younger than ``max_age_s`` (NaN/inf age = an old item; row 0 never)."""
    ages = np.asarray(item_ages_s, dtype=np.float64)
    fresh = np.isfinite(ages) & (ages < max_age_s)
    if len(fresh):
        fresh[PAD] = False
    return fresh


def content_relevance(text_vectors: torch.Tensor, histories: Sequence[Sequence[int]], fresh: np.ndarray,
                      profile_items: int = 10) -> torch.Tensor:
    """Cosine between each fresh row's text vector and the mean (unit) text vector of each user's last
    ``profile_items`` rows (``histories[b]``, oldest first); -inf elsewhere and for a user without
    history.  text_vectors [N+1, T] -> [B, N+1]"""
    tv = torch.nn.functional.normalize(torch.as_tensor(text_vectors, dtype=torch.float32).cpu(), dim=1)
    out = torch.full((len(histories), tv.shape[0]), -math.inf)
    cols = torch.from_numpy(np.flatnonzero(np.asarray(fresh)))
    users = [b for b, h in enumerate(histories) if len(h)]
    if not len(cols) or not users:
        return out
    profiles = torch.stack([tv[torch.as_tensor(list(histories[b])[-profile_items:])].mean(0) for b in users])
    sims = torch.nn.functional.normalize(profiles, dim=1) @ tv[cols].T  # [b, F]
    out[torch.tensor(users).unsqueeze(1), cols.unsqueeze(0)] = sims
    return out


def fresh_topk(scores: torch.Tensor, k: int, exclude_rows: Sequence[Sequence[int]], fresh: np.ndarray | torch.Tensor,
               policy: FreshnessPolicy, relevance: torch.Tensor | None = None) -> FreshResult:
    """Top-k per user with the freshness policy.  scores [B, N+1] (log-probabilities up to a per-user
    constant), ``exclude_rows[b]``: rows never to recommend (seen), ``fresh``: mask [N+1] of fresh rows,
    ``relevance`` [B, N+1]: with ``policy.by == "content"``, what ranks the fresh rows
    (``content_relevance``); the bar is then ``policy.min_similarity``."""
    s = scores.detach().float().clone()
    s[:, PAD] = -math.inf
    b_idx = [b for b, rows in enumerate(exclude_rows) for _ in rows]
    r_idx = [r for rows in exclude_rows for r in rows]
    if r_idx:
        s[torch.tensor(b_idx), torch.tensor(r_idx)] = -math.inf
    k = min(k, s.shape[1] - 1)
    values, rows = torch.topk(s, k, dim=1)
    values, rows = values.tolist(), rows.tolist()
    out = FreshResult(rows, values, [0] * len(rows), [[] for _ in rows])
    fresh_t = torch.as_tensor(np.asarray(fresh), dtype=torch.bool)
    if policy.slots <= 0 or not bool(fresh_t.any()):
        return out
    n_fresh = min(policy.slots + k, int(fresh_t.sum()))
    by_content = policy.by == "content"
    if by_content:
        if relevance is None:
            raise ValueError("a content freshness policy needs the relevance of the fresh rows")
        rank = relevance.detach().float().cpu().clone()
        rank[s.cpu() == -math.inf] = -math.inf  # seen items and padding stay out
    else:
        rank = s
    f_ranks, f_rows = torch.topk(rank.masked_fill(~fresh_t.to(rank.device), -math.inf), n_fresh, dim=1)
    f_values = s.gather(1, f_rows.to(s.device))
    log_bar = math.log(policy.min_ratio) if policy.min_ratio > 0 else -math.inf
    fresh_set = set(np.flatnonzero(np.asarray(fresh_t)).tolist())
    for b, (f_vals, f_rws, f_rks) in enumerate(zip(f_values.tolist(), f_rows.tolist(), f_ranks.tolist())):
        listed = rows[b]
        in_list = sum(r in fresh_set for r in listed)
        old_positions = [p for p, r in enumerate(listed) if r not in fresh_set]  # displaced from the bottom up
        added = 0
        for value, row, relevant in zip(f_vals, f_rws, f_rks):
            if in_list + added >= policy.slots or not old_positions or not math.isfinite(relevant):
                break
            if row in listed:
                continue
            p = old_positions[-1]
            if relevant < policy.min_similarity if by_content else value - values[b][p] < log_bar:
                break  # the next fresh items are less relevant (and would displace higher items): none passes
            old_positions.pop()
            listed[p], values[b][p] = row, value
            out.added[b].append(row)
            added += 1
        if added:  # keep the list best first: displaced positions are at the bottom, fresh items sorted
            order = sorted(range(len(listed)), key=lambda i: -values[b][i])
            rows[b] = [listed[i] for i in order]
            values[b] = [values[b][i] for i in order]
        out.inserted[b] = added
    return out
