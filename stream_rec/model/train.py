"""Offline training of :class:`HybridGRU` (GRU4Rec-style, full-softmax cross-entropy over the catalog).

Design decisions (each measured worthwhile on MovieLens, see benchmarks/quality.py):

* **Many-to-many**: every position of a user's sequence is a training example (target = the next
  item), so one pass over a sequence of length L yields L-1 losses for the price of one GRU pass.
* **Truncated BPTT with the state carried over**: sequences are cut into windows of ``max_len``
  events, but the hidden state at the end of a window is passed (detached) into the next window of the
  same user. Serving steps through a user's whole history without ever resetting, so training sees
  the same kind of long-running states. One optimiser step per window.
* **Length buckets**: users are sorted by length and batched with similar lengths (little padding);
  the order of the batches is shuffled each epoch with a fixed seed.
* **Right padding + masked loss**: pad positions come after the real events, so they never touch a
  real hidden state; their targets are PAD and ignored by the loss.
* **Early stopping on validation** (each user's second-to-last event, ranked over the full catalog
  with seen items excluded, NDCG@10); the best epoch's weights are kept.
* Everything is seeded; the same code runs on CPU and GPU.
"""

from __future__ import annotations

import copy
import logging
import math
import random
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .gru import PAD, GRUConfig, HybridGRU, recent_windows
from .recommender import pick_device
from .sequences import UserSequence, pad_batch, to_sequence
from .transitions import build_tables

log = logging.getLogger(__name__)


@dataclass
class TrainParams:
    # Defaults chosen on the validation split of ml-1m-half (benchmarks/sweep.py; the test events
    # untouched): short BPTT windows give more optimiser steps per epoch for the same compute, converge in
    # fewer epochs and cost less per epoch on CPU. On the small MovieLens-100K, windows of 200 validated
    # better: pass max_len=200 there (DEVELOPERS.md has the figures).
    epochs: int = 40  # upper bound; early stopping usually ends sooner
    batch_size: int = 32  # users per batch
    max_len: int = 50  # window length for truncated BPTT (the state is carried across windows)
    lr: float = 3e-3
    weight_decay: float = 0.0
    patience: int = 3  # epochs without validation improvement before a plateau is declared
    lr_decay: float = 0.3  # on a plateau: back to the best epoch's weights, learning rate times this ...
    lr_decays: int = 2  # ... at most this many times; the next plateau stops training
    seed: int = 0
    device: str = "auto"
    threads: int = 0  # torch CPU threads (0 = leave torch's default)
    clip_grad: float = 5.0
    # Train as the lists are served: seen items are never recommended, so they leave the softmax at every
    # position (and a repeated item is not a target).
    mask_seen: bool = True
    # The transition prior's counts hold the training sequences' own transitions: each example leaves its
    # own out (model/transitions.py). Off when the sequences are not the ones counted (fine-tuning).
    prior_leave_one_out: bool = True
    # The items whose IDs ID dropout hides in a batch lose their prior columns too (the text path learns to
    # rank an item with no transitions into it, as every new item is, against the counts of the others).
    # Without it, plain ranking almost never showed a new item (docs/EXPLORATION.md, "the prior and new items").
    prior_id_dropout: bool = True
    time_budget_s: float = 0.0  # wall-time budget: no epoch is started that would likely overrun it (0 = none)
    # Epochs of the learned initial state of a user with no events (model/coldstart.py; 0 = zeros): fitted
    # after training, every weight frozen, on the first events of the training users.
    init_state_epochs: int = 30

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class History:
    epochs: list[dict] = field(default_factory=list)  # per epoch: loss, valid metrics, seconds
    best_epoch: int = 0
    best_valid: dict = field(default_factory=dict)
    train_seconds: float = 0.0  # wall clock
    cpu_seconds: float = 0.0  # CPU time of this process over all its threads (wall time is noisy on a shared box)
    stopped: str = "epochs"  # what ended training: "patience", "budget" or "epochs" (the upper bound)

    def to_dict(self) -> dict:
        return asdict(self)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _batches(seqs: list[UserSequence], batch_size: int, rng: random.Random, shuffle: bool) -> list[list[int]]:
    """Indices of sequences grouped by similar length (with a random tie-break when shuffling)."""
    order = sorted(range(len(seqs)), key=lambda i: (len(seqs[i].rows), rng.random() if shuffle else i))
    batches = [order[s:s + batch_size] for s in range(0, len(order), batch_size)]
    if shuffle:
        rng.shuffle(batches)
    return batches


