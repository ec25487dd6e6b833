"""Hybrid text + ID GRU sequence recommender with a read-out of the recent items.

GRU4Rec (Hidasi et al. 2016, with full-softmax cross-entropy as in Hidasi & Karatzoglou 2018) with
hybrid items (a learned ID embedding plus a projection of a frozen LLM text vector, so an item never
seen in training is still representable from its text), and a second, direct path from the user's
last ``recent`` items to the output scores (an attention read-out, as in SASRec's last layer, with the
GRU state as the query):

    u      = out(h) + sum_k a_k * next(item_k)        a = softmax_k(q(h, v_last) . key(item_k) + pos_k)
    s_j    = u . v_j + b_j + prior_j(h, recent items)

``v_j`` is item j's vector (ID + text), ``next(i)`` a second item table ("what follows item i": ID +
text) and ``b_j`` its bias (ID + text). With the weight on the last item, ``next(last) . v_j`` is a
factorised first-order transition (FPMC, Rendle et al. 2010): "the next episode" is as easy for the
model as for a Markov chain, while ``out(h)`` carries the long-term taste the GRU accumulates. The
``prior`` term (model/transitions.py) adds the transition counts themselves -- of the last item, of its
text neighbours, and of the earlier recent items by attention -- weighed by a gate on the user's state:
where a count table knows better than the factorised path, the scores still have it.

The per-user serving state stays one vector: ``[h (hidden) | the rows of the last `recent` items]``.
A row is stored as two base-2048 digits, which float16 (the state table's format) holds exactly, so
the state read back from the table scores exactly like the one that was written (rows up to 4M).

Two ways to run the same weights:

* ``forward(items[B, T], gaps[B, T])`` -- the GRU over the whole sequence (training, offline
  evaluation), with ``scores(h, recent_rows)`` per position;
* ``step(state[B, S], items[B], gaps[B])`` -- one GRU step and one shift of the recent rows per event
  (serving), ``scores(state)``.

Both call the same modules, so stepping event by event gives the same scores as the full pass
(tests/test_model_parity.py holds them to float tolerance).

Design choices:

* **Weight tying**: the item table is both the GRU input and the output layer. Fewer parameters, and a
  new item gets a usable output vector from its text the moment it is added.
* **Time gap** (optional): ``log1p(hours since the previous event)`` is appended to the input vector;
  the first event of a user has gap 0.
* **ID dropout** (training only): per batch, a share of the items lose their ID parts (embedding,
  next-embedding and bias) at once, so the text parts must score them alone, on the same scale as the
  others: exactly the situation of an item that joins the catalog after training (``text_bias`` gives
  such an item a bias from its text).
"""

from __future__ import annotations

import math
from dataclasses import MISSING, asdict, dataclass, fields
from typing import NamedTuple

import torch
from torch import nn

from .adaptor import MoEAdaptor
from .transitions import TransitionPrior

PAD = 0  # item row 0 is padding / "no item"
ROW_BASE = 2048  # float16 holds every integer up to 2048 exactly: a row is stored as two such digits


# Upper bounds of each dimension of a model read from disk (GRUConfig.from_dict), far above any model this
# project trains; together they can still ask for too much, so the loader also bounds the parameter count
# (stream_rec.model.artifacts.MAX_PARAMETERS) before allocating anything.
CONFIG_MAXIMUM = {"n_items": 20_000_000, "text_dim": 16_384, "emb_dim": 16_384, "hidden": 16_384}


