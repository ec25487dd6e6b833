"""Offline evaluation: leave-one-out, full ranking over the whole catalog, seen items excluded.

Every scorer -- the GRU through its *serving* path (``Recommender.step`` event by event, then
``score_rows``), most-popular, first-order item-to-item Markov, content-only cosine -- produces a
``[B, N+1]`` score matrix for a batch of users and goes through the same ``ranking_metrics``, so the
numbers are comparable by construction.

* rank = number of items scoring strictly higher than the target after masking the user's seen items
  (a target the user had already seen is masked too: a recommender that excludes seen items can never
  recommend it, so it counts as a miss).
* HR@k = rank < k; NDCG@k = 1/log2(rank+2) if rank < k; MRR@k = 1/(rank+1) if rank < k.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from .gru import PAD

K = 10


def ranking_metrics(scores: torch.Tensor, targets: torch.Tensor, seen: Sequence[Sequence[int]], k: int = K) -> dict:
    """Per-user hit / ndcg / rr at k.  scores [B, N+1], targets [B] -> {"hr": [B], "ndcg": [B], "mrr": [B]}"""
    scores = scores.clone().float()
    scores[:, PAD] = -math.inf
    b_idx = [b for b, rows in enumerate(seen) for _ in rows]
    r_idx = [r for rows in seen for r in rows]
    if r_idx:
        scores[torch.tensor(b_idx, device=scores.device), torch.tensor(r_idx, device=scores.device)] = -math.inf
    target_scores = scores.gather(1, targets.view(-1, 1))
    rank = (scores > target_scores).sum(1).float()
    rank = torch.where(torch.isfinite(target_scores.squeeze(1)), rank, torch.full_like(rank, float(scores.shape[1])))
    hit = (rank < k).float()
    return {"hr": hit, "ndcg": hit / torch.log2(rank + 2), "mrr": hit / (rank + 1)}


@dataclass
class EvalCase:
    """One user's test case: the history as rows and gaps, the target row."""

    user_id: str
    rows: np.ndarray  # int64 [L]
    gaps: np.ndarray  # float32 [L] seconds since the previous event
    target: int
    target_gap: float = 0.0


def evaluate_scorer(score_fn: Callable[[list[EvalCase]], torch.Tensor], cases: list[EvalCase], k: int = K,
                    batch_size: int = 512, desc: str = "", progress: bool = False) -> dict:
    """Mean HR/NDCG/MRR@k of a scorer that maps a batch of cases to scores [B, N+1]."""
    from tqdm import tqdm

    sums = {"hr": 0.0, "ndcg": 0.0, "mrr": 0.0}
    for s in tqdm(range(0, len(cases), batch_size), desc=desc or "evaluate", disable=not progress, leave=False):
        part = cases[s:s + batch_size]
        scores = score_fn(part)
        targets = torch.tensor([c.target for c in part], device=scores.device)
        m = ranking_metrics(scores, targets, [c.rows.tolist() for c in part], k)
        for key in sums:
            sums[key] += float(m[key].sum())
    n = max(len(cases), 1)
    return {f"hr@{k}": sums["hr"] / n, f"ndcg@{k}": sums["ndcg"] / n, f"mrr@{k}": sums["mrr"] / n, "users": len(cases)}


# --- baselines ----------------------------------------------------------------------------------
def popularity_scorer(train_rows: Sequence[np.ndarray], n_rows: int) -> Callable[[list[EvalCase]], torch.Tensor]:
    """Most-popular: the number of training events of each item, the same list for everyone."""
    counts = np.zeros(n_rows, dtype=np.float32)
    for rows in train_rows:
        np.add.at(counts, rows, 1.0)
    counts[PAD] = 0
    pop = torch.from_numpy(counts)
    return lambda cases: pop.expand(len(cases), -1)


def markov_scorer(train_rows: Sequence[np.ndarray], n_rows: int) -> Callable[[list[EvalCase]], torch.Tensor]:
    """First-order item-to-item Markov chain: score(j | last item i) = count(i -> j) in the training
    sequences, ties (and users whose last item has no outgoing transition) broken by popularity."""
    pairs = [r[:-1] * n_rows + r[1:] for r in train_rows if len(r) > 1]
    keys, counts = np.unique(np.concatenate(pairs) if pairs else np.zeros(0, np.int64), return_counts=True)
    src = keys // n_rows
    pop = np.zeros(n_rows, dtype=np.float64)
    for rows in train_rows:
        np.add.at(pop, rows, 1.0)
    pop_tie = torch.from_numpy((pop / (pop.max() + 1.0)).astype(np.float32))  # < 1: only breaks ties

    def score(cases: list[EvalCase]) -> torch.Tensor:
        out = pop_tie.expand(len(cases), -1).clone()
        for b, c in enumerate(cases):
            if len(c.rows) == 0:
                continue
            last = int(c.rows[-1])
            lo, hi = np.searchsorted(src, last, "left"), np.searchsorted(src, last, "right")
            if hi > lo:
                out[b, torch.from_numpy(keys[lo:hi] % n_rows)] += torch.from_numpy(counts[lo:hi].astype(np.float32))
        return out

    return score


def content_scorer(text_vectors: np.ndarray, last_n: int = 10) -> Callable[[list[EvalCase]], torch.Tensor]:
    """Content-only: cosine between each item's text vector and the mean text vector of the user's last
    ``last_n`` items. Needs no training, so it is the natural baseline for items unseen in training."""
    tv = torch.nn.functional.normalize(torch.as_tensor(text_vectors, dtype=torch.float32), dim=1)

    def score(cases: list[EvalCase]) -> torch.Tensor:
        profiles = torch.stack([tv[torch.from_numpy(c.rows[-last_n:])].mean(0) if len(c.rows) else tv.new_zeros(tv.shape[1])
                                for c in cases])
        return torch.nn.functional.normalize(profiles, dim=1) @ tv.T

    return score


