"""The peer: SASRec trained with full-softmax cross-entropy ("SASRec+").

Kang & McAuley, "Self-Attentive Sequential Recommendation" (ICDM 2018), as in the reference PyTorch
port (pmixer/SASRec.pytorch: pre-norm attention, point-wise feed-forward with residual, learned
positional embeddings, item table tied to the output), trained as in Klenitskiy & Vasilev, "Turning
Dross Into Gold Loss: is BERT4Rec really better than SASRec?" (RecSys 2023): cross-entropy over the
whole catalogue at every position of the sequence, no negative sampling.

It runs on exactly the split of benchmarks/quality.py: the training sequences are ``split.train``
(each user's events but the last two), early stopping on each user's second-to-last event ranked over
all items with the seen ones masked (``model.evaluate.ranking_metrics``), and the test score ranks the
last event from the history before it (``test_cases``), as for every other model of the table.

Differences from the reference that do not change the model: batches are users of similar length padded
to the batch's longest window (not always to ``max_len``), and positions are counted from the newest
event, so the newest item always has the same positional embedding whatever the padding (what the
reference gets by always padding to ``max_len``).
"""

from __future__ import annotations

import copy
import logging
import math
import random
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from stream_rec.model.evaluate import EvalCase, ranking_metrics
from stream_rec.model.gru import PAD

log = logging.getLogger(__name__)


@dataclass
class SASRecParams:
    hidden: int = 64
    blocks: int = 2
    heads: int = 1
    dropout: float = 0.2
    max_len: int = 200
    lr: float = 3e-3
    batch_size: int = 64
    epochs: int = 200  # upper bound: early stopping ends it
    patience: int = 20  # epochs without validation gain (reference: evaluate every 20 epochs)
    time_budget_s: float = 0.0  # wall-time budget (0 = none: patience ends it); quality.py gives it the GRUs'

    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


class SASRec(nn.Module):
    def __init__(self, n_items: int, p: SASRecParams):
        super().__init__()
        d = p.hidden
        self.item_emb = nn.Embedding(n_items + 1, d, padding_idx=PAD)
        self.pos_emb = nn.Embedding(p.max_len, d)
        self.emb_dropout = nn.Dropout(p.dropout)
        self.attn_norms = nn.ModuleList(nn.LayerNorm(d, eps=1e-8) for _ in range(p.blocks))
        self.attns = nn.ModuleList(nn.MultiheadAttention(d, p.heads, dropout=p.dropout, batch_first=True)
                                   for _ in range(p.blocks))
        self.ffn_norms = nn.ModuleList(nn.LayerNorm(d, eps=1e-8) for _ in range(p.blocks))
        self.ffns = nn.ModuleList(nn.Sequential(nn.Linear(d, d), nn.Dropout(p.dropout), nn.ReLU(), nn.Linear(d, d),
                                                nn.Dropout(p.dropout)) for _ in range(p.blocks))
        self.last_norm = nn.LayerNorm(d, eps=1e-8)
        for name, param in self.named_parameters():  # the reference's init
            if param.dim() > 1:
                nn.init.xavier_normal_(param)
        with torch.no_grad():
            self.item_emb.weight[PAD].zero_()

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        """Left-padded rows [B, T] -> the output vector at every position [B, T, d]."""
        B, T = rows.shape
        x = self.item_emb(rows) * math.sqrt(self.item_emb.embedding_dim)
        pos = torch.arange(T - 1, -1, -1, device=rows.device).clamp(max=self.pos_emb.num_embeddings - 1)
        x = self.emb_dropout(x + self.pos_emb(pos)[None])
        keep = (rows != PAD).unsqueeze(-1)
        x = x * keep
        causal = torch.ones(T, T, dtype=torch.bool, device=rows.device).triu(1)  # True = not allowed
        for norm, attn, fnorm, ffn in zip(self.attn_norms, self.attns, self.ffn_norms, self.ffns):
            q = norm(x)
            out, _ = attn(q, x, x, attn_mask=causal, need_weights=False)
            x = fnorm(q + out)
            x = (x + ffn(x)) * keep
        return self.last_norm(x)

    def scores(self, out: torch.Tensor) -> torch.Tensor:
        s = out @ self.item_emb.weight.T
        s[..., PAD] = -math.inf
        return s


def _left_pad(seqs: list[np.ndarray], max_len: int) -> torch.Tensor:
    L = max(1, min(max_len, max(len(s) for s in seqs)))
    out = np.zeros((len(seqs), L), dtype=np.int64)
    for b, s in enumerate(seqs):
        s = s[-L:]
        if len(s):
            out[b, L - len(s):] = s
    return torch.from_numpy(out)


