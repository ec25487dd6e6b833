"""The freshness policy chosen at training time, on the validation events, by simulating new items.

A trained model has no new items to measure a freshness policy (recsys/freshness.py) on, so `stream-rec
train` makes some: a random ``hide_share`` of the trained items get their ID parts hidden -- zero ID
vectors, the bias a new item gets, no transitions of their own in the prior (rebuilt from the training
events without them) -- so the model scores them from their text alone, exactly as it scores an item that
joins the catalogue after training (``Recommender.add_items``). Their text is kept. (The text path has
seen them as targets in training, through ID dropout: the simulation flatters the model's scores of new
items a little; the content policy's relevance, text cosine, does not depend on training.)

The users whose validation event (each user's second-to-last) is a hidden item are the "new-item users",
the others the warm users. Every policy of ``policy_grid`` is scored on both; the chosen one has the most
new-item HR@10 among those that cost the warm users at most ``max_warm_cost`` of their NDCG@10 -- or none
(0 slots) when even that one brings new-item users less than ``min_new_hr``, or less than
``min_hr_per_cost`` per 1% of warm NDCG@10 it costs: the text does not carry relevance (MovieLens titles: a
content-only cosine ranking hits 2-5%), and slots would only cost.

The choice, its reason and the validation figures go into the model directory (config.json ``freshness``);
the worker, `recommend`, `replay` and `evaluate` apply it unless settings give a policy (``fresh_slots``).
"""

from __future__ import annotations

import copy
import math
import random
from dataclasses import dataclass

import numpy as np
import torch

from .freshness import FreshnessPolicy, content_relevance, fresh_topk


@dataclass(frozen=True)
class ChoiceParams:
    hide_share: float = 0.1  # of the trained items hidden to simulate new ones (0 = choose nothing: off)
    max_warm_cost: float = 0.02  # most NDCG@10 the warm users may lose to the policy (validation)
    min_new_hr: float = 0.1  # least HR@10 of the new-item users worth any slot (validation)
    # least new-item HR@10 a policy must bring per 1% of warm NDCG@10 it costs (validation): declines a slot
    # that buys little where titles carry little (ml-1m-half-new; the worlds' choices clear it by far:
    # docs/QUALITY.md, the new-item table).
    min_hr_per_cost: float = 0.1
    seed: int = 0


def policy_grid() -> list[FreshnessPolicy]:
    """The freshness policies scored on validation: ranked by the model (bar: probability ratio to the
    displaced item) and by content (bar: text cosine to the user's recent items)."""
    return ([FreshnessPolicy(slots=n, by="model", min_ratio=r) for n in (1, 2, 3) for r in (0.0, 0.01, 0.1, 1.0)]
            + [FreshnessPolicy(slots=n, by="content", min_similarity=c) for n in (1, 2, 3)
               for c in (-1.0, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)])


def describe_policy(p: FreshnessPolicy) -> dict:
    """The policy as config.json stores it (every field ``policy_from_config`` reads)."""
    bar = {"min_ratio": p.min_ratio} if p.by == "model" else {"min_similarity": p.min_similarity}
    return {"slots": p.slots, "by": p.by} | bar | {"max_age_s": p.max_age_s, "profile_items": p.profile_items}


def policy_metrics(scored, fresh, policy: FreshnessPolicy, k: int = 10, text=None) -> dict:
    """``scored``: [(cases, scores [B, N+1])] -> HR/NDCG/MRR@k of the lists ``fresh_topk`` makes (a seen
    target is a miss). ``text``: the item text vectors [N+1, T] (a content policy's relevance)."""
    sums = {"hr": 0.0, "ndcg": 0.0, "mrr": 0.0}
    inserted, n = 0, 0
    for part, scores in scored:
        histories = [c.rows.tolist() for c in part]
        relevance = (content_relevance(text, histories, fresh, policy.profile_items)
                     if policy.by == "content" and policy.slots else None)
        result = fresh_topk(scores, k, histories, fresh, policy, relevance)
        inserted += sum(result.inserted)
        n += len(part)
        for c, rows in zip(part, result.rows):
            if c.target in rows and c.target not in set(c.rows.tolist()):
                rank = rows.index(c.target)
                sums["hr"] += 1.0
                sums["ndcg"] += 1.0 / math.log2(rank + 2)
                sums["mrr"] += 1.0 / (rank + 1)
    n = max(n, 1)
    return {f"{key}@{k}": v / n for key, v in sums.items()} | {"users": n, "fresh_slots_used_per_list": inserted / n}


