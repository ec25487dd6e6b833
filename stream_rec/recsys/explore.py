"""Exploration of new items that learns from what users take: Thompson sampling on each new item's
appeal relative to the model.

The model scores a new item from its text (``Recommender.add_catalog``) and its plain ranking already
shows some new items (they stay: that is ordinary ranking). What it cannot know is whether people *take*
an item. Each new item -- an *arm*: an item that joined the catalogue after training, younger than
``max_age_s`` -- has an appeal ``a``: how many times more often users take it than the model's own
probability says. Its Gamma posterior (``arms.posterior``) starts from a prior centred on what new items
have done so far, all of them pooled (``pooled_prior``: how far the model is off for new items in
general), and learns from the item's impressions and hits.

A list (``explore_topk``): the plain top-k; then arms the plain ranking left out are put in from the
bottom up, best first by their expected hits ``a * p`` (``p``: the model's probability of the item for
this user, ``a``: a Thompson sample per user and list for an *exploring* arm, the posterior mean for a
*graduated* one), each only while ``a * p >= min_gain * p(displaced item)`` -- the hits the item brings
against those the displaced item would have -- and only where the item passes the relevance bar
(``by="content"``: text cosine to the user's recent items at least ``min_similarity``; ``"model"``: the
expected-hits test alone). Every arm in an emitted list is an impression (``counted_arms``: except for a
user who left it untaken ``max_declines`` times in a row, whose further misses would only let one user
push an item down).

* **exploring**: at most ``slots`` of them per list;
* **graduated** (at least ``graduate_hits`` hits and the appeal's lower ``z`` quantile at least the
  pooled appeal of new items): ranked in by its posterior mean for everyone, no slot needed;
* **retired** (the appeal's upper ``z`` quantile below ``retire_share`` of the pooled appeal): never put
  in again -- an item nobody takes stops costing list positions.

Pure functions over a batch of score rows (no Kafka); ``ArmBook`` holds one process's arms (the
simulator's, and the worker's merged view of its table).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from .arms import ArmStats, Prior, gamma_quantile, posterior

PAD = 0
EXPLORING, GRADUATED, RETIRED = 0, 1, 2


@dataclass(frozen=True)
class ExplorePolicy:
    slots: int = 2  # most exploring items a list gets beyond its plain ranking (0 = none explored)
    max_age_s: float = 7 * 86400.0  # an item is an arm while younger than this
    window_s: float = 86400.0  # a hit: the user's next event, on the item, within this long after the list
    min_gain: float = 0.5  # put in only if its expected hits >= this times those of the item it displaces
    by: str = "model"  # relevance bar: "model" (the expected-hits test alone) | "content" (and text cosine)
    min_similarity: float = 0.5  # by="content"
    profile_items: int = 10  # by="content": the user's last items that make her profile
    prior_strength: float = 1.0  # pseudo-hits of the pooled prior
    graduate_hits: int = 5
    retire_share: float = 0.25
    z: float = 1.64  # quantile of the graduation / retirement tests (one-sided 95%)
    max_declines: int = 8  # a user's impressions of an item she left untaken this many times in a row stop counting

    @classmethod
    def from_settings(cls, settings) -> "ExplorePolicy | None":
        """The worker's policy (``Settings.explore_*``), or None when ``explore_slots`` is 0 (off)."""
        if settings.explore_slots <= 0:
            return None
        return cls(slots=settings.explore_slots, max_age_s=settings.explore_max_age_s,
                   window_s=settings.explore_window_s, min_gain=settings.explore_min_gain, by=settings.explore_by,
                   min_similarity=settings.explore_min_similarity, max_declines=settings.explore_max_declines)

    def __post_init__(self):
        if min(self.slots, self.max_age_s, self.window_s, self.min_gain, self.retire_share) < 0:
            raise ValueError(f"exploration policy values must be >= 0: {self}")
        if self.by not in ("content", "model"):
            raise ValueError(f"exploration 'by' must be content or model, got {self.by!r}")
        if self.prior_strength <= 0 or self.max_declines < 1 or self.profile_items < 1:
            raise ValueError("prior_strength must be > 0, max_declines and profile_items >= 1")