def first_positions(rows: torch.Tensor, n_rows: int) -> torch.Tensor:
    """Position of each item's first occurrence in each sequence (a large number when absent; PAD never
    counts).  rows [B, L] -> [B, n_rows]"""
    never = rows.shape[1] + 1
    first = torch.full((rows.shape[0], n_rows), never, dtype=torch.long, device=rows.device)
    positions = torch.arange(rows.shape[1], device=rows.device).expand_as(rows)
    first.scatter_reduce_(1, rows, positions, reduce="amin")
    first[:, PAD] = never
    return first


def train_epoch(model: HybridGRU, seqs: list[UserSequence], params: TrainParams, optimizer: torch.optim.Optimizer,
                rng: random.Random, device: torch.device, progress: bool = True) -> float:
    """One pass over all training sequences; returns the mean cross-entropy per predicted event."""
    from tqdm import tqdm

    model.train()
    total, count = 0.0, 0
    batches = [b for b in _batches(seqs, params.batch_size, rng, shuffle=True) if max(len(seqs[i].rows) for i in b) > 1]
    bar = tqdm(batches, desc="train", unit="batch", leave=False, disable=not progress)
    for idx in bar:
        rows, gaps, _ = pad_batch(seqs, idx)
        rows, gaps = rows.to(device), gaps.to(device)
        h = None
        inputs, targets, in_gaps = rows[:, :-1], rows[:, 1:], gaps[:, :-1]
        # the rows of the last `recent` items at each position (what the serving state carries)
        recent = recent_windows(inputs, model.config.recent) if model.config.recent else None
        first_seen = first_positions(inputs, model.item_bias.shape[0]) if params.mask_seen else None
        for s in range(0, inputs.shape[1], params.max_len):
            x, y, g = inputs[:, s:s + params.max_len], targets[:, s:s + params.max_len], in_gaps[:, s:s + params.max_len]
            tables = model.item_tables()  # shared by the inputs and the output layer (one ID-dropout draw)
            out = model(x, g, h0=h, table=tables)  # [B, T, H]
            h = out[:, -1].detach()
            mask = y != PAD
            if first_seen is not None:  # a repeat can never be recommended: not a training target either
                mask &= first_seen.gather(1, y) > torch.arange(s, s + y.shape[1], device=device)
            n = int(mask.sum())
            if n == 0:
                continue
            window_recent = None if recent is None else recent[:, s:s + params.max_len][mask]
            leave_out = y[mask] if params.prior_leave_one_out else None
            logits = model.scores(out[mask], tables, recent=window_recent, leave_out=leave_out,
                                  hide_prior=params.prior_id_dropout)  # [n, N+1]
            if first_seen is not None:  # the lists never hold seen items: the softmax is over the unseen ones
                b_idx, t_idx = mask.nonzero(as_tuple=True)
                logits = logits.masked_fill(first_seen[b_idx] <= (t_idx + s).unsqueeze(1), -math.inf)
            loss = F.cross_entropy(logits, y[mask])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if params.clip_grad:
                torch.nn.utils.clip_grad_norm_(model.parameters(), params.clip_grad)
            optimizer.step()
            total += float(loss.detach()) * n
            count += n
            bar.set_postfix(loss=f"{total / max(count, 1):.3f}")
    return total / max(count, 1)