@dataclass(frozen=True)
class GRUConfig:
    n_items: int  # number of real items; rows are 1..n_items, row 0 is padding
    text_dim: int  # dimension of the frozen text vectors (0 = ID-only model)
    emb_dim: int = 64
    hidden: int = 128
    use_text: bool = True
    use_ids: bool = True
    use_time_gap: bool = True
    dropout: float = 0.2
    # Training only: probability of hiding an item's ID parts (per item row, per batch) so the text
    # parts must carry the item alone -- that is all an item unseen in training will have.
    id_dropout: float = 0.2
    recent: int = 16  # items kept in the state for the direct read-out (0 = GRU only)
    heads: int = 2  # attention heads of the read-out (each adds its own mix of next-vectors)
    text_bias: bool = True  # a bias from the text vector (the bias of an item unseen in training)
    # First-order transition prior fused into the scores by a learned gate (model/transitions.py); needs
    # recent >= 1 (the last item). prior_neighbours: text neighbours an item backs off through (0 = none).
    prior: bool = True
    prior_neighbours: int = 10
    # The prior also mixes, by attention, the count rows of the earlier recent items: each one's
    # ``prior_recent`` largest entries (0 = the last item's row only). 4 chosen on validation NDCG@10
    # (benchmarks/sweep.py, ML-100K + series, geometric mean of ratios: 4 -> 1.000, 1 -> 0.988,
    # 0 -> 0.982, 32 -> 0.973; docs/QUALITY.md).
    prior_recent: int = 4
    prior_init: float = 1.0  # each prior feature's weight before training (the gate's starting output)
    text_experts: int = 0  # > 0: a mixture-of-experts adaptor of the text vectors (model/adaptor.py), 0 = linear
    query_text: bool = False  # the newest item's frozen text vector in the read-out's query too
    # The last item's normalised count row as a second distribution, mixed with the model's softmax by a
    # learned gate (TransitionPrior.mix; needs prior): the scores are the mixture's log-probabilities. Off:
    # it wins on topics' validation but costs ML-100K's (docs/QUALITY.md, "Mixture with the count row").
    prior_mix: bool = False

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def state_size(self) -> int:
        """Floats per user state: the GRU hidden vector and two digits per recent item row."""
        return self.hidden + 2 * self.recent

    @classmethod
    def from_dict(cls, values: dict) -> "GRUConfig":
        """Checked construction from JSON: unknown fields, wrong types and out-of-range values raise a
        ValueError naming the field (a model directory is untrusted input)."""
        if not isinstance(values, dict):
            raise ValueError("must be a JSON object")
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ValueError(f"unknown field(s) {unknown}")
        missing = sorted(n for n, f in known.items() if f.default is MISSING and n not in values)
        if missing:
            raise ValueError(f"missing field(s) {missing}")
        for name, value in values.items():
            kind = known[name].type if isinstance(known[name].type, str) else known[name].type.__name__
            if kind == "bool" and not isinstance(value, bool):
                raise ValueError(f"{name} must be true or false, got {value!r}")
            if kind == "int" and (isinstance(value, bool) or not isinstance(value, int)):
                raise ValueError(f"{name} must be an integer, got {value!r}")
            if kind == "float" and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise ValueError(f"{name} must be a number, got {value!r}")
        config = cls(**values)
        minimum = {"n_items": 0, "text_dim": 0, "emb_dim": 1, "hidden": 1, "recent": 0, "heads": 1, "prior_neighbours": 0,
                   "text_experts": 0, "prior_recent": 0}
        for name, low in minimum.items():
            if getattr(config, name) < low:
                raise ValueError(f"{name} must be >= {low}, got {getattr(config, name)}")
        for name, high in CONFIG_MAXIMUM.items():  # before anything is allocated from these numbers
            if getattr(config, name) > high:
                raise ValueError(f"{name} must be <= {high}, got {getattr(config, name)}")
        if config.text_experts > 64:
            raise ValueError(f"text_experts must be <= 64, got {config.text_experts}")
        for name in ("recent", "prior_neighbours", "prior_recent"):
            if getattr(config, name) > 1024:
                raise ValueError(f"{name} must be <= 1024, got {getattr(config, name)}")
        if not 0.0 < config.prior_init <= 100.0:
            raise ValueError(f"prior_init must be in (0, 100], got {config.prior_init}")
        for name in ("dropout", "id_dropout"):
            if not 0.0 <= getattr(config, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(config, name)}")
        return config


class ItemTables(NamedTuple):
    """Everything the model needs per item row, computed once per batch (training) or per catalog change
    (serving)."""

    vectors: torch.Tensor  # [N+1, d] input and output vector (ID + text)
    nexts: torch.Tensor | None  # [N+1, d] "what follows this item" (ID + text); None without recent items
    bias: torch.Tensor  # [N+1] output bias (ID + text)
    keys: torch.Tensor | None = None  # [N+1, heads*d] attention keys of the read-out (None without recent items)
    id_hidden: torch.Tensor | None = None  # [N+1] training: the rows this draw of ID dropout hid (None: none)


def log_gap(seconds: torch.Tensor) -> torch.Tensor:
    """Time-gap feature: log1p of the gap in hours, clipped to [0, 10] (the first event has gap 0)."""
    return torch.log1p(seconds.clamp(min=0).float() / 3600.0).clamp(max=10.0)


