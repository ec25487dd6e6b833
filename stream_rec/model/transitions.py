"""A first-order transition prior fused into the GRU's scores: what a count table knows, the model keeps.

A first-order Markov chain (score(j | last item i) = how often i was followed by j in training) is hard to
beat where the next item depends mostly on the last one, and a learned model can land under it by
spreading that mass over its factorised parameters. So the counts themselves enter the scores:

    s_j = gru_j + w_own(state) * log1p(C[i, j]) + w_text(state) * log1p(B[i, j])

* ``C`` -- transition counts from the training events (sparse rows: item -> next item, how often);
* ``B`` -- the text back-off: the counts of item i's ``neighbours`` nearest items by text (cosine of the
  frozen text vectors, among items with transitions), averaged with weights ∝ similarity and cut to the
  ``BACKOFF_ROW`` largest entries -- what an item with few or no transitions of its own (a rare item, an
  item added after training) borrows from the items that read like it;
* ``w = softplus(gate(h, v_last, log1p(n_i)))`` -- two non-negative weights per user state, learned end
  to end with the rest (``n_i``: transitions out of i, how far its own row can be trusted).

With ``w_own`` large the ranking is Markov's with the GRU breaking its ties; with both weights near 0 it
is the GRU's: the loss chooses per user state. The last item is already in the serving state (the recent
rows), so a user's scores cost one sparse row gather more than before: O(row length) per event.

**Leakage.** A training example's own transition i -> j is in ``C``; seen in training that way, the count
would look more telling than it is on unseen events (it is never there at test time). ``features`` takes
the example's target and subtracts it: leave-one-out counts. ``B`` holds other items' rows only.

The tables are buffers (not parameters) saved in ``transitions.safetensors`` beside the weights, as CSR
arrays, so a catalogue of millions of items costs its transitions, not its square.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import numpy as np
import torch
from torch import nn

BACKOFF_ROW = 128  # entries kept per back-off row (the largest): bounds B at BACKOFF_ROW x items
FEATURES = 3  # the last item's own counts, its text back-off, the earlier recent items' counts
MIX_INIT = -2.0  # the mixture gate's starting logit: the count row's share starts at sigmoid(-2) = 0.12
TINY = 1e-30  # log(0) stand-in: keeps the mixture's gradients finite where a probability is 0


class CSR(NamedTuple):
    """A sparse [n_rows, n_rows] matrix: row r is indices[indptr[r]:indptr[r+1]] with values alike."""

    indptr: np.ndarray  # int64 [n_rows + 1]
    indices: np.ndarray  # int64 [nnz]
    values: np.ndarray  # float32 [nnz]

    @property
    def n_rows(self) -> int:
        return len(self.indptr) - 1

    def row_sums(self) -> np.ndarray:
        return np.add.reduceat(np.append(self.values, 0.0), self.indptr[:-1]) * (np.diff(self.indptr) > 0)


def empty_csr(n_rows: int) -> CSR:
    return CSR(np.zeros(n_rows + 1, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32))


def count_transitions(sequences: Sequence[np.ndarray], n_rows: int) -> CSR:
    """Counts of each consecutive pair (i, j) over the sequences of item rows (row 0 = padding never counts)."""
    pairs = [s[:-1].astype(np.int64) * n_rows + s[1:] for s in sequences if len(s) > 1]
    keys, counts = np.unique(np.concatenate(pairs) if pairs else np.zeros(0, np.int64), return_counts=True)
    src, dst = keys // n_rows, keys % n_rows
    keep = (src > 0) & (dst > 0)
    src, dst, counts = src[keep], dst[keep], counts[keep]
    indptr = np.zeros(n_rows + 1, np.int64)
    np.add.at(indptr, src + 1, 1)
    return CSR(np.cumsum(indptr), dst, counts.astype(np.float32))


def text_neighbours(text: torch.Tensor, candidates: torch.Tensor, queries: torch.Tensor, k: int,
                    chunk: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` rows among ``candidates`` whose text is closest (cosine) to each query row's, itself
    excluded, with their similarities (clipped at 0).  text [N+1, D] -> (rows [Q, k], sims [Q, k])"""
    unit = nn.functional.normalize(text.float(), dim=1)
    k = min(k, max(len(candidates) - 1, 0))
    rows, sims = [], []
    for s in range(0, len(queries), chunk):
        q = queries[s:s + chunk]
        sim = unit[q] @ unit[candidates].T  # [q, C]
        sim[candidates[None, :] == q[:, None]] = -math.inf
        top = sim.topk(k, dim=1) if k else (sim[:, :0], sim[:, :0].long())
        rows.append(candidates[top[1]])
        sims.append(top[0].clamp(min=0))
    if not rows:
        return torch.zeros(0, k, dtype=torch.long), torch.zeros(0, k)
    return torch.cat(rows), torch.cat(sims)