@torch.no_grad()
def final_states(model: HybridGRU, seqs: list[UserSequence], batch_size: int = 256, max_len: int = 200) -> torch.Tensor:
    """Serving state after each sequence's last event (full-sequence pass, eval mode): what
    ``HybridGRU.step`` reaches event by event.  -> [n, S]"""
    model.eval()
    device = model.item_bias.device
    out_states = torch.zeros(len(seqs), model.config.hidden, device=device)
    table = model.item_tables()
    for idx in _batches(seqs, batch_size, random.Random(0), shuffle=False):
        rows, gaps, lengths = pad_batch(seqs, idx)
        rows, gaps, lengths = rows.to(device), gaps.to(device), lengths.to(device)
        h = None
        for s in range(0, rows.shape[1], max_len):
            out = model(rows[:, s:s + max_len], gaps[:, s:s + max_len], h0=h, table=table)
            h = out[:, -1]
            last = lengths - 1 - s  # position of each user's last event inside this window
            inside = (last >= 0) & (last < out.shape[1])
            if inside.any():
                b = inside.nonzero().squeeze(1)
                out_states[torch.tensor(idx, device=device)[b]] = out[b, last[b]]
        empty = lengths == 0
        if empty.any():
            out_states[torch.tensor(idx, device=device)[empty]] = model.init_state(int(empty.sum()))[:, :model.config.hidden]
    k = model.config.recent
    if not k:
        return out_states
    recent = torch.zeros(len(seqs), k, dtype=torch.long)
    for n, seq in enumerate(seqs):
        last = seq.rows[-k:]
        if len(last):
            recent[n, k - len(last):] = torch.from_numpy(last)
    return model.make_state(out_states, recent.to(device))


@torch.no_grad()
def validate(model: HybridGRU, seqs: list[UserSequence], k: int = 10, batch_size: int = 256) -> dict:
    """HR/NDCG/MRR@k of the validation targets, full ranking, items of the sequence excluded."""
    from .evaluate import ranking_metrics

    with_target = [s for s in seqs if s.valid_row != PAD]
    if not with_target:
        return {}
    states = final_states(model, with_target, batch_size)
    table = model.item_tables()
    sums = {"hr": 0.0, "ndcg": 0.0, "mrr": 0.0}
    for s in range(0, len(with_target), batch_size):
        part = with_target[s:s + batch_size]
        scores = model.scores(states[s:s + batch_size], table)
        targets = torch.tensor([p.valid_row for p in part], device=scores.device)
        m = ranking_metrics(scores, targets, [p.rows.tolist() for p in part], k)
        for key in sums:
            sums[key] += float(m[key].sum())
    return {f"{key}@{k}": v / len(with_target) for key, v in sums.items()} | {"users": len(with_target)}


def train_model(seqs: list[UserSequence], config: GRUConfig, text_vectors: torch.Tensor | None = None,
                params: TrainParams | None = None, progress: bool = True,
                on_epoch: Callable[[dict], None] | None = None) -> tuple[HybridGRU, History]:
    """Train a HybridGRU on per-user sequences (rows in 1..config.n_items), early-stopped on the
    sequences' ``valid_row``. Returns the model at its best validation epoch (on CPU) and the history."""
    from tqdm import tqdm

    params = params or TrainParams()
    if params.threads:
        torch.set_num_threads(params.threads)
    seed_everything(params.seed)
    device = pick_device(params.device)
    model = HybridGRU(config, text_vectors)
    if model.has_prior:
        text = model.text_vectors if config.use_text else None
        model.prior.set_tables(*build_tables([s.rows for s in seqs], config.n_items + 1, text, config.prior_neighbours))
    model = model.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=params.lr, weight_decay=params.weight_decay)
    rng = random.Random(params.seed)
    history = History()
    best_state, best_score, bad, decays = None, -math.inf, 0, 0
    started, cpu_started = time.perf_counter(), time.process_time()
    bar = tqdm(range(1, params.epochs + 1), desc="epochs", unit="epoch", disable=not progress)
    for epoch in bar:
        t0 = time.perf_counter()
        loss = train_epoch(model, seqs, params, optimizer, rng, device, progress)
        valid = validate(model, seqs)
        row = {"epoch": epoch, "loss": loss, "seconds": time.perf_counter() - t0} | {f"valid_{k}": v for k, v in valid.items()}
        history.epochs.append(row)
        if on_epoch:
            on_epoch(row)
        score = valid.get("ndcg@10", -loss)
        bar.set_postfix(loss=f"{loss:.3f}", valid_ndcg=f"{valid.get('ndcg@10', float('nan')):.4f}")
        log.info("epoch %d: loss %.4f valid %s (%.0f s)", epoch, loss, valid, row["seconds"])
        if score > best_score:
            best_score, bad = score, 0
            best_state = copy.deepcopy(model.state_dict())
            history.best_epoch, history.best_valid = epoch, valid
        else:
            bad += 1
            if bad >= params.patience:
                if decays >= params.lr_decays:
                    history.stopped = "patience"
                    break
                decays, bad = decays + 1, 0
                model.load_state_dict(best_state)
                for group in optimizer.param_groups:
                    group["lr"] *= params.lr_decay
                log.info("plateau: back to epoch %d, learning rate %.2g", history.best_epoch, optimizer.param_groups[0]["lr"])
        # Stop when another epoch as long as the last one would overrun the budget.
        if params.time_budget_s and time.perf_counter() - started + row["seconds"] > params.time_budget_s:
            log.info("time budget of %.0f s: stopping after epoch %d", params.time_budget_s, epoch)
            history.stopped = "budget"
            break
    history.train_seconds = time.perf_counter() - started
    history.cpu_seconds = time.process_time() - cpu_started
    if best_state is not None:
        model.load_state_dict(best_state)
    return model.cpu().eval(), history


