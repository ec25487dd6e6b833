"""The serving face of the model: what the stream calls.

``Recommender`` wraps a :class:`HybridGRU` with its item index (item_id <-> row) and a version string,
and speaks numpy at the boundary so the stream never touches torch:

    states = rec.init_state(n)                          # [n, H] float32
    states = rec.step(states, rows, gaps_seconds)       # one GRU step per event, batched across users
    lists  = rec.topk(states, k, exclude_rows)          # [(item_id, score), ...] per user, seen excluded

The model stays resident on its device; each call moves its inputs in one transfer.
"""

from __future__ import annotations

import threading
from typing import Sequence

import numpy as np
import torch

from .gru import PAD, GRUConfig, HybridGRU, topk_excluding


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class Recommender:
    def __init__(self, model: HybridGRU, item_ids: Sequence[str], version: str, *, trained: bool,
                 device: str | torch.device = "auto"):
        if len(item_ids) != model.config.n_items:
            raise ValueError(f"{len(item_ids)} item ids for a model of {model.config.n_items} items")
        self.device = pick_device(device) if isinstance(device, str) else device
        self.model = model.to(self.device).eval()
        self.item_ids: list[str] = list(item_ids)
        self.row_of: dict[str, int] = {item: row for row, item in enumerate(self.item_ids, start=1)}
        self.version = version
        self.trained = trained
        self._lock = threading.Lock()
        self._refresh_item_table()

    # --- construction ------------------------------------------------------------------------------
    @classmethod
    def untrained(cls, item_ids: Sequence[str], text_vectors: np.ndarray | None = None,
                  config: GRUConfig | None = None, seed: int = 0, device: str = "auto") -> "Recommender":
        """Same architecture, random weights: what the service runs until a trained model is given."""
        torch.manual_seed(seed)
        text_dim = 0 if text_vectors is None else int(text_vectors.shape[1])
        config = config or GRUConfig(n_items=len(item_ids), text_dim=text_dim, use_text=text_dim > 0)
        tv = None
        if text_vectors is not None:
            tv = torch.cat([torch.zeros(1, text_dim), torch.as_tensor(text_vectors, dtype=torch.float32)])
        return cls(HybridGRU(config, tv), item_ids, version="untrained-gru-0", trained=False, device=device)

    @property
    def hidden_size(self) -> int:
        return self.model.config.hidden

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    def rows_for(self, item_ids: Sequence[str]) -> list[int]:
        """Row of each item id, PAD (0) for an unknown id."""
        return [self.row_of.get(i, PAD) for i in item_ids]

    # --- serving -----------------------------------------------------------------------------------
    @torch.no_grad()
    def init_state(self, n: int) -> np.ndarray:
        return self.model.init_state(n).cpu().numpy()

    @torch.no_grad()
    def step(self, states: np.ndarray, rows: Sequence[int], gaps_seconds: Sequence[float] | None = None) -> np.ndarray:
        """One GRU step for each (state, item row) pair.  [B, H], [B] -> [B, H]"""
        h = torch.as_tensor(np.asarray(states, dtype=np.float32), device=self.device)
        items = torch.as_tensor(np.asarray(rows, dtype=np.int64), device=self.device)
        gaps = None if gaps_seconds is None else torch.as_tensor(np.asarray(gaps_seconds, dtype=np.float32), device=self.device)
        with self._lock:
            out = self.model.step(h, items, gaps, table=self._table)
        return out.cpu().numpy()

    @torch.no_grad()
    def score_rows(self, states: np.ndarray) -> torch.Tensor:
        """Scores of every item row.  [B, H] -> [B, N+1] (torch, on the model's device)"""
        h = torch.as_tensor(np.asarray(states, dtype=np.float32), device=self.device)
        with self._lock:
            return self.model.scores(h, table=self._table)

    @torch.no_grad()
    def topk(self, states: np.ndarray, k: int, exclude_rows: Sequence[Sequence[int]]) -> list[list[tuple[str, float]]]:
        """Top-k (item_id, score) per user with the rows in ``exclude_rows[b]`` (seen items) left out."""
        values, rows = topk_excluding(self.score_rows(states), k, [list(r) for r in exclude_rows])
        values, rows = values.cpu().numpy(), rows.cpu().numpy()
        return [[(self.item_ids[r - 1], float(v)) for v, r in zip(vs, rs) if r != PAD and np.isfinite(v)]
                for vs, rs in zip(values, rows)]

    # --- live catalog ------------------------------------------------------------------------------
    @torch.no_grad()
    def add_items(self, item_ids: Sequence[str], text_vectors: np.ndarray | None = None) -> list[int]:
        """Append items not seen in training. They get a zero ID embedding and zero bias, so they are
        scored through their text vector alone. Known ids are updated in place (new text vector).
        Returns their rows."""
        m = self.model
        rows = []
        with self._lock:
            for n, item in enumerate(item_ids):
                vec = None
                if text_vectors is not None:
                    vec = torch.as_tensor(text_vectors[n], dtype=torch.float32, device=self.device)
                row = self.row_of.get(item)
                if row is None:
                    row = len(self.item_ids) + 1
                    self.item_ids.append(item)
                    self.row_of[item] = row
                    m.id_embedding.weight = torch.nn.Parameter(torch.cat([m.id_embedding.weight, m.id_embedding.weight.new_zeros(1, m.id_embedding.weight.shape[1])]))
                    m.item_bias = torch.nn.Parameter(torch.cat([m.item_bias, m.item_bias.new_full((1,), float(m.item_bias[1:].min()) if m.item_bias.numel() > 1 else 0.0)]))
                    m.text_vectors = torch.cat([m.text_vectors, m.text_vectors.new_zeros(1, m.text_vectors.shape[1])])
                if vec is not None and vec.shape[0] == m.text_vectors.shape[1]:
                    m.text_vectors[row] = vec
                rows.append(row)
            self._refresh_item_table()
        return rows

    def _refresh_item_table(self) -> None:
        with torch.no_grad():
            self._table = self.model.item_vectors()