def text_backoff(counts: CSR, text: torch.Tensor | None, k: int, rows: np.ndarray | None = None) -> CSR:
    """Back-off rows: for each row in ``rows`` (default: every row), the similarity-weighted mean of the
    count rows of its ``k`` nearest items by text that have transitions, cut to its ``BACKOFF_ROW``
    largest entries. Rows without text (a zero vector) or without neighbours stay empty."""
    n_rows = counts.n_rows
    rows = np.arange(1, n_rows) if rows is None else np.asarray(rows, np.int64)
    out_idx: list[np.ndarray] = [np.zeros(0, np.int64)] * n_rows
    out_val: list[np.ndarray] = [np.zeros(0, np.float32)] * n_rows
    if text is not None and k > 0 and len(rows):
        has_text = text.abs().sum(1) > 0
        sources = torch.from_numpy(np.flatnonzero((np.diff(counts.indptr) > 0) & has_text[:n_rows].numpy()))
        queries = torch.from_numpy(rows[has_text[rows].numpy()])
        if len(sources) and len(queries):
            nb, sim = text_neighbours(text, sources, queries, k)
            for q, row_nb, row_sim in zip(queries.tolist(), nb.numpy(), sim.numpy()):
                out_idx[q], out_val[q] = _mix_rows(counts, row_nb, row_sim)
    lengths = np.array([len(v) for v in out_idx], np.int64)
    indptr = np.concatenate([[0], np.cumsum(lengths)])
    return CSR(indptr, np.concatenate(out_idx), np.concatenate(out_val).astype(np.float32))


