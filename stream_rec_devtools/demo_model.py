"""A small trained model of the synthetic world, for the demo, the live tests and the benchmark.

Training on ``synthetic.make_world`` (a few hundred users walking theme chains) takes seconds on two
CPU cores, so the demo serves a *trained* model whose recommendations visibly follow each user's
sequence (watch ``space-03`` -> ``space-04`` recommended first) instead of random ones. The result is
cached under ``Settings.cache_dir / "demo-models" / <key>``, the key hashing the world and model
parameters, so the second ``make demo`` reuses it instantly.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import uuid
from pathlib import Path

log = logging.getLogger(__name__)

DEMO_WORLD = {"n_users": 300, "events_per_user": (8, 20), "items_per_theme": 8, "seed": 0}
DEMO_MODEL = {"hidden": 64, "emb_dim": 32, "dropout": 0.1}
DEMO_TRAIN = {"epochs": 25, "batch_size": 32, "lr": 5e-3, "patience": 5, "seed": 0}
CODE_REVISION = 3  # bump when the training recipe changes, so caches are rebuilt


def cache_key(world: dict, model: dict, train: dict, use_text: bool) -> str:
    blob = json.dumps({"world": world, "model": model, "train": train, "text": use_text, "rev": CODE_REVISION},
                      sort_keys=True, default=list)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def train_demo_model(out_dir: str | Path, world: dict | None = None, model: dict | None = None,
                     train: dict | None = None, use_text: bool = True, cache_dir: str | Path | None = None,
                     progress: bool = False, threads: int = 1, version_suffix: str = ""):
    """Train on the synthetic world and save to ``out_dir``. Returns the Recommender."""
    import torch

    from stream_rec.io.data import Interaction, catalog_text, leave_one_out, sequences
    from stream_rec.model.train import TrainParams, train_recommender
    from stream_rec.settings import Settings
    from stream_rec_devtools.synthetic import make_world

    world = {**DEMO_WORLD, **(world or {})}
    w = make_world(**world)
    split = leave_one_out(sequences([Interaction(e["user_id"], e["item_id"], e["timestamp"]) for e in w.events]))
    item_texts = {it["item_id"]: catalog_text(it) for it in w.items}  # what the worker encodes live
    encoder = None
    if use_text:
        from stream_rec.model.encoder import shared_encoder

        encoder = shared_encoder(Path(cache_dir) if cache_dir else Settings.from_env().cache_dir, "cpu")
    old_threads = torch.get_num_threads()
    try:
        params = TrainParams(**{**DEMO_TRAIN, **(train or {})}, device="cpu", threads=threads)
        rec, history = train_recommender(split, item_texts, {**DEMO_MODEL, **(model or {}), "use_text": use_text},
                                         params, encoder=encoder, progress=progress)
    finally:
        torch.set_num_threads(old_threads)
    rec.meta["data"] = {"synthetic_world": world}
    rec.save(out_dir)
    if version_suffix:  # distinct versions for tests that need two models of the same weights
        rec.version = f"{rec.version}-{version_suffix}"
        (Path(out_dir) / "VERSION").write_text(rec.version + "\n")
    log.info("trained demo model %s in %.1f s (valid %s)", rec.version, history.train_seconds, history.best_valid)
    return rec


def demo_model_dir(cache_dir: str | Path | None = None, use_text: bool = True, progress: bool = True) -> Path:
    """The cached demo model directory, trained on first use (seconds)."""
    from stream_rec.settings import Settings

    cache_dir = Path(cache_dir) if cache_dir else Path(Settings.from_env().cache_dir)
    target = cache_dir / "demo-models" / cache_key(DEMO_WORLD, DEMO_MODEL, DEMO_TRAIN, use_text)
    if (target / "VERSION").is_file():
        return target
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}")
    log.info("training the demo model on the synthetic world (cached in %s)", target)
    train_demo_model(tmp, use_text=use_text, cache_dir=cache_dir, progress=progress)
    try:
        tmp.rename(target)
    except OSError:  # another process won the race
        shutil.rmtree(tmp, ignore_errors=True)
    return target
