"""Hybrid text + ID GRU sequence recommender (GRU4Rec, Hidasi et al. 2016, "Session-based
Recommendations with Recurrent Neural Networks", with full-softmax cross-entropy as in Hidasi &
Karatzoglou 2018, and item inputs made hybrid: a learned ID embedding plus a projection of a frozen
LLM text vector, so an item never seen in training is still representable from its text).

Two ways to run the same weights:

* ``forward(items[B, T], gaps[B, T])`` -- the whole sequence at once (training, offline evaluation);
* ``step(h[B, H], items[B], gaps[B])`` -- one GRU step per event from a stored hidden state (serving).

Both call the same ``nn.GRU`` module, so stepping event by event gives the same hidden states as the
full pass (tests/test_model_parity.py holds them to float tolerance).

Design choices:

* **Weight tying**: one item table (ID embedding + projected text vector) is both the GRU input and the
  output layer (score = ``out(h) . item_vector + item_bias``). Fewer parameters, and a new item gets a
  usable output vector from its text the moment it is added.
* **Time gap** (optional): ``log1p(hours since the previous event)`` is appended to the input vector;
  the first event of a user has gap 0.
* **ID dropout** (optional, training only): hiding whole ID embeddings forces the text projection to
  represent items on its own, which is what items unseen in training rely on.
"""

from __future__ import annotations

import math
from dataclasses import MISSING, asdict, dataclass, fields

import torch
from torch import nn

PAD = 0  # item row 0 is padding / "no item"


# Upper bounds of each dimension of a model read from disk (GRUConfig.from_dict), far above any model this
# project trains; together they can still ask for too much, so the loader also bounds the parameter count
# (stream_rec.model.recommender.MAX_PARAMETERS) before allocating anything.
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
    # Training only: probability of hiding an item's ID embedding (per item row, per batch) so the text
    # projection must carry the item alone -- that is all an item unseen in training will have.
    id_dropout: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)

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
        minimum = {"n_items": 0, "text_dim": 0, "emb_dim": 1, "hidden": 1}
        for name, low in minimum.items():
            if getattr(config, name) < low:
                raise ValueError(f"{name} must be >= {low}, got {getattr(config, name)}")
        for name, high in CONFIG_MAXIMUM.items():  # before anything is allocated from these numbers
            if getattr(config, name) > high:
                raise ValueError(f"{name} must be <= {high}, got {getattr(config, name)}")
        for name in ("dropout", "id_dropout"):
            if not 0.0 <= getattr(config, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(config, name)}")
        return config


def log_gap(seconds: torch.Tensor) -> torch.Tensor:
    """Time-gap feature: log1p of the gap in hours, clipped to [0, 10] (the first event has gap 0)."""
    return torch.log1p(seconds.clamp(min=0).float() / 3600.0).clamp(max=10.0)


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
        self.text_proj = nn.Linear(self.text_vectors.shape[1], d, bias=False)
        in_dim = d + (1 if config.use_time_gap else 0)
        self.gru = nn.GRU(in_dim, config.hidden, batch_first=True)
        self.dropout = nn.Dropout(config.dropout)
        self.out = nn.Linear(config.hidden, d)
        self.item_bias = nn.Parameter(torch.zeros(n_rows))

    # --- item side -----------------------------------------------------------------------------------
    def item_vectors(self) -> torch.Tensor:
        """Representation of every item row: ID embedding + projected text vector.  # [N+1, d]"""
        rep = torch.zeros_like(self.id_embedding.weight)
        if self.config.use_ids:
            ids = self.id_embedding.weight
            if self.training and self.config.use_text and self.config.id_dropout > 0:
                keep = torch.rand(ids.shape[0], 1, device=ids.device) >= self.config.id_dropout
                ids = ids * keep
            rep = rep + ids
        if self.config.use_text:
            rep = rep + self.text_proj(self.text_vectors)
        return rep

    def _inputs(self, items: torch.Tensor, gaps: torch.Tensor | None, table: torch.Tensor) -> torch.Tensor:
        x = table[items]  # [..., d]
        if self.config.use_time_gap:
            g = torch.zeros_like(items, dtype=x.dtype) if gaps is None else log_gap(gaps).to(x.dtype)
            x = torch.cat([x, g.unsqueeze(-1)], dim=-1)
        return x

    # --- full sequence (training) -------------------------------------------------------------------
    def forward(self, items: torch.Tensor, gaps: torch.Tensor | None = None,
                h0: torch.Tensor | None = None, table: torch.Tensor | None = None) -> torch.Tensor:
        """Hidden state after each position.  items [B, T] -> [B, T, H]"""
        table = self.item_vectors() if table is None else table
        x = self.dropout(self._inputs(items, gaps, table))
        out, _ = self.gru(x, None if h0 is None else h0.unsqueeze(0))
        return out

    def scores(self, hidden: torch.Tensor, table: torch.Tensor | None = None) -> torch.Tensor:
        """Scores of every item row for each hidden state.  [..., H] -> [..., N+1]"""
        table = self.item_vectors() if table is None else table
        s = self.out(self.dropout(hidden)) @ table.T + self.item_bias
        s[..., PAD] = -math.inf
        return s

    # --- incremental (serving) ----------------------------------------------------------------------
    def init_state(self, batch: int) -> torch.Tensor:
        """Hidden state of a user with no history.  # [B, H]"""
        return torch.zeros(batch, self.config.hidden, device=self.item_bias.device)

    def step(self, h: torch.Tensor, items: torch.Tensor, gaps: torch.Tensor | None = None,
             table: torch.Tensor | None = None) -> torch.Tensor:
        """One GRU step per row from stored states.  h [B, H], items [B] -> [B, H]"""
        table = self.item_vectors() if table is None else table
        x = self._inputs(items.unsqueeze(1), None if gaps is None else gaps.unsqueeze(1), table)
        _, h_new = self.gru(x, h.unsqueeze(0).contiguous())
        return h_new.squeeze(0)


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