def encode_rows(rows: torch.Tensor) -> torch.Tensor:
    """Item rows [..., K] -> their state digits [..., 2K] (high digits, then low digits; exact in float16)."""
    rows = rows.long()
    return torch.cat([torch.div(rows, ROW_BASE, rounding_mode="floor"), rows % ROW_BASE], dim=-1).float()


def decode_rows(digits: torch.Tensor) -> torch.Tensor:
    """State digits [..., 2K] -> item rows [..., K]."""
    k = digits.shape[-1] // 2
    d = digits.round().long()
    return d[..., :k] * ROW_BASE + d[..., k:]


def recent_windows(rows: torch.Tensor, k: int) -> torch.Tensor:
    """For each position t of rows [B, L]: the rows of positions t-k+1..t, PAD before the start.  -> [B, L, k]"""
    padded = torch.nn.functional.pad(rows, (k - 1, 0), value=PAD)
    return padded.unfold(1, k, 1)


class HybridGRU(nn.Module):
    def __init__(self, config: GRUConfig, text_vectors: torch.Tensor | None = None):
        super().__init__()
        self.config = config
        n_rows = config.n_items + 1
        d = config.emb_dim
        self.id_embedding = nn.Embedding(n_rows, d, padding_idx=PAD)
        nn.init.normal_(self.id_embedding.weight, std=0.02)
        with torch.no_grad():
            self.id_embedding.weight[PAD].zero_()
        if text_vectors is None:
            text_vectors = torch.zeros(n_rows, max(config.text_dim, 1))
        if text_vectors.shape[0] != n_rows:
            raise ValueError(f"text_vectors has {text_vectors.shape[0]} rows, expected {n_rows}")
        self.register_buffer("text_vectors", text_vectors.float(), persistent=True)  # [N+1, text_dim]
        text_dim = self.text_vectors.shape[1]
        self.text_proj = (MoEAdaptor(text_dim, d, config.text_experts) if config.text_experts
                          else nn.Linear(text_dim, d, bias=False))
        in_dim = d + (1 if config.use_time_gap else 0)
        self.gru = nn.GRU(in_dim, config.hidden, batch_first=True)
        self.dropout = nn.Dropout(config.dropout)
        self.out = nn.Linear(config.hidden, d)
        self.item_bias = nn.Parameter(torch.zeros(n_rows))
        if config.text_bias:
            self.text_bias = nn.Linear(self.text_vectors.shape[1], 1, bias=False)
            nn.init.zeros_(self.text_bias.weight)
        if config.recent:
            k = config.recent
            self.next_embedding = nn.Embedding(n_rows, d, padding_idx=PAD)
            nn.init.normal_(self.next_embedding.weight, std=0.02)
            with torch.no_grad():
                self.next_embedding.weight[PAD].zero_()
            self.next_text_proj = nn.Linear(self.text_vectors.shape[1], d, bias=False)
            heads = config.heads
            self.query = nn.Linear(config.hidden, heads * d)
            self.query_last = nn.Linear(d, heads * d, bias=False)  # the newest item's say in the query
            if config.query_text:
                self.query_text = nn.Linear(text_dim, heads * d, bias=False)
                nn.init.zeros_(self.query_text.weight)
            self.key = nn.Linear(d, heads * d, bias=False)
            self.position_key = nn.Parameter(torch.zeros(k, heads * d))  # index k-1 = the newest item
            self.position_bias = nn.Parameter(torch.zeros(heads, k))
        if config.prior and config.recent:
            self.prior = TransitionPrior(n_rows, config.hidden, d, config.recent, config.prior_recent, config.prior_init,
                                         mix=config.prior_mix)

    @property
    def has_prior(self) -> bool:
        return hasattr(self, "prior")

    @property
    def state_size(self) -> int:
        return self.config.state_size

    # --- item side -----------------------------------------------------------------------------------
    def item_tables(self) -> ItemTables:
        """Item vectors, next-vectors and biases of every row (ID dropout applied when training)."""
        c = self.config
        keep = None
        if self.training and c.use_text and c.use_ids and c.id_dropout > 0:
            keep = (torch.rand(self.item_bias.shape[0], device=self.item_bias.device) >= c.id_dropout).float()

        def combine(ids: torch.Tensor, proj: nn.Module) -> torch.Tensor:
            rep = torch.zeros_like(ids)
            if c.use_ids:
                rep = rep + (ids if keep is None else ids * keep[:, None])
            if c.use_text:
                rep = rep + proj(self.text_vectors)
            return rep

        vectors = combine(self.id_embedding.weight, self.text_proj)
        nexts = combine(self.next_embedding.weight, self.next_text_proj) if c.recent else None
        bias = self.item_bias if keep is None else self.item_bias * keep
        if c.text_bias and c.use_text:
            bias = bias + self.text_bias(self.text_vectors).squeeze(-1)
        return ItemTables(vectors, nexts, bias, self.key(vectors) if c.recent else None,
                          None if keep is None else keep == 0)

    def item_vectors(self) -> torch.Tensor:
        """Representation of every item row: ID embedding + projected text vector.  # [N+1, d]"""
        return self.item_tables().vectors

    def _tables(self, table) -> ItemTables:
        """``table``: ItemTables, a bare vector table (older callers: the other tables are computed), or None."""
        if isinstance(table, ItemTables):
            return table
        tables = self.item_tables()
        if table is None:
            return tables
        return tables._replace(vectors=table, keys=self.key(table) if self.config.recent else None)

    def _inputs(self, items: torch.Tensor, gaps: torch.Tensor | None, table: torch.Tensor) -> torch.Tensor:
        x = table[items]  # [..., d]
        if self.config.use_time_gap:
            g = torch.zeros_like(items, dtype=x.dtype) if gaps is None else log_gap(gaps).to(x.dtype)
            x = torch.cat([x, g.unsqueeze(-1)], dim=-1)
        return x

    # --- full sequence (training) -------------------------------------------------------------------
    def forward(self, items: torch.Tensor, gaps: torch.Tensor | None = None,
                h0: torch.Tensor | None = None, table=None) -> torch.Tensor:
        """GRU hidden vector after each position.  items [B, T] -> [B, T, H]"""
        table = self._tables(table).vectors
        x = self.dropout(self._inputs(items, gaps, table))
        if h0 is not None:
            h0 = h0[..., :self.config.hidden].unsqueeze(0).contiguous()
        out, _ = self.gru(x, h0)
        return out

    def user_vectors(self, hidden: torch.Tensor, recent: torch.Tensor | None, tables: ItemTables) -> torch.Tensor:
        """hidden [..., H], recent rows [..., K] (oldest first, PAD = none) -> user vector [..., d]"""
        u = self.out(self.dropout(hidden))
        if not self.config.recent or recent is None:
            return u
        heads, d = self.config.heads, u.shape[-1]
        keys = tables.keys[recent] + self.position_key  # [..., K, heads*d]
        keys = keys.unflatten(-1, (heads, d)).transpose(-3, -2)  # [..., heads, K, d]
        q = self.query(hidden) + self.query_last(tables.vectors[recent[..., -1]])
        if self.config.query_text:
            q = q + self.query_text(self.text_vectors[recent[..., -1]])
        q = q.unflatten(-1, (heads, d)).unsqueeze(-1)  # [..., heads, d, 1]
        logits = (keys @ q).squeeze(-1) / math.sqrt(d) + self.position_bias  # [..., heads, K]
        present = (recent != PAD).unsqueeze(-2)  # [..., 1, K]
        weights = torch.softmax(logits.masked_fill(~present, -1e9), dim=-1) * present  # no item at all: no read-out
        return u + (weights.sum(-2).unsqueeze(-1) * tables.nexts[recent]).sum(-2)  # the heads' mixes, added

    def scores(self, state: torch.Tensor, table=None, recent: torch.Tensor | None = None,
               leave_out: torch.Tensor | None = None, hide_prior: bool = False) -> torch.Tensor:
        """Scores of every item row.  state [..., S] (or a bare hidden vector [..., H], with ``recent``
        rows [..., K] or none) -> [..., N+1]. ``leave_out`` [...] (training): each example's target, whose
        own transition the transition prior leaves out of its counts. ``hide_prior`` (training): the rows
        whose IDs the table's ID dropout hid get no prior either -- as an item that joins after training,
        which has no transitions into it: the text path learns to rank such an item against the others'
        counts (``TrainParams.prior_id_dropout``)."""
        tables = self._tables(table)
        hidden, rows = self.split_state(state)
        if recent is not None:
            rows = recent
        u = self.user_vectors(hidden, rows, tables)
        s = u @ tables.vectors.T + tables.bias
        if self.has_prior and rows is not None:
            lo = None if leave_out is None else leave_out.reshape(-1)
            h = hidden.reshape(-1, hidden.shape[-1])
            flat_rows = rows.reshape(-1, rows.shape[-1])
            prior = self.prior.scores(h, tables.vectors, flat_rows, lo).reshape(s.shape)
            if hide_prior and tables.id_hidden is not None:
                prior = prior.masked_fill(tables.id_hidden, 0.0)
            s = s + prior
            if self.config.prior_mix:  # (its count row keeps the ID-dropped items' columns; off by default)
                s[..., PAD] = -math.inf
                s = self.prior.mix(s.reshape(-1, s.shape[-1]), h, tables.vectors, flat_rows[:, -1], lo).reshape(s.shape)
        s[..., PAD] = -math.inf
        return s

    # --- the serving state ---------------------------------------------------------------------------
    def split_state(self, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """[..., S] -> (hidden [..., H], recent rows [..., K] or None). A bare [..., H] has no rows."""
        H = self.config.hidden
        if state.shape[-1] == H or not self.config.recent:
            return state[..., :H], None
        return state[..., :H], decode_rows(state[..., H:])

    def make_state(self, hidden: torch.Tensor, recent: torch.Tensor | None) -> torch.Tensor:
        """(hidden [..., H], recent rows [..., K]) -> state [..., S]"""
        if not self.config.recent:
            return hidden
        if recent is None:
            recent = torch.zeros(*hidden.shape[:-1], self.config.recent, dtype=torch.long, device=hidden.device)
        return torch.cat([hidden, encode_rows(recent).to(hidden.dtype)], dim=-1)

    # --- incremental (serving) ----------------------------------------------------------------------
    def init_state(self, batch: int) -> torch.Tensor:
        """State of a user with no history.  # [B, S]"""
        return torch.zeros(batch, self.state_size, device=self.item_bias.device)

    def step(self, state: torch.Tensor, items: torch.Tensor, gaps: torch.Tensor | None = None,
             table=None) -> torch.Tensor:
        """One GRU step and one shift of the recent rows per user.  state [B, S], items [B] -> [B, S]"""
        tables = self._tables(table)
        h, rows = self.split_state(state)
        x = self._inputs(items.unsqueeze(1), None if gaps is None else gaps.unsqueeze(1), tables.vectors)
        _, h_new = self.gru(x, h.unsqueeze(0).contiguous())
        if rows is not None:
            rows = torch.cat([rows[:, 1:], items.long().unsqueeze(1)], dim=1)
        return self.make_state(h_new.squeeze(0), rows)


def neighbour_init(known_text: torch.Tensor, known_ids: torch.Tensor, known_bias: torch.Tensor,
                   new_text: torch.Tensor, k: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    """ID embedding and bias for items unseen in training, from their text alone: the mean ID embedding
    and bias of the ``k`` known items whose text vectors are closest (cosine). A zero ID embedding
    would leave a new item far from everything users actually interacted with; its text neighbours
    place it where similar items live in the collaborative space.
    known_text [N, D], known_ids [N, d], known_bias [N], new_text [M, D] -> ([M, d], [M])"""
    sim = nn.functional.normalize(new_text, dim=1) @ nn.functional.normalize(known_text, dim=1).T  # [M, N]
    idx = sim.topk(min(k, known_text.shape[0]), dim=1).indices  # [M, k]
    return known_ids[idx].mean(1), known_bias[idx].mean(1)


def topk_excluding(scores: torch.Tensor, k: int, exclude: list[list[int]],
                   inplace: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k rows per user after masking the rows in ``exclude[b]`` (seen items).
    ``inplace``: mask ``scores`` itself (the caller's fresh tensor) instead of a copy.
    scores [B, N+1] -> (values [B, k], rows [B, k])"""
    if not inplace:
        scores = scores.clone()
    if exclude:
        b_idx = [b for b, rows in enumerate(exclude) for _ in rows]
        r_idx = [r for rows in exclude for r in rows]
        if r_idx:
            scores[torch.tensor(b_idx, device=scores.device), torch.tensor(r_idx, device=scores.device)] = -math.inf
    k = min(k, scores.shape[1] - 1)
    return torch.topk(scores, k, dim=1)
