"""A model directory read as untrusted input: its files, their limits, and the readers that check them
before anything is allocated (``Recommender.load``, stream_rec/model/recommender.py, puts them together).
Every problem is a :class:`ModelLoadError` saying what is wrong.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..boundedjson import JSONRejected, parse_file
from .gru import GRUConfig, HybridGRU

ARTIFACT_FILES = ("weights.safetensors", "text_vectors.safetensors", "config.json", "items.json", "VERSION")
ARTIFACT_FORMAT = 2
# Format 1 (before the recent-items read-out): a GRU only. Its config lacks the newer fields; they are off.
LEGACY_FIELDS = {1: {"recent": 0, "text_bias": False, "heads": 1}}


class ModelLoadError(ValueError):
    """A model directory is missing, incomplete or inconsistent."""


# Limits of a model directory read from disk (untrusted input): checked before anything is allocated.
MAX_CONFIG_JSON_BYTES = 4 << 20  # config + training history and metrics
MAX_ITEMS_JSON_BYTES = 512 << 20  # ids and texts of up to millions of items
MAX_PARAMETERS = 1_000_000_000  # parameters + buffers (4 GB as float32): 50x the largest model trained here
MAX_VERSION_BYTES = 256


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


def load_weights(model_dir: Path, gru_config: GRUConfig) -> HybridGRU:
    """The HybridGRU of a model directory, its safetensors files checked against ``gru_config``."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    for name in ("weights.safetensors", "text_vectors.safetensors"):  # read whole: bounded first
        size = (model_dir / name).stat().st_size
        if size > 4 * MAX_PARAMETERS + (16 << 20):
            raise ModelLoadError(f"{model_dir}/{name}: {size:,} bytes, more than a model of "
                                 f"{MAX_PARAMETERS:,} float32 parameters")
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


def read_version(model_dir: Path) -> str:
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