def recommender_scorer(rec, progress: bool = False) -> Callable[[list[EvalCase]], torch.Tensor]:
    """The GRU through the serving path: ``Recommender.step`` once per event (batched across users,
    in time order), then ``score_rows`` on the final states."""

    def score(cases: list[EvalCase]) -> torch.Tensor:
        states = step_histories(rec, [c.rows for c in cases], [c.gaps for c in cases], progress=progress)
        return rec.score_rows(states).cpu()

    return score


def step_histories(rec, rows: Sequence[np.ndarray], gaps: Sequence[np.ndarray], progress: bool = False) -> np.ndarray:
    """Final serving states after stepping each history event by event from ``init_state``.
    Users are processed together: at step t every user with more than t events takes one step."""
    from tqdm import tqdm

    n = len(rows)
    states = rec.init_state(n)
    if n == 0:
        return states
    lengths = np.array([len(r) for r in rows])
    order = np.argsort(-lengths, kind="stable")  # longest first: the active users are a prefix
    sorted_len = lengths[order]
    for t in tqdm(range(int(sorted_len[0])), desc="stepping", unit="event", disable=not progress, leave=False):
        active = order[: int((sorted_len > t).sum())]
        step_rows = [int(rows[u][t]) for u in active]
        step_gaps = [float(gaps[u][t]) for u in active]
        states[active] = rec.step(states[active], step_rows, step_gaps)
    return states


def training_curve_plot(history: dict, path, title: str = "training curve") -> None:
    """Loss and validation NDCG@10 per epoch, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [e["epoch"] for e in history.get("epochs", [])]
    fig, ax1 = plt.subplots(figsize=(6, 3.5))
    ax1.plot(epochs, [e["loss"] for e in history.get("epochs", [])], "o-", color="tab:blue", label="train loss")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("cross-entropy", color="tab:blue")
    ax2 = ax1.twinx()
    ax2.plot(epochs, [e.get("valid_ndcg@10", float("nan")) for e in history.get("epochs", [])], "s-",
             color="tab:orange", label="valid NDCG@10")
    ax2.set_ylabel("validation NDCG@10", color="tab:orange")
    if history.get("best_epoch"):
        ax1.axvline(history["best_epoch"], color="grey", linestyle=":", label="best epoch")
    ax1.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# --- whole evaluations --------------------------------------------------------------------------
def test_cases(full: dict[str, list[tuple[str, float]]], targets: dict[str, tuple[str, float]],
               row_of: dict[str, int]) -> list[EvalCase]:
    """One case per user with a target: history = every event before the target (items unknown to
    the model skipped), target row (PAD when the model does not know the item: a sure miss)."""
    from .sequences import to_sequence

    cases = []
    for user, (item, ts) in targets.items():
        history = full[user][:-1] if full[user] and full[user][-1] == (item, ts) else \
            [e for e in full[user] if e[1] <= ts and e != (item, ts)]
        seq = to_sequence(history, row_of)
        gap = float(ts - history[-1][1]) if history else 0.0
        cases.append(EvalCase(user, seq.rows, seq.gaps, row_of.get(item, PAD), gap))
    return cases


def validation_baselines(split, row_of: dict[str, int], k: int = K) -> dict:
    """Popularity and Markov on the *validation* targets (each user's second-to-last event), fitted on the
    training sequences: what a trained model must beat before anyone serves it (``stream-rec train``
    warns when it does not). -> {"popularity": metrics, "markov": metrics}"""
    from .sequences import to_sequence

    train_rows = [to_sequence(seq, row_of).rows for seq in split.train.values()]
    cases = [EvalCase(u, to_sequence(split.train[u], row_of).rows, np.zeros(0, np.float32),
                      row_of.get(split.valid[u][0], PAD)) for u in split.valid if u in split.train]
    n_rows = max(row_of.values(), default=0) + 1
    return {"popularity": evaluate_scorer(popularity_scorer(train_rows, n_rows), cases, k),
            "markov": evaluate_scorer(markov_scorer(train_rows, n_rows), cases, k)}


def baseline_warnings(valid: dict, baselines: dict, k: int = K) -> list[str]:
    """One line per baseline the model does not beat on validation NDCG@k (empty = it beats them all)."""
    key = f"ndcg@{k}"
    mine = valid.get(key)
    out = []
    for name, metrics in baselines.items():
        if mine is None or mine <= metrics[key]:
            out.append(f"the trained model does not beat {name} on validation: NDCG@{k} "
                       f"{'n/a' if mine is None else f'{mine:.4f}'} vs {metrics[key]:.4f} ({metrics['users']} users)")
    return out


def evaluate_recommender(rec, split, k: int = K, baselines: bool = True, progress: bool = True,
                         users: set[str] | None = None, batch_size: int = 1024) -> dict:
    """Leave-one-out test metrics of ``rec`` (serving path) and, beside it, popularity and Markov
    fitted on the same training sequences (``split.train``)."""
    targets = {u: t for u, t in split.test.items() if users is None or u in users}
    cases = test_cases(split.full, targets, rec.row_of)
    n_rows = rec.n_items + 1
    results = {"gru": evaluate_scorer(recommender_scorer(rec, progress), cases, k, batch_size, "gru (serving path)", progress)}
    if baselines:
        train_rows = [np.array(rec.rows_for([i for i, _ in seq]), dtype=np.int64) for seq in split.train.values()]
        results["popularity"] = evaluate_scorer(popularity_scorer(train_rows, n_rows), cases, k, batch_size)
        results["markov"] = evaluate_scorer(markov_scorer(train_rows, n_rows), cases, k, batch_size)
    return results