def pick(grid: list[dict], params: ChoiceParams) -> tuple[FreshnessPolicy, str]:
    """The policy from the scored grid (each entry: ``policy``, ``new_hr@10``, ``warm_cost``) and why."""
    allowed = [g for g in grid if g["warm_cost"] <= params.max_warm_cost]
    if not grid:
        return FreshnessPolicy(slots=0), "declined: no validation users to measure a policy on"
    if not allowed:
        return FreshnessPolicy(slots=0), (f"declined: every policy costs the warm users more than "
                                          f"{params.max_warm_cost:.0%} of their NDCG@10 on validation")
    worth = [g for g in allowed if g["new_hr@10"] >= params.min_hr_per_cost * 100 * g["warm_cost"]]
    if not worth:
        best = max(allowed, key=lambda g: (g["new_hr@10"], -g["warm_cost"]))
        return FreshnessPolicy(slots=0), (
            f"declined: no policy is worth its warm cost -- the best within the bound brings the users of simulated "
            f"new items HR@10 {best['new_hr@10']:.3f} for {best['warm_cost']:.2%} of the warm users' NDCG@10 "
            f"(< {params.min_hr_per_cost} per 1%) on validation")
    best = max(worth, key=lambda g: (g["new_hr@10"], -g["warm_cost"], -g["policy"].slots))
    if best["new_hr@10"] < params.min_new_hr:
        return FreshnessPolicy(slots=0), (
            f"declined: the item texts do not carry relevance here -- the best policy within the warm cost "
            f"bound brings the users of simulated new items HR@10 {best['new_hr@10']:.3f} "
            f"(< {params.min_new_hr}) on validation")
    return best["policy"], (f"chosen on validation: the most new-item HR@10 ({best['new_hr@10']:.3f}, simulated "
                            f"new items) at a warm NDCG@10 cost of {best['warm_cost']:.2%} "
                            f"(<= {params.max_warm_cost:.0%})")


def score_grid(new_scored, warm_scored, base_warm_ndcg: float, fresh, text) -> list[dict]:
    """New-item HR@10 and warm NDCG@10 cost (relative to ``base_warm_ndcg``) of every policy of the grid."""
    grid = []
    for policy in policy_grid():
        n = policy_metrics(new_scored, fresh, policy, text=text)
        w = policy_metrics(warm_scored, fresh, policy, text=text)
        cost = 1 - w["ndcg@10"] / base_warm_ndcg if base_warm_ndcg > 0 else 0.0
        grid.append({"policy": policy, "new_hr@10": round(n["hr@10"], 4), "warm_cost": round(cost, 4)})
    return grid


def hidden_rows(train_rows, n_items: int, share: float, seed: int = 0) -> np.ndarray:
    """A random ``share`` of the item rows that occur in the training sequences (sorted)."""
    present = np.unique(np.concatenate([np.asarray(r, dtype=np.int64) for r in train_rows] or [np.zeros(0, np.int64)]))
    present = present[(present > 0) & (present <= n_items)].tolist()
    random.Random(seed).shuffle(present)
    return np.array(sorted(present[:int(round(share * len(present)))]), dtype=np.int64)


def segments(train_rows, rows: np.ndarray) -> list[np.ndarray]:
    """The sequences cut at the ``rows``, which leave: no transition into or out of them, and none made up
    between their neighbours."""
    out = []
    for seq in train_rows:
        seq = np.asarray(seq, dtype=np.int64)
        cut = np.isin(seq, rows)
        bounds = np.flatnonzero(cut)
        out += [part for part in np.split(seq, bounds) if len(part)]
    return [part[~np.isin(part, rows)] for part in out if len(part[~np.isin(part, rows)])]