@dataclass
class ArmView:
    """The arms of one batch, as arrays over their item rows."""

    rows: np.ndarray  # [A] item rows
    shape: np.ndarray  # [A] Gamma posterior of the appeal
    rate: np.ndarray
    status: np.ndarray  # [A] EXPLORING / GRADUATED / RETIRED

    @property
    def mean(self) -> np.ndarray:
        return self.shape / self.rate


def pooled_prior(arms: Sequence[ArmStats], strength: float) -> Prior:
    """Gamma prior of a new item's appeal: all arms pooled (one pseudo-hit and one pseudo-expected hit
    more, so it starts at 1: the model is right), worth ``strength`` pseudo-hits."""
    pooled = (1.0 + sum(a.hits for a in arms)) / (1.0 + sum(a.expected for a in arms))
    return Prior(hits=strength, expected=strength / pooled)


def arm_status(shape: np.ndarray, rate: np.ndarray, hits: np.ndarray, prior: Prior,
               policy: ExplorePolicy) -> np.ndarray:
    pooled = prior.hits / prior.expected
    status = np.full(len(shape), EXPLORING, dtype=np.int8)
    good = (hits >= policy.graduate_hits) & (gamma_quantile(shape, rate, -policy.z) >= pooled)
    status[good] = GRADUATED
    status[gamma_quantile(shape, rate, policy.z) < policy.retire_share * pooled] = RETIRED
    return status


@dataclass
class ExploreResult:
    rows: list[list[int]]  # per user: the k item rows, best first (by the model's score)
    scores: list[list[float]]  # their model scores
    explored: list[list[int]]  # per user: the exploring rows put in (they count against the slots)
    inserted: list[list[int]]  # per user: every row the policy put in (exploring and graduated)
    arms: list[list[tuple[int, float]]]  # per user: (row, the model's probability) of every arm in the list


def log_appeals(view: ArmView, n_users: int, rng: np.random.Generator) -> np.ndarray:
    """log appeal per (user, arm) [B, A]: a Thompson sample for exploring arms (one per user and list),
    the posterior mean for graduated ones, -inf for retired ones (never put in)."""
    out = np.broadcast_to(np.log(view.mean), (n_users, len(view.rows))).copy()
    exploring = np.flatnonzero(view.status == EXPLORING)
    if len(exploring):
        draws = rng.gamma(view.shape[exploring], 1.0 / view.rate[exploring], size=(n_users, len(exploring)))
        out[:, exploring] = np.log(np.maximum(draws, 1e-300))
    out[:, view.status == RETIRED] = -np.inf
    return out


def masked_scores(scores: torch.Tensor, exclude_rows: Sequence[Sequence[int]]) -> torch.Tensor:
    """A float CPU copy of ``scores`` with padding and each user's ``exclude_rows`` at -inf."""
    s = scores.detach().float().cpu().clone()
    s[:, PAD] = -math.inf
    b_idx = [b for b, rows in enumerate(exclude_rows) for _ in rows]
    if b_idx:
        s[torch.tensor(b_idx), torch.tensor([r for rows in exclude_rows for r in rows])] = -math.inf
    return s


def explore_topk(scores: torch.Tensor, k: int, exclude_rows: Sequence[Sequence[int]], view: ArmView,
                 policy: ExplorePolicy, rng: np.random.Generator,
                 relevance: torch.Tensor | None = None) -> ExploreResult:
    """The plain top-k per user, then arms put in from the bottom up by their expected hits.
    scores [B, N+1] (log-probabilities up to a per-user constant), ``exclude_rows[b]``: seen rows,
    ``relevance`` [B, N+1]: with ``policy.by == "content"``, the text relevance (``freshness.content_relevance``)."""
    s = masked_scores(scores, exclude_rows)
    k = min(k, s.shape[1] - 1)
    plain = torch.topk(s, k, dim=1).indices.tolist()
    log_p = (s - torch.logsumexp(s, dim=1, keepdim=True)).numpy()  # the model's probability over unseen items
    value = log_appeals(view, s.shape[0], rng) + log_p[:, view.rows]  # log expected hits if shown
    value[~exploration_gate(s, view, policy, relevance)] = -np.inf
    arm_of = {r: a for a, r in enumerate(view.rows.tolist())}
    out = ExploreResult([], [], [], [], [])
    for b in range(s.shape[0]):
        rows, explored, inserted = fill_user(plain[b], value[b], log_p[b], view, arm_of, policy)
        rows.sort(key=lambda r: -log_p[b, r])
        out.rows.append(rows)
        out.scores.append([float(s[b, r]) for r in rows])
        out.explored.append(explored)
        out.inserted.append(inserted)
        out.arms.append([(r, math.exp(float(log_p[b, r]))) for r in rows if r in arm_of])
    return out


