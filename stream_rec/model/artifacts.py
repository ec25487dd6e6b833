"""Model directories on disk: what ``Recommender.save`` writes and the checked reading ``Recommender.load`` does.

A model directory holds

* ``weights.safetensors`` -- the model's parameters (safetensors: tensors only, no pickle);
* ``text_vectors.safetensors`` -- the frozen text vector of every item row (row 0 = padding);
* ``transitions.safetensors`` -- the transition prior's count and back-off tables as CSR arrays (models
  with ``GRUConfig.prior``; model/transitions.py);
* ``config.json`` -- ``GRUConfig``, encoder id, training parameters, history and metrics;
* ``items.json`` -- the item index (``item_ids[row-1]``) and each item's text;
* ``VERSION`` -- ``gru-<UTC date>-<hash of the weights>``;
* optionally ``init_state.safetensors`` -- the learned state of a user with no events (model/coldstart.py),
  written by `stream-rec train`.

config.json may hold ``freshness``: the policy for items new since training that `stream-rec train` chose on
validation (recsys/freshchoice.py), applied when serving unless settings give one.

A model directory is untrusted input: every piece is bounded before it is read and checked against the
config; anything wrong raises :class:`ModelLoadError` naming it.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from ..boundedjson import JSONRejected, parse_file
from .gru import GRUConfig, HybridGRU
from .transitions import CSR

ARTIFACT_FILES = ("weights.safetensors", "text_vectors.safetensors", "config.json", "items.json", "VERSION")
TRANSITIONS_FILE = "transitions.safetensors"
ARTIFACT_FORMAT = 3
# Fields a directory of an older format lacks, with the behaviour it had. Format 1 (before the recent-items
# read-out): a GRU only. Format 2 (before the transition prior): no prior.
LEGACY_FIELDS = {1: {"recent": 0, "text_bias": False, "heads": 1, "prior": False, "text_experts": 0,
                     "query_text": False},
                 2: {"prior": False, "text_experts": 0, "query_text": False}}


class ModelLoadError(ValueError):
    """A model directory is missing, incomplete or inconsistent."""


# Limits of a model directory read from disk (untrusted input): checked before anything is allocated.
MAX_CONFIG_JSON_BYTES = 4 << 20  # config + training history and metrics
MAX_ITEMS_JSON_BYTES = 512 << 20  # ids and texts of up to millions of items
MAX_PARAMETERS = 1_000_000_000  # parameters + buffers (4 GB as float32): 50x the largest model trained here
MAX_TRANSITIONS = 1_000_000_000  # stored entries of the prior's tables together (12 GB as int64 + float32)
MAX_VERSION_BYTES = 256


class ModelDir(NamedTuple):
    """What a checked model directory holds."""

    model: HybridGRU
    item_ids: list[str]
    texts: list[str] | None
    version: str
    config: dict  # config.json as read


def parameter_count(config: GRUConfig) -> int:
    """Parameters and buffers of a HybridGRU with ``config``, counted on torch's meta device (shapes only:
    nothing is allocated), so the count follows the architecture wherever it changes."""
    with torch.device("meta"):
        model = HybridGRU(config)
    return sum(p.numel() for p in model.parameters()) + sum(b.numel() for b in model.buffers())


def read_json(path: Path, max_bytes: int):
    """A model file's JSON through the bounded parser (size, nesting depth, UTF-8) -> ModelLoadError."""
    try:
        return parse_file(path, max_bytes=max_bytes)
    except JSONRejected as exc:
        raise ModelLoadError(f"{path}: unreadable JSON ({exc.reason}: {exc.detail})") from None
    except OSError as exc:
        raise ModelLoadError(f"{path}: {exc}") from None


def read_model_dir(model_dir: Path) -> ModelDir:
    """Every required piece of ``model_dir`` (already resolved), checked against its config."""
    config = read_json(model_dir / "config.json", MAX_CONFIG_JSON_BYTES)
    if not isinstance(config, dict) or not isinstance(config.get("gru"), dict):
        raise ModelLoadError(f"{model_dir}/config.json: no 'gru' section (not a stream-rec model?)")
    fmt = config.get("format", ARTIFACT_FORMAT)
    if not isinstance(fmt, int) or fmt > ARTIFACT_FORMAT:
        raise ModelLoadError(f"{model_dir}: artifact format {config['format']} is newer than this code ({ARTIFACT_FORMAT})")
    try:
        gru_config = GRUConfig.from_dict(LEGACY_FIELDS.get(fmt, {}) | config["gru"])
    except (TypeError, ValueError) as exc:
        raise ModelLoadError(f"{model_dir}/config.json: bad 'gru' section: {exc}") from exc
    n_parameters = parameter_count(gru_config)
    if n_parameters > MAX_PARAMETERS:
        raise ModelLoadError(f"{model_dir}/config.json: a model of {n_parameters:,} parameters and buffers "
                             f"(more than {MAX_PARAMETERS:,})")
    _check_freshness(model_dir, config.get("freshness"))
    item_ids, texts = _read_items(model_dir, gru_config.n_items)
    model = _load_weights(model_dir, gru_config)
    if model.has_prior:
        model.prior.set_tables(*load_transitions(model_dir, gru_config.n_items + 1))
    return ModelDir(model, item_ids, texts, _read_version(model_dir), config)