# --- from data to a servable Recommender -------------------------------------------------------------
def build_catalog(item_texts: dict[str, str], sequences_: dict[str, list[tuple[str, float]]],
                  exclude: set[str] | frozenset = frozenset()) -> tuple[list[str], list[str]]:
    """Item ids (catalog file order, then ids that only occur in events) and their texts, minus ``exclude``."""
    ids = [i for i in item_texts if i not in exclude]
    known = set(ids)
    for seq in sequences_.values():
        for item, _ in seq:
            if item not in known and item not in exclude:
                known.add(item)
                ids.append(item)
    return ids, [item_texts.get(i, "") for i in ids]


def train_recommender(split, item_texts: dict[str, str], config_kwargs: dict | None = None,
                      params: TrainParams | None = None, encoder=None, exclude_items: Sequence[str] = (),
                      progress: bool = True, on_epoch: Callable[[dict], None] | None = None):
    """Train on ``split.train`` (early stopping on ``split.valid``) and wrap the result as a Recommender.

    ``exclude_items`` are left out of the catalog and of the training sequences (to measure how well
    items unseen in training are served from their text alone). ``encoder`` (a TextEncoder) is needed
    unless ``config_kwargs["use_text"]`` is False. Returns (recommender, history)."""
    from .recommender import Recommender

    config_kwargs = dict(config_kwargs or {})
    params = params or TrainParams()
    use_text = config_kwargs.get("use_text", True)
    ids, texts = build_catalog(item_texts, split.train, set(exclude_items))
    row_of = {item: row for row, item in enumerate(ids, start=1)}
    if use_text:
        if encoder is None:
            raise ValueError("a text encoder is needed for a model that uses text (or pass use_text=False)")
        vectors = encoder.encode_cached(texts, progress=progress)
        text_vectors = torch.cat([torch.zeros(1, vectors.shape[1]), torch.from_numpy(vectors)])
        encoder_id = encoder.encoder_id
    else:
        text_vectors, encoder_id = None, None
    config = GRUConfig(n_items=len(ids), text_dim=0 if text_vectors is None else int(text_vectors.shape[1]),
                       **config_kwargs)
    seqs = [to_sequence(split.train[u], row_of, split.valid[u][0] if u in split.valid else None) for u in split.train]
    seqs = [s for s in seqs if len(s.rows)]
    model, history = train_model(seqs, config, text_vectors, params, progress=progress, on_epoch=on_epoch)
    h0 = None
    if params.init_state_epochs > 0:
        from .coldstart import learn_initial_state

        h0 = learn_initial_state(model, seqs, epochs=params.init_state_epochs, seed=params.seed, progress=progress)
    meta = {"training": params.to_dict() | {"users": len(seqs), "events": int(sum(len(s.rows) for s in seqs)),
                                            "excluded_items": len(exclude_items)},
            "history": history.to_dict(),
            "metrics": {"valid": history.best_valid, "train_seconds": history.train_seconds,
                        "train_cpu_seconds": history.cpu_seconds}}
    rec = Recommender(model, ids, version="gru-unsaved", trained=True, device=params.device,
                      item_texts=texts, encoder_id=encoder_id, meta=meta)
    rec.initial_state = h0
    return rec, history