def fill_user(plain: list[int], value: np.ndarray, log_p: np.ndarray, view: ArmView, arm_of: dict[int, int],
              policy: ExplorePolicy) -> tuple[list[int], list[int], list[int]]:
    """One user's list: ``plain`` with arms put in, best ``value`` first, from the bottom up (the plain
    ranking's own arms stay). -> (rows, exploring rows put in, all rows put in)"""
    rows = list(plain)
    listed, explored, inserted = set(rows), [], []
    displaceable = [p for p, r in enumerate(rows) if r not in arm_of]
    bar = math.log(policy.min_gain) if policy.min_gain > 0 else -math.inf
    if not displaceable:
        return rows, explored, inserted
    lowest = bar + log_p[rows[displaceable[-1]]]  # the bar only rises as items are displaced upwards
    candidates = np.flatnonzero(np.isfinite(value) & (value >= lowest))
    for a in candidates[np.argsort(-value[candidates])].tolist():
        if not displaceable:
            break
        r = int(view.rows[a])
        exploring = view.status[a] == EXPLORING
        if r in listed or (exploring and len(explored) >= policy.slots):
            continue
        if value[a] < bar + log_p[rows[displaceable[-1]]]:
            continue  # fewer expected hits than the item it would displace (times min_gain)
        rows[displaceable.pop()] = r
        listed.add(r)
        inserted.append(r)
        if exploring:
            explored.append(r)
    return rows, explored, inserted


def exploration_gate(s: torch.Tensor, view: ArmView, policy: ExplorePolicy,
                     relevance: torch.Tensor | None) -> np.ndarray:
    """[B, A] bool: the arms that may be put into each user's list: not retired, not seen, relevant
    (``policy.by``)."""
    cols = torch.as_tensor(view.rows, dtype=torch.long)
    gate = np.broadcast_to(view.status != RETIRED, (s.shape[0], len(cols))).copy()
    if not len(cols):
        return gate
    gate &= torch.isfinite(s[:, cols]).numpy()
    if policy.by == "content":
        if relevance is None:
            raise ValueError("a content exploration policy needs the text relevance of the arms")
        gate &= (relevance[:, cols].float().cpu() >= policy.min_similarity).numpy()
    return gate


@dataclass
class ArmBook:
    """One process's arms: item id -> (its row, merged ArmStats). ``view`` builds a batch's ArmView."""

    policy: ExplorePolicy
    arms: dict[str, ArmStats] = field(default_factory=dict)
    rows: dict[str, int] = field(default_factory=dict)
    graduated: set[str] = field(default_factory=set)  # items seen graduated (the metric counts each once)
    retired: set[str] = field(default_factory=set)

    def register(self, item_id: str, row: int, born: float) -> None:
        self.rows[item_id] = row
        self.arms.setdefault(item_id, ArmStats(born=born))

    def live(self, now: float) -> list[str]:
        return [i for i, a in self.arms.items() if now - a.born < self.policy.max_age_s]

    def view(self, now: float) -> ArmView:
        items = self.live(now)
        stats = [self.arms[i] for i in items]
        prior = pooled_prior(list(self.arms.values()), self.policy.prior_strength)
        shape, rate = posterior(stats, prior)
        status = arm_status(shape, rate, np.array([a.hits for a in stats]), prior, self.policy)
        self.graduated.update(i for i, s in zip(items, status) if s == GRADUATED)
        self.retired.update(i for i, s in zip(items, status) if s == RETIRED)
        return ArmView(np.array([self.rows[i] for i in items], dtype=np.int64), shape, rate, status)