# config.json's freshness policy (recsys/freshchoice.py): each field's type and range
FRESHNESS_FIELDS = {"slots": (int, 0, 100), "max_age_s": (float, 0.0, 1e10), "min_ratio": (float, 0.0, 1e6),
                    "min_similarity": (float, -1.0, 1.0), "profile_items": (int, 1, 10_000)}


def _check_freshness(model_dir: Path, entry) -> None:
    """The model's freshness policy, if any: known fields of the right type and range (untrusted input)."""
    if entry is None:
        return
    problem = None if isinstance(entry, dict) else "not an object"
    for name, (kind, low, high) in FRESHNESS_FIELDS.items():
        value = entry.get(name) if problem is None else None
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else int)
                                  or not low <= value <= high):
            problem = f"{name} must be a number in [{low}, {high}], got {value!r}"
    if problem is None and entry.get("by", "model") not in ("model", "content"):
        problem = f"by must be 'model' or 'content', got {entry.get('by')!r}"
    if problem:
        raise ModelLoadError(f"{model_dir}/config.json: bad 'freshness' policy: {problem}")


def _read_items(model_dir: Path, n_items: int) -> tuple[list[str], list[str] | None]:
    items = read_json(model_dir / "items.json", MAX_ITEMS_JSON_BYTES)
    item_ids = items.get("item_ids") if isinstance(items, dict) else None
    if not isinstance(item_ids, list) or not all(isinstance(i, str) for i in item_ids):
        raise ModelLoadError(f"{model_dir}/items.json: 'item_ids' must be a list of strings")
    if len(item_ids) != n_items:
        raise ModelLoadError(f"{model_dir}: items.json has {len(item_ids)} items, config.json says {n_items}")
    if len(set(item_ids)) != len(item_ids):
        raise ModelLoadError(f"{model_dir}/items.json: duplicate item ids")
    texts = items.get("texts")
    if texts is not None and (not isinstance(texts, list) or len(texts) != len(item_ids)
                              or not all(isinstance(t, str) for t in texts)):
        raise ModelLoadError(f"{model_dir}/items.json: 'texts' must have one string per item")
    return item_ids, texts


def _check_size(path: Path, max_bytes: int, what: str) -> None:
    size = path.stat().st_size
    if size > max_bytes:
        raise ModelLoadError(f"{path}: {size:,} bytes, more than {what}")


def _load_weights(model_dir: Path, gru_config: GRUConfig) -> HybridGRU:
    """The HybridGRU of a model directory, its safetensors files checked against ``gru_config``."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    for name in ("weights.safetensors", "text_vectors.safetensors"):  # read whole: bounded first
        _check_size(model_dir / name, 4 * MAX_PARAMETERS + (16 << 20), f"a model of {MAX_PARAMETERS:,} float32 parameters")
    try:
        weights = load_file(str(model_dir / "weights.safetensors"))
        text_vectors = load_file(str(model_dir / "text_vectors.safetensors")).get("text_vectors")
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelLoadError(f"{model_dir}: unreadable safetensors file ({exc})") from exc
    n_rows = gru_config.n_items + 1
    if text_vectors is None or text_vectors.dim() != 2 or text_vectors.shape[0] != n_rows:
        shape = None if text_vectors is None else tuple(text_vectors.shape)
        raise ModelLoadError(f"{model_dir}/text_vectors.safetensors: expected [{n_rows}, text_dim], got {shape}")
    if gru_config.text_dim and text_vectors.shape[1] != gru_config.text_dim:
        raise ModelLoadError(f"{model_dir}: text vectors have {text_vectors.shape[1]} dims, config says {gru_config.text_dim}")
    model = HybridGRU(gru_config, text_vectors)
    expected = {k: v.shape for k, v in model.state_dict().items() if k != "text_vectors"}
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    wrong = sorted(k for k in set(expected) & set(weights) if tuple(weights[k].shape) != tuple(expected[k]))
    if missing or unexpected or wrong:
        details = [f"missing {missing}" if missing else "", f"unexpected {unexpected}" if unexpected else "",
                   ", ".join(f"{k}: file {tuple(weights[k].shape)} != config {tuple(expected[k])}" for k in wrong)]
        raise ModelLoadError(f"{model_dir}/weights.safetensors does not match config.json: "
                             + "; ".join(d for d in details if d))
    model.load_state_dict(weights | {"text_vectors": text_vectors})
    return model


def save_transitions(model_dir: Path, tables: tuple[CSR, CSR]) -> None:
    """The prior's tables as CSR arrays (column indices as int32 where they fit)."""
    from safetensors.numpy import save_file

    out = {}
    for name, m in zip(("counts", "backoff"), tables):
        index_type = np.int32 if m.n_rows < 2**31 else np.int64
        out |= {f"{name}_indptr": m.indptr.astype(np.int64), f"{name}_indices": m.indices.astype(index_type),
                f"{name}_values": m.values.astype(np.float32)}
    save_file(out, str(model_dir / TRANSITIONS_FILE))