@torch.no_grad()
def _user_vectors(model: SASRec, histories: list[np.ndarray], max_len: int, batch_size: int = 256) -> torch.Tensor:
    model.eval()
    order = sorted(range(len(histories)), key=lambda i: len(histories[i]))
    out = torch.zeros(len(histories), model.item_emb.embedding_dim)
    for s in range(0, len(order), batch_size):
        idx = order[s:s + batch_size]
        out[idx] = model(_left_pad([histories[i] for i in idx], max_len))[:, -1]
    return out


@torch.no_grad()
def evaluate_sasrec(model: SASRec, cases: list[EvalCase], max_len: int, k: int = 10, batch_size: int = 512) -> dict:
    sums = {"hr": 0.0, "ndcg": 0.0, "mrr": 0.0}
    for s in range(0, len(cases), batch_size):
        part = cases[s:s + batch_size]
        scores = model.scores(_user_vectors(model, [c.rows for c in part], max_len))
        m = ranking_metrics(scores, torch.tensor([c.target for c in part]), [c.rows.tolist() for c in part], k)
        for key in sums:
            sums[key] += float(m[key].sum())
    n = max(len(cases), 1)
    return {f"{key}@{k}": v / n for key, v in sums.items()} | {"users": len(cases)}


@dataclass
class SASRecHistory:
    epochs: list[dict] = field(default_factory=list)
    best_epoch: int = 0
    best_valid: dict = field(default_factory=dict)
    train_seconds: float = 0.0
    cpu_seconds: float = 0.0
    stopped: str = "epochs"  # what ended training: "patience", "budget" or "epochs" (the upper bound)


def train_sasrec(train_rows: list[np.ndarray], valid_cases: list[EvalCase], n_items: int,
                 p: SASRecParams | None = None, log_every: bool = True) -> tuple[SASRec, SASRecHistory]:
    """Train on ``train_rows`` (one int64 row array per user, oldest first), early-stopped on
    ``valid_cases`` (NDCG@10, full ranking, seen masked). Returns the best epoch's model."""
    p = p or SASRecParams()
    random.seed(p.seed)
    np.random.seed(p.seed)
    torch.manual_seed(p.seed)
    model = SASRec(n_items, p)
    opt = torch.optim.Adam(model.parameters(), lr=p.lr, betas=(0.9, 0.98))
    rng = random.Random(p.seed)
    seqs = [r[-(p.max_len + 1):] for r in train_rows if len(r) > 1]
    hist = SASRecHistory()
    best, best_score, bad = None, -math.inf, 0
    started, cpu0 = time.perf_counter(), time.process_time()
    for epoch in range(1, p.epochs + 1):
        t0 = time.perf_counter()
        model.train()
        order = sorted(range(len(seqs)), key=lambda i: (len(seqs[i]), rng.random()))
        batches = [order[s:s + p.batch_size] for s in range(0, len(order), p.batch_size)]
        rng.shuffle(batches)
        total, count = 0.0, 0
        for idx in batches:
            rows = _left_pad([seqs[i] for i in idx], p.max_len + 1)
            x, y = rows[:, :-1], rows[:, 1:]
            mask = y != PAD
            out = model(x)
            loss = F.cross_entropy(model.scores(out[mask]), y[mask])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            n = int(mask.sum())
            total, count = total + float(loss) * n, count + n
        valid = evaluate_sasrec(model, valid_cases, p.max_len)
        row = {"epoch": epoch, "loss": total / max(count, 1), "seconds": time.perf_counter() - t0} | {
            f"valid_{k}": v for k, v in valid.items()}
        hist.epochs.append(row)
        if log_every:
            log.info("SASRec+ epoch %d: loss %.4f valid ndcg@10 %.4f (%.0f s)", epoch, row["loss"],
                     valid["ndcg@10"], row["seconds"])
        if valid["ndcg@10"] > best_score:
            best_score, bad, best = valid["ndcg@10"], 0, copy.deepcopy(model.state_dict())
            hist.best_epoch, hist.best_valid = epoch, valid
        else:
            bad += 1
            if bad >= p.patience:
                hist.stopped = "patience"
                break
        if p.time_budget_s and time.perf_counter() - started + row["seconds"] > p.time_budget_s:
            log.info("SASRec+: time budget of %.0f s reached after epoch %d", p.time_budget_s, epoch)
            hist.stopped = "budget"
            break
    hist.train_seconds = time.perf_counter() - started
    hist.cpu_seconds = time.process_time() - cpu0
    if best is not None:
        model.load_state_dict(best)
    return model.eval(), hist
