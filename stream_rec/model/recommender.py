"""The serving face of the model: what the stream calls.

``Recommender`` wraps a :class:`HybridGRU` with its item index (item_id <-> row) and a version string,
and speaks numpy at the boundary so the stream never touches torch:

    states = rec.init_state(n)                          # [n, S] float32 (S = rec.hidden_size)
    states = rec.step(states, rows, gaps_seconds)       # one model step per event, batched across users
    lists  = rec.topk(states, k, exclude_rows)          # [(item_id, score), ...] per user, seen excluded

The model stays resident on its device; each call moves its inputs in one transfer. A user's state is
opaque to the stream: the GRU hidden vector followed by the rows of the user's last items
(``HybridGRU.make_state``), all of it exact after a float16 round trip except the hidden part.

Artifacts (``save`` / ``load``): a model directory (files and their checks: model/artifacts.py); ``load``
raises :class:`ModelLoadError` with what is wrong.
"""

from __future__ import annotations

import math

import dataclasses
import hashlib
import json
import threading
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from .artifacts import (ARTIFACT_FILES, ARTIFACT_FORMAT, MAX_PARAMETERS, ModelLoadError, read_model_dir,  # noqa: F401
                        resolve_model_dir, save_transitions)
from .gru import PAD, GRUConfig, HybridGRU, neighbour_init, topk_excluding
from .transitions import append_rows, text_backoff


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class Recommender:
    def __init__(self, model: HybridGRU, item_ids: Sequence[str], version: str, *, trained: bool,
                 device: str | torch.device = "auto", item_texts: Sequence[str] | None = None,
                 encoder_id: str | None = None, meta: dict | None = None):
        if len(item_ids) != model.config.n_items:
            raise ValueError(f"{len(item_ids)} item ids for a model of {model.config.n_items} items")
        self.device = pick_device(device) if isinstance(device, str) else device
        self.model = model.to(self.device).eval()
        self.item_ids: list[str] = list(item_ids)
        self.row_of: dict[str, int] = {item: row for row, item in enumerate(self.item_ids, start=1)}
        self.version = version
        self.trained = trained
        self.item_texts: list[str] = list(item_texts) if item_texts is not None else [""] * len(self.item_ids)
        self.encoder_id = encoder_id
        self.meta: dict[str, Any] = dict(meta or {})  # training params, history, metrics (config.json)
        # Learned state of a user with no history (model/coldstart.py, init_state.safetensors), or None = zeros.
        self._initial_state: np.ndarray | None = None
        # When each row joined the catalogue after training (``add_items``, wall-clock seconds); -inf = an
        # item of the trained catalogue. The worker's freshness policy (recsys/freshness.py) reads the ages.
        self.added_at = np.full(len(self.item_ids) + 1, -np.inf)
        self._lock = threading.RLock()  # re-entrant: held across a whole ranking by ``unchanging``
        # odd while ``add_items`` changes the catalogue, one more after: a reader on another thread (a
        # lookup) that saw it odd or moved ranks again (worker/listener.py: ``ranked_while_unchanged``)
        self.catalogue_changes = 0
        self.refresh_item_table()

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

    # --- artifacts ---------------------------------------------------------------------------------
    def save(self, model_dir: str | Path) -> Path:
        """Write the artifact directory (see the module docstring); returns it. Sets ``version``."""
        from safetensors.torch import save_file

        model_dir = Path(model_dir)
        model_dir.mkdir(parents=True, exist_ok=True)
        m = self.model
        weights = {k: v.detach().cpu().contiguous() for k, v in m.state_dict().items() if k != "text_vectors"}
        digest = hashlib.sha256()
        for k in sorted(weights):
            digest.update(k.encode())
            digest.update(weights[k].numpy().tobytes())
        if self.trained:
            self.version = f"gru-{time.strftime('%Y%m%d%H%M%S', time.gmtime())}-{digest.hexdigest()[:8]}"
        save_file(weights, str(model_dir / "weights.safetensors"))
        save_file({"text_vectors": m.text_vectors.detach().cpu().contiguous()}, str(model_dir / "text_vectors.safetensors"))
        if m.has_prior:
            save_transitions(model_dir, m.prior.tables())
        config = {"format": ARTIFACT_FORMAT, "gru": m.config.to_dict(), "encoder_id": self.encoder_id,
                  "trained": self.trained, "version": self.version,
                  "state_bytes_per_user": {"float32": 4 * self.hidden_size, "float16": 2 * self.hidden_size}} | {
                      k: v for k, v in self.meta.items() if k not in ("format", "gru", "encoder_id", "trained", "version")}
        (model_dir / "config.json").write_text(json.dumps(config, indent=2, default=str))
        (model_dir / "items.json").write_text(json.dumps({"item_ids": self.item_ids, "texts": self.item_texts}))
        if self.initial_state is not None:
            from .coldstart import save_initial_state

            save_initial_state(model_dir, self.initial_state[:m.config.hidden])  # the learned part: h0
        (model_dir / "VERSION").write_text(self.version + "\n")
        return model_dir

    @classmethod
    def load(cls, model_dir: str | Path, device: str = "auto") -> "Recommender":
        """Load and validate an artifact directory, or the newest one inside a directory of them."""
        model_dir = resolve_model_dir(model_dir)
        found = read_model_dir(model_dir)
        config = found.config
        meta = {k: v for k, v in config.items() if k not in ("gru",)}
        rec = cls(found.model, found.item_ids, found.version, trained=bool(config.get("trained", True)), device=device,
                  item_texts=found.texts, encoder_id=config.get("encoder_id"), meta=meta)
        from .coldstart import load_initial_state  # optional artifact: learned new-user state
        try:
            rec.initial_state = load_initial_state(model_dir, found.model.config.hidden)
        except Exception as exc:
            raise ModelLoadError(f"{model_dir}: bad initial state file ({exc})") from exc
        return rec

    @property
    def state_bytes(self) -> int:
        """Bytes of one user's serving state as float32 (the state table stores float16: half)."""
        return 4 * self.hidden_size

    @property
    def hidden_size(self) -> int:
        """Length of a user's state vector (GRU hidden vector + recent item rows)."""
        return self.model.state_size

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    def rows_for(self, item_ids: Sequence[str]) -> list[int]:
        """Row of each item id, PAD (0) for an unknown id."""
        return [self.row_of.get(i, PAD) for i in item_ids]

    # --- serving -----------------------------------------------------------------------------------
    @property
    def initial_state(self) -> np.ndarray | None:
        """Learned state of a user with no history (model/coldstart.py, file init_state.safetensors), as
        a full state vector; None = zeros. Setting a bare GRU hidden vector (what coldstart learns) adds
        the empty recent-items part."""
        return self._initial_state

    @initial_state.setter
    def initial_state(self, value) -> None:
        if value is not None:
            h = torch.as_tensor(np.asarray(value, dtype=np.float32))
            if h.shape[-1] == self.model.config.hidden:
                h = self.model.make_state(h, None)
            value = h.numpy()
        self._initial_state = value

    @torch.no_grad()
    def init_state(self, n: int) -> np.ndarray:
        if self.initial_state is not None:
            return np.tile(np.asarray(self.initial_state, dtype=np.float32), (n, 1))
        return self.model.init_state(n).cpu().numpy()

    @torch.no_grad()
    def step(self, states: np.ndarray, rows: Sequence[int], gaps_seconds: Sequence[float] | None = None) -> np.ndarray:
        """One model step for each (state, item row) pair.  [B, S], [B] -> [B, S]
        ``gaps_seconds[b]``: seconds since that user's previous event (0 for a first event), as in
        training; None = 0 for everyone."""
        h = torch.as_tensor(np.asarray(states, dtype=np.float32), device=self.device)
        items = torch.as_tensor(np.asarray(rows, dtype=np.int64), device=self.device)
        gaps = None if gaps_seconds is None else torch.as_tensor(np.asarray(gaps_seconds, dtype=np.float32), device=self.device)
        with self._lock:
            out = self.model.step(h, items, gaps, table=self._tables)
        return out.cpu().numpy()

    @torch.no_grad()
    def score_rows(self, states: np.ndarray) -> torch.Tensor:
        """Scores of every item row.  [B, S] -> [B, N+1] (torch, on the model's device)"""
        h = torch.as_tensor(np.asarray(states, dtype=np.float32), device=self.device)
        with self._lock:
            return self.model.scores(h, table=self._tables)

    @torch.no_grad()
    def topk(self, states: np.ndarray, k: int, exclude_rows: Sequence[Sequence[int]]) -> list[list[tuple[str, float]]]:
        """Top-k (item_id, score) per user with the rows in ``exclude_rows[b]`` (seen items) left out."""
        values, rows = topk_excluding(self.score_rows(states), k, [list(r) for r in exclude_rows], inplace=True)
        ids = self.item_ids
        return [[(ids[r - 1], v) for v, r in zip(vs, rs) if r != PAD and math.isfinite(v)]
                for vs, rs in zip(values.cpu().tolist(), rows.cpu().tolist())]  # lists: numpy scalars are slow

    # --- live catalog ------------------------------------------------------------------------------
    @torch.no_grad()
    def add_items(self, item_ids: Sequence[str], text_vectors: np.ndarray | None = None,
                  texts: Sequence[str] | None = None, neighbours: int = 10, now: float | None = None) -> list[int]:
        """Append items not seen in training; known ids get their text vector updated in place.
        Returns their rows.

        A new item is represented from its text alone. A model trained with ID dropout has learnt to score
        an item from its text parts only (ID parts zero, ``text_bias``): that is what a new item gets, on
        the same scale as the others. Otherwise, with a text vector, its ID parts start as the mean of its
        ``neighbours`` nearest known items by text (``gru.neighbour_init``); without one, zero ID vectors
        and the median bias (a typical item)."""
        m = self.model
        if text_vectors is not None and len(text_vectors) != len(item_ids):
            raise ValueError(f"{len(item_ids)} item ids but {len(text_vectors)} text vectors")
        dims = None if text_vectors is None else np.asarray(text_vectors).shape[1]
        if dims is not None and dims != m.text_vectors.shape[1]:  # checked before anything grows
            raise ValueError(f"text vectors have {dims} dims, the model uses {m.text_vectors.shape[1]}")
        with self._lock:
            self.catalogue_changes += 1
            try:
                new = [i for i in dict.fromkeys(item_ids) if i not in self.row_of]
                n_known = len(self.item_ids)
                if new:
                    self._grow(new, time.time() if now is None else now)
                rows = [self.row_of[i] for i in item_ids]
                if text_vectors is not None:
                    vecs = torch.as_tensor(np.asarray(text_vectors), dtype=torch.float32, device=self.device)
                    m.text_vectors[torch.tensor(rows, device=self.device)] = vecs
                if new and n_known > 0 and text_vectors is not None and m.config.use_ids and m.config.use_text:
                    self._place_by_text(n_known, len(new), neighbours)
                if new and m.has_prior:
                    self._extend_prior(n_known)
                if texts is not None:
                    for row, text in zip(rows, texts):
                        self.item_texts[row - 1] = text
                self.refresh_item_table()
            finally:
                self.catalogue_changes += 1
        return rows

    def _grow(self, new: list[str], now: float) -> None:
        """Rows for the ``new`` ids at the end of every item table: zero ID parts and text, the median bias."""
        m = self.model
        new_bias = float(m.item_bias[1:].median()) if m.item_bias.numel() > 1 else 0.0
        for item in new:
            self.row_of[item] = len(self.item_ids) + 1
            self.item_ids.append(item)
            self.item_texts.append("")
        for table in [m.id_embedding] + ([m.next_embedding] if m.config.recent else []):
            emb = table.weight
            table.weight = torch.nn.Parameter(torch.cat([emb, emb.new_zeros(len(new), emb.shape[1])]))
            table.num_embeddings = table.weight.shape[0]
        m.item_bias = torch.nn.Parameter(torch.cat([m.item_bias, m.item_bias.new_full((len(new),), new_bias)]))
        m.text_vectors = torch.cat([m.text_vectors, m.text_vectors.new_zeros(len(new), m.text_vectors.shape[1])])
        m.config = dataclasses.replace(m.config, n_items=len(self.item_ids))
        self.added_at = np.concatenate([self.added_at, np.full(len(new), now)])

    def _place_by_text(self, n_known: int, n_new: int, neighbours: int) -> None:
        """ID parts of the new rows with a text vector: zero with a bias of 0 for a model trained with ID
        dropout (it scores text-only items), else the mean of their text neighbours' (``neighbour_init``)."""
        m = self.model
        new_rows = torch.arange(n_known + 1, n_known + 1 + n_new, device=self.device)
        target = new_rows[m.text_vectors[new_rows].abs().sum(1) > 0]
        if len(target) and m.config.id_dropout > 0:
            m.item_bias[target] = 0.0
        elif len(target) and neighbours > 0:
            known = slice(1, n_known + 1)
            tables = [m.id_embedding] + ([m.next_embedding] if m.config.recent else [])
            for n, table in enumerate(tables):
                ids, bias = neighbour_init(m.text_vectors[known], table.weight[known], m.item_bias[known],
                                           m.text_vectors[target], neighbours)
                table.weight[target] = ids
                if n == 0:
                    m.item_bias[target] = bias

    def _extend_prior(self, n_known: int) -> None:
        """The transition prior's tables grown to the new items' rows (appended after ``n_known`` items):
        no transitions of their own, a back-off row from their text neighbours when they have text."""
        prior = self.model.prior
        counts, backoff = prior.tables()
        n_rows = len(self.item_ids) + 1
        grown = counts._replace(indptr=np.concatenate([counts.indptr, np.full(n_rows - counts.n_rows, counts.indptr[-1])]))
        text = self.model.text_vectors.cpu() if self.model.config.use_text else None
        new_rows = np.arange(n_known + 1, n_rows)
        borrowed = text_backoff(grown, text, self.model.config.prior_neighbours, rows=new_rows)
        prior.set_tables(grown, append_rows(backoff, borrowed, n_known + 1))

    def add_catalog(self, item_texts: dict[str, str], encoder_factory=None) -> list[str]:
        """Make catalog items the model has never seen recommendable through their text vectors.
        ``encoder_factory()`` returns a TextEncoder; it is only called when there is something to
        encode (loading the encoder takes seconds). Returns the ids that were added."""
        new = [i for i in item_texts if i not in self.row_of]
        if not new:
            return []
        vectors = None
        if self.model.config.use_text and encoder_factory is not None:
            encoder = encoder_factory()
            if self.encoder_id and encoder.encoder_id != self.encoder_id:
                raise ValueError(f"model was trained with encoder {self.encoder_id}, got {encoder.encoder_id}")
            vectors = encoder.encode_cached([item_texts[i] for i in new])
        self.add_items(new, vectors, texts=[item_texts[i] for i in new])
        return new

    def unchanging(self) -> threading.RLock:
        """Hold (``with rec.unchanging():``) to keep the catalogue as it is: ``add_items`` waits meanwhile,
        and so do ``step`` and ``score_rows`` on other threads."""
        return self._lock

    def item_ages(self, now: float | None = None) -> np.ndarray:
        """Seconds since each row joined the catalogue after training (inf: a trained item).  [N+1]"""
        return (time.time() if now is None else now) - self.added_at

    def refresh_item_table(self) -> None:
        with torch.no_grad():
            self._tables = self.model.item_tables()
            self._table = self._tables.vectors  # the item vectors (read by the enricher)