def _mix_rows(counts: CSR, rows: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """sum_n w_n * counts[rows[n]] / sum w, its BACKOFF_ROW largest entries (sorted by column)."""
    total = float(weights.sum())
    if total <= 0:
        return np.zeros(0, np.int64), np.zeros(0, np.float32)
    cols = np.concatenate([counts.indices[counts.indptr[r]:counts.indptr[r + 1]] for r in rows])
    vals = np.concatenate([counts.values[counts.indptr[r]:counts.indptr[r + 1]] * (w / total)
                           for r, w in zip(rows, weights)])
    uniq, inverse = np.unique(cols, return_inverse=True)
    summed = np.bincount(inverse, weights=vals, minlength=len(uniq))
    if len(uniq) > BACKOFF_ROW:
        top = np.sort(np.argpartition(-summed, BACKOFF_ROW)[:BACKOFF_ROW])
        uniq, summed = uniq[top], summed[top]
    keep = summed > 0
    return uniq[keep], summed[keep].astype(np.float32)


def head_rows(m: CSR, keep: int) -> CSR:
    """Each row cut to its ``keep`` largest entries (ties: the lower column first), columns in order."""
    lengths = np.diff(m.indptr)
    if lengths.max(initial=0) <= keep:
        return m
    row = np.repeat(np.arange(m.n_rows), lengths)
    order = np.lexsort((m.indices, -m.values, row))  # by row, then largest value, then column
    rank = np.arange(len(order)) - np.repeat(m.indptr[:-1], lengths)
    kept = np.sort(order[rank < keep])  # positions in the original (row, column) order
    new_lengths = np.minimum(lengths, keep)
    return CSR(np.concatenate([[0], np.cumsum(new_lengths)]), m.indices[kept], m.values[kept])


def append_rows(matrix: CSR, new: CSR, start: int) -> CSR:
    """``matrix`` grown to ``new.n_rows`` rows, rows ``start``.. taken from ``new`` (items added at the end)."""
    lo, hi = new.indptr[start], new.indptr[-1]
    indptr = np.concatenate([matrix.indptr, matrix.indptr[-1] + new.indptr[start + 1:] - lo])
    return CSR(indptr, np.concatenate([matrix.indices, new.indices[lo:hi]]),
               np.concatenate([matrix.values, new.values[lo:hi]]))


def build_tables(sequences: Sequence[np.ndarray], n_rows: int, text: torch.Tensor | None,
                 neighbours: int) -> tuple[CSR, CSR]:
    """The prior's count and back-off tables from training sequences of item rows (``text``: the item text
    vectors [n_rows, D], None for an ID-only model: no back-off)."""
    counts = count_transitions(sequences, n_rows)
    return counts, text_backoff(counts, text, neighbours)


def gather_rows(indptr: torch.Tensor, indices: torch.Tensor, values: torch.Tensor, rows: torch.Tensor,
                n_cols: int) -> torch.Tensor:
    """Dense rows of a CSR matrix.  rows [B] -> [B, n_cols] (zeros where the row has no entry)"""
    starts, ends = indptr[rows], indptr[rows + 1]
    lengths = ends - starts
    out = torch.zeros(len(rows), n_cols, dtype=values.dtype, device=values.device)
    total = int(lengths.sum())
    if total == 0:
        return out
    owner = torch.repeat_interleave(torch.arange(len(rows), device=rows.device), lengths)
    first = torch.repeat_interleave(starts - (torch.cumsum(lengths, 0) - lengths), lengths)
    at = torch.arange(total, device=rows.device) + first
    out[owner, indices[at]] = values[at]
    return out


def gather_weighted(indptr: torch.Tensor, indices: torch.Tensor, values: torch.Tensor, rows: torch.Tensor,
                    weights: torch.Tensor, n_cols: int) -> torch.Tensor:
    """sum_k weights[b, k] * log1p(row rows[b, k] of a CSR matrix), dense, differentiable in ``weights``.
    rows [B, K], weights [B, K] -> [B, n_cols]"""
    flat = rows.reshape(-1)
    starts = indptr[flat]
    lengths = indptr[flat + 1] - starts
    total = int(lengths.sum())
    out = weights.new_zeros(rows.shape[0] * n_cols)
    if total == 0:
        return out.view(rows.shape[0], n_cols)
    owner = torch.repeat_interleave(torch.arange(len(flat), device=rows.device), lengths)  # (b, k) of each entry
    first = torch.repeat_interleave(starts - (torch.cumsum(lengths, 0) - lengths), lengths)
    at = torch.arange(total, device=rows.device) + first
    target = torch.div(owner, rows.shape[1], rounding_mode="floor") * n_cols + indices[at]
    out = out.index_add(0, target, torch.log1p(values[at]) * weights.reshape(-1)[owner])
    return out.view(rows.shape[0], n_cols)


class TransitionPrior(nn.Module):
    """The count tables (buffers, filled by ``set_tables``), the gate that weighs them per user state, and
    the attention that picks which earlier recent items' transitions count (``recent``)."""

    def __init__(self, n_rows: int, hidden: int, emb_dim: int, recent: int, recent_row: int = 0, init: float = 1.0,
                 mix: bool = False):
        super().__init__()
        self.recent_row = recent_row  # entries of each earlier item's count row the attention mixes (0 = none)
        self.use_recent = recent_row > 0 and recent > 1
        self.gate = nn.Linear(hidden + emb_dim + 1, FEATURES)
        nn.init.zeros_(self.gate.weight)
        nn.init.constant_(self.gate.bias, math.log(math.expm1(init)))  # softplus(bias) = init: the starting weights
        if mix:  # the share of the last item's normalised count row in a mixture of distributions (``mix``)
            self.mix_gate = nn.Linear(hidden + emb_dim + 1, 1)
            nn.init.zeros_(self.mix_gate.weight)
            nn.init.constant_(self.mix_gate.bias, MIX_INIT)
        if self.use_recent:  # one attention head over the items before the last one
            self.query = nn.Linear(hidden + emb_dim, emb_dim)
            self.key = nn.Linear(emb_dim, emb_dim, bias=False)
            self.position = nn.Parameter(torch.zeros(recent - 1))
        # counts and back-off as loaded; "head": each count row's recent_row largest entries (derived, not saved)
        for name in ("counts", "backoff") + (("head",) if self.use_recent else ()):
            self.register_buffer(f"{name}_indptr", torch.zeros(n_rows + 1, dtype=torch.long), persistent=False)
            self.register_buffer(f"{name}_indices", torch.zeros(0, dtype=torch.long), persistent=False)
            self.register_buffer(f"{name}_values", torch.zeros(0), persistent=False)
        self.register_buffer("out_counts", torch.zeros(n_rows), persistent=False)

    @property
    def n_rows(self) -> int:
        return self.counts_indptr.shape[0] - 1

    def set_tables(self, counts: CSR, backoff: CSR) -> None:
        device = self.gate.weight.device
        head = (("head", head_rows(counts, self.recent_row)),) if self.use_recent else ()
        for name, m in (("counts", counts), ("backoff", backoff)) + head:
            setattr(self, f"{name}_indptr", torch.as_tensor(m.indptr, dtype=torch.long, device=device))
            setattr(self, f"{name}_indices", torch.as_tensor(m.indices, dtype=torch.long, device=device))
            setattr(self, f"{name}_values", torch.as_tensor(m.values, dtype=torch.float32, device=device))
        self.out_counts = torch.as_tensor(counts.row_sums(), dtype=torch.float32, device=device)

    def tables(self) -> tuple[CSR, CSR]:
        def csr(name):
            return CSR(*(getattr(self, f"{name}_{p}").cpu().numpy() for p in ("indptr", "indices", "values")))

        return csr("counts"), csr("backoff")

    def features(self, last: torch.Tensor, leave_out: torch.Tensor | None = None) -> torch.Tensor:
        """log1p of the own and back-off rows of each last item.  last [B] -> [B, 2, N+1]
        ``leave_out`` [B]: each example's target, whose transition from ``last`` is taken out of the counts."""
        own = self.own_rows(last, leave_out)
        back = gather_rows(self.backoff_indptr, self.backoff_indices, self.backoff_values, last, self.n_rows)
        return torch.log1p(torch.stack([own, back], dim=1))

    def own_rows(self, last: torch.Tensor, leave_out: torch.Tensor | None = None) -> torch.Tensor:
        """The count rows of the last items, dense, each example's own transition left out.  last [B] -> [B, N+1]"""
        own = gather_rows(self.counts_indptr, self.counts_indices, self.counts_values, last, self.n_rows)
        if leave_out is not None:
            at = torch.arange(len(last), device=last.device)
            own[at, leave_out] = (own[at, leave_out] - 1.0).clamp(min=0.0)
        return own

    def recent_feature(self, hidden: torch.Tensor, vectors: torch.Tensor, recent: torch.Tensor) -> torch.Tensor:
        """The count rows of the items before the last one (their ``recent_row`` largest entries), mixed by
        attention (query: the state and the last item; keys: the items and their positions): "back to what
        was left" (the next episode of a series left two items ago) is a count row too, just not the last
        item's.  recent [B, K] -> [B, N+1]"""
        earlier = recent[:, :-1]
        q = self.query(torch.cat([hidden, vectors[recent[:, -1]]], dim=-1))  # [B, d]
        logits = (self.key(vectors[earlier]) @ q.unsqueeze(-1)).squeeze(-1) / math.sqrt(q.shape[-1]) + self.position
        present = earlier != 0
        a = torch.softmax(logits.masked_fill(~present, -1e9), dim=-1) * present  # no earlier item: no feature
        return gather_weighted(self.head_indptr, self.head_indices, self.head_values, earlier, a, self.n_rows)

    def weights(self, hidden: torch.Tensor, last_vector: torch.Tensor, last: torch.Tensor,
                leave_out: torch.Tensor | None = None) -> torch.Tensor:
        """The gate: non-negative weight of each feature per user state.  -> [B, FEATURES]"""
        return nn.functional.softplus(self.gate(self._gate_input(hidden, last_vector, last, leave_out)))

    def _gate_input(self, hidden: torch.Tensor, last_vector: torch.Tensor, last: torch.Tensor,
                    leave_out: torch.Tensor | None = None) -> torch.Tensor:
        """What the gates see: the state, the last item's vector and log1p of its transitions out."""
        n_out = self.out_counts[last] - (0.0 if leave_out is None else 1.0)
        return torch.cat([hidden, last_vector, torch.log1p(n_out.clamp(min=0.0)).unsqueeze(-1)], dim=-1)

    def mix(self, logits: torch.Tensor, hidden: torch.Tensor, vectors: torch.Tensor, last: torch.Tensor,
            leave_out: torch.Tensor | None = None) -> torch.Tensor:
        """Log-probabilities of the mixture ``(1 - lam) softmax(logits) + lam C[last] / n_last``, ``lam`` a gate
        on the user state (0 without a count row). A log-linear term (``scores``) multiplies every counted
        item by a power of its count, so a noisy one-off transition outranks the items the model ranks well
        but that were never counted after ``last``; in the mixture, a count row only adds its share of
        probability.  logits [B, N+1] (PAD at -inf), last [B] -> [B, N+1]"""
        own = self.own_rows(last, leave_out)
        total = own.sum(1, keepdim=True)
        lam = torch.sigmoid(self.mix_gate(self._gate_input(hidden, vectors[last], last, leave_out))) * (total > 0)
        counted = torch.log((own / total.clamp(min=1.0)).clamp(min=TINY)) + torch.log(lam.clamp(min=TINY))
        return torch.logaddexp(torch.log_softmax(logits, dim=-1) + torch.log1p(-lam), counted)

    def scores(self, hidden: torch.Tensor, vectors: torch.Tensor, recent: torch.Tensor,
               leave_out: torch.Tensor | None = None) -> torch.Tensor:
        """The prior's part of every item's score.  hidden [B, H], item vectors [N+1, d], recent rows [B, K]
        (oldest first, the last item at -1) -> [B, N+1] (0 for a user without a last item)"""
        last = recent[:, -1]
        w = self.weights(hidden, vectors[last], last, leave_out)  # [B, FEATURES]
        s = (w[:, :2].unsqueeze(-1) * self.features(last, leave_out)).sum(1)
        if self.use_recent:
            s = s + w[:, 2:] * self.recent_feature(hidden, vectors, recent)
        return s * (last != 0).unsqueeze(-1)