def load_transitions(model_dir: Path, n_rows: int) -> tuple[CSR, CSR]:
    """The prior's tables, each checked: a CSR matrix of ``n_rows`` rows, columns of real items, finite
    non-negative values, at most MAX_TRANSITIONS entries in all."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    path = model_dir / TRANSITIONS_FILE
    if not path.is_file():
        raise ModelLoadError(f"{model_dir}: the model has a transition prior but no {TRANSITIONS_FILE}")
    _check_size(path, 2 * 8 * (n_rows + 1) + 12 * MAX_TRANSITIONS + (1 << 20), f"{MAX_TRANSITIONS:,} transitions")
    try:
        arrays = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelLoadError(f"{path}: unreadable safetensors file ({exc})") from exc
    tables = []
    for name in ("counts", "backoff"):
        parts = [arrays.get(f"{name}_{p}") for p in ("indptr", "indices", "values")]
        problem = _csr_problem(*parts, n_rows=n_rows)
        if problem:
            raise ModelLoadError(f"{path}: {name} table: {problem}")
        tables.append(CSR(parts[0].astype(np.int64), parts[1].astype(np.int64), parts[2].astype(np.float32)))
    return tables[0], tables[1]


def _csr_problem(indptr, indices, values, n_rows: int) -> str | None:
    """What is wrong with these CSR arrays (None: nothing)."""
    if indptr is None or indices is None or values is None:
        return "missing arrays"
    if indptr.shape != (n_rows + 1,) or indptr.dtype.kind != "i":
        return f"indptr must be {n_rows + 1} integers, got {indptr.dtype} {indptr.shape}"
    if indices.ndim != 1 or indices.dtype.kind != "i" or values.ndim != 1 or values.dtype.kind != "f":
        return "indices must be integers and values floats, one per entry"
    if len(indices) != len(values) or len(indices) > MAX_TRANSITIONS:
        return f"{len(indices):,} indices and {len(values):,} values (at most {MAX_TRANSITIONS:,})"
    if indptr[0] != 0 or indptr[-1] != len(indices) or np.any(np.diff(indptr) < 0):
        return "indptr must rise from 0 to the number of entries"
    if len(indices) and (indices.min() < 1 or indices.max() >= n_rows):
        return f"column indices must be item rows 1..{n_rows - 1}"
    if not np.all(np.isfinite(values)) or (len(values) and values.min() < 0):
        return "values must be finite and >= 0"
    return None


def _read_version(model_dir: Path) -> str:
    """The model's version string: one line of UTF-8 text, read bounded."""
    with open(model_dir / "VERSION", "rb") as fh:
        raw = fh.read(MAX_VERSION_BYTES + 1)
    try:
        version = raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise ModelLoadError(f"{model_dir}/VERSION is not UTF-8 text") from None
    if not version or len(raw) > MAX_VERSION_BYTES or "\n" in version:
        raise ModelLoadError(f"{model_dir}/VERSION must be one line of at most {MAX_VERSION_BYTES} bytes")
    return version


def resolve_model_dir(path: str | Path) -> Path:
    """``path`` itself when it holds a model, else the newest model directory directly inside it
    (newest by VERSION file time): the worker can be pointed at a directory that training runs write into."""
    path = Path(path)
    if not path.exists():
        raise ModelLoadError(f"model directory not found: {path}")
    if not path.is_dir():
        raise ModelLoadError(f"not a directory: {path} (a model is a directory with {', '.join(ARTIFACT_FILES)})")
    if not (path / "config.json").exists():
        candidates = [d for d in path.iterdir() if d.is_dir() and (d / "VERSION").is_file()]
        if candidates:
            path = max(candidates, key=lambda d: (d / "VERSION").stat().st_mtime)
    missing = [f for f in ARTIFACT_FILES if not (path / f).is_file()]
    if missing:
        raise ModelLoadError(f"{path}: not a complete model directory, missing {', '.join(missing)}")
    return path