@torch.no_grad()
def hide_ids(rec, rows: np.ndarray, train_rows):
    """A copy of ``rec`` whose ``rows`` are scored from their text alone, as an item added after training
    is: ID vectors zero, the bias ``add_items`` gives a text-only item, no transitions of their own
    (the prior rebuilt from ``train_rows`` cut at them, text back-off kept)."""
    from ..model.transitions import build_tables

    twin = copy.copy(rec)
    twin.model = copy.deepcopy(rec.model)
    m, idx = twin.model, torch.as_tensor(rows, dtype=torch.long, device=rec.device)
    for table in [m.id_embedding] + ([m.next_embedding] if m.config.recent else []):
        table.weight[idx] = 0.0
    m.item_bias[idx] = 0.0 if m.config.id_dropout > 0 else float(m.item_bias[1:].median())
    if m.has_prior:
        kept = segments(train_rows, rows)
        text = m.text_vectors.cpu() if m.config.use_text else None
        m.prior.set_tables(*build_tables(kept, m.config.n_items + 1, text, m.config.prior_neighbours))
    twin.refresh_item_table()
    return twin


def validation_cases(split, row_of: dict[str, int]) -> list:
    """Each user's validation event (second-to-last) after the training events, as the serving path sees it."""
    from ..model.evaluate import EvalCase
    from ..model.sequences import to_sequence

    cases = []
    for user, (item, _) in split.valid.items():
        if user in split.train and item in row_of:
            seq = to_sequence(split.train[user], row_of)
            cases.append(EvalCase(user, seq.rows, seq.gaps, row_of[item]))
    return cases


def choose_freshness(rec, split, params: ChoiceParams = ChoiceParams(), batch_size: int = 512) -> dict:
    """The freshness policy for ``rec`` (trained on ``split.train``), chosen on ``split.valid`` with a
    slice of simulated new items (module docstring). -> config.json's ``freshness`` entry: the policy
    (``describe_policy``), ``why`` and the validation figures."""
    from ..model.sequences import to_sequence

    train_rows = [to_sequence(seq, rec.row_of).rows for seq in split.train.values()]
    rows = hidden_rows(train_rows, rec.n_items, params.hide_share, params.seed)
    cases = validation_cases(split, rec.row_of)
    hidden = set(rows.tolist())
    groups = {"new": [c for c in cases if c.target in hidden], "warm": [c for c in cases if c.target not in hidden]}
    if not rec.model.config.use_text or not len(rows) or not groups["new"] or not groups["warm"]:
        why = ("declined: the model has no text to score new items with" if not rec.model.config.use_text
               else "declined: too few items or validation users to simulate new items")
        return describe_policy(FreshnessPolicy(slots=0)) | {"why": why}
    from ..model.evaluate import recommender_scorer

    twin = hide_ids(rec, rows, train_rows)
    score = recommender_scorer(twin)
    fresh = np.zeros(rec.n_items + 1, dtype=bool)
    fresh[rows] = True
    scored = {}
    for name, group in groups.items():
        parts = [group[s:s + batch_size] for s in range(0, len(group), batch_size)]
        scored[name] = [(part, score(part)) for part in parts]
    text = twin.model.text_vectors.cpu()
    # the policy's own cost: against the plain ranking of the same catalogue (the hidden items in it)
    base = policy_metrics(scored["warm"], fresh, FreshnessPolicy(slots=0))
    plain_new = policy_metrics(scored["new"], fresh, FreshnessPolicy(slots=0))
    grid = score_grid(scored["new"], scored["warm"], base["ndcg@10"], fresh, text)
    policy, why = pick(grid, params)
    return describe_policy(policy) | {"why": why, "validation": {
        "hidden_items": len(rows), "new_item_users": len(groups["new"]), "warm_users": len(groups["warm"]),
        "new_hr@10_plain": round(plain_new["hr@10"], 4), "warm_ndcg@10_plain": round(base["ndcg@10"], 4),
        "grid": [describe_policy(g["policy"]) | {k: v for k, v in g.items() if k != "policy"} for g in grid]}}

