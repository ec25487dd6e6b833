"""Fine-tune a served model on recent events and produce a new model version (the worker hot-reloads it).

What it does, in order:

1. items in the recent events that the model does not know are added from their text (``--items-file``;
   ``Recommender.add_catalog``), so new catalog items become trainable rows with ID embeddings;
2. each user's recent events become a training sequence (``model.train.to_sequence``); with ``history``
   the user's last ``context_events`` older events are put in front, so the GRU sees the recent events
   from a realistic state instead of a blank one (serving never resets a user);
3. the last recent event of each user is held out as the validation target; epoch 0 is the *unchanged*
   model, and the best epoch (by validation NDCG@10, ``model.train.validate``) is kept -- so a fine-tune
   never returns a model that is worse on the recent data than the one it started from;
4. a small learning rate (default 5e-4, a quarter of training's) and few epochs: the goal is to follow
   the recent distribution without forgetting the rest (no replay buffer; the comparison in
   benchmarks/smarter.py measures the effect on the next time slice).

The training loop itself is ``model.train.train_epoch``; nothing is duplicated.

In the worker (``drift_finetune``), :func:`follow_alarms` runs as a task beside the stream: it reads the
drift monitor's alarms and hands each to a :class:`DriftFinetuner`, which trains in a thread and writes
the new version where the model watcher (stream_rec/worker/models.py) picks it up.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

log = logging.getLogger(__name__)


@dataclass
class FinetuneParams:
    epochs: int = 3
    lr: float = 5e-4
    batch_size: int = 32
    max_len: int = 50  # as TrainParams
    context_events: int = 20  # older events put before each user's recent ones (when history is given)
    seed: int = 0
    device: str = "auto"
    threads: int = 0


@dataclass
class FinetuneReport:
    epochs: list[dict] = field(default_factory=list)  # epoch 0 = the model as given
    best_epoch: int = 0
    added_items: int = 0
    users: int = 0
    events: int = 0
    seconds: float = 0.0


def finetune(rec, recent: dict[str, list[tuple[str, float]]], history: dict[str, list[tuple[str, float]]] | None = None,
             item_texts: dict[str, str] | None = None, params: FinetuneParams | None = None, encoder_factory=None,
             progress: bool = True):
    """Return (new Recommender, FinetuneReport). ``recent`` / ``history``: user -> [(item_id, ts)] in time
    order (``io.data.sequences``); ``rec`` itself is left unchanged."""
    import torch
    from tqdm import tqdm

    from ..model.recommender import Recommender
    from ..model.sequences import to_sequence
    from ..model.train import TrainParams, seed_everything, train_epoch, validate

    params = params or FinetuneParams()
    if params.threads:
        torch.set_num_threads(params.threads)
    seed_everything(params.seed)
    started = time.perf_counter()
    device = rec.device if params.device == "auto" else torch.device(params.device)
    new = Recommender(copy.deepcopy(rec.model).cpu(), list(rec.item_ids), rec.version, trained=True, device=device,
                      item_texts=list(rec.item_texts), encoder_id=rec.encoder_id, meta=copy.deepcopy(rec.meta))
    new.initial_state = rec.initial_state
    report = FinetuneReport()
    unknown = {i: item_texts[i] for seq in recent.values() for i, _ in seq
               if i not in new.row_of and item_texts and i in item_texts}
    if unknown:
        report.added_items = len(new.add_catalog(unknown, encoder_factory))
    seqs = []
    for user, events in recent.items():
        if len(events) < 2:
            continue
        before = (history or {}).get(user, [])[-params.context_events:] if params.context_events else []
        seqs.append(to_sequence(before + events[:-1], new.row_of, valid_item=events[-1][0]))
    seqs = [s for s in seqs if len(s.rows) > 1]
    if not seqs:
        raise ValueError("no user has 2 or more recent events of known items: nothing to fine-tune on")
    report.users, report.events = len(seqs), int(sum(len(s.rows) for s in seqs))
    model = new.model.to(device)
    for p in model.parameters():
        p.requires_grad_(True)
    optimizer = torch.optim.Adam(model.parameters(), lr=params.lr)
    train_params = TrainParams(batch_size=params.batch_size, max_len=params.max_len, lr=params.lr, seed=params.seed,
                               device=str(device))
    rng = random.Random(params.seed)
    best_state, best = copy.deepcopy(model.state_dict()), validate(model, seqs)
    report.epochs.append({"epoch": 0, "loss": None} | {f"valid_{k}": v for k, v in best.items()})
    for epoch in tqdm(range(1, params.epochs + 1), desc="fine-tune", unit="epoch", disable=not progress):
        loss = train_epoch(model, seqs, train_params, optimizer, rng, device, progress=False)
        valid = validate(model, seqs)
        report.epochs.append({"epoch": epoch, "loss": loss} | {f"valid_{k}": v for k, v in valid.items()})
        log.info("fine-tune epoch %d: loss %.4f valid %s", epoch, loss, valid)
        if valid.get("ndcg@10", 0.0) > best.get("ndcg@10", 0.0):
            best, best_state, report.best_epoch = valid, copy.deepcopy(model.state_dict()), epoch
    model.load_state_dict(best_state)
    model.eval()
    new.refresh_item_table()
    report.seconds = time.perf_counter() - started
    new.meta["finetune"] = {"from_version": rec.version, "best_epoch": report.best_epoch, "users": report.users,
                            "events": report.events, "added_items": report.added_items,
                            "epochs": report.epochs, "params": params.__dict__}
    return new, report


def finetune_model_dir(model_dir: str, events_path: str, out_dir: str, items_path: str | None = None,
                       history_path: str | None = None, fmt: str = "auto", params: FinetuneParams | None = None,
                       progress: bool = True):
    """File-to-file form used by ``stream-rec finetune``: returns (out path, new version, report)."""
    from ..io.data import read_events, read_items, sequences
    from ..model.encoder import shared_encoder
    from ..model.recommender import Recommender

    rec = Recommender.load(model_dir, device=(params.device if params else "auto"))
    recent = sequences(read_events(events_path, fmt))
    history = sequences(read_events(history_path, fmt)) if history_path else None
    texts = read_items(items_path, fmt) if items_path else None
    new, report = finetune(rec, recent, history, texts, params, encoder_factory=lambda: shared_encoder(), progress=progress)
    out = new.save(out_dir)
    return out, new.version, report


def time_slices(events: Sequence, fractions: Sequence[float] = (0.8, 0.9)) -> list[list]:
    """Split events (anything with ``.timestamp``) at global time quantiles: [0, f1), [f1, f2), ... [fn, 1].
    Ties at a cut go to the earlier slice's side consistently (stable sort by time)."""
    ordered = sorted(events, key=lambda e: e.timestamp)
    cuts = [int(round(f * len(ordered))) for f in fractions]
    bounds = [0, *cuts, len(ordered)]
    return [ordered[a:b] for a, b in zip(bounds, bounds[1:])]


class DriftFinetuner:
    """What a drift alarm triggers: fine-tune the served model on recent events in a background thread
    and write the result as a new model directory under ``models_dir``, which the worker's model
    watcher hot-reloads (stream_rec/worker/models.py). At most one run at a time, and none within
    ``cooldown_s`` of the last start (an alarm storm must not queue fine-tunes).

    ``current_model_dir()`` returns the directory being served; ``recent_events()`` returns event dicts
    (``user_id``, ``item_id``, ``timestamp``) -- e.g. a ring buffer the worker fills, or a replay file's
    rows. ``run_now`` is the synchronous form (tests, a cron job)."""

    def __init__(self, models_dir, current_model_dir, recent_events, params: FinetuneParams | None = None,
                 cooldown_s: float = 3600.0, items_path: str | None = None):
        self.models_dir = models_dir
        self.current_model_dir = current_model_dir
        self.recent_events = recent_events
        self.params = params or FinetuneParams()
        self.cooldown_s = cooldown_s
        self.items_path = items_path
        self.last_start = -float("inf")
        self.thread = None
        self.results: list[tuple[str, str]] = []  # (out dir, version) of each finished run

    def __call__(self, alarm=None) -> bool:
        """Start a background fine-tune unless one is running or the cooldown is on. True if started."""
        import threading

        if (self.thread is not None and self.thread.is_alive()) or time.monotonic() - self.last_start < self.cooldown_s:
            return False
        self.last_start = time.monotonic()
        self.thread = threading.Thread(target=self._run_logged, name="drift-finetune", daemon=True)
        self.thread.start()
        return True

    def _run_logged(self) -> None:
        try:
            self.run_now()
        except Exception:  # a failed fine-tune must never take the worker down
            log.exception("drift-triggered fine-tune failed")

    def run_now(self):
        import tempfile

        from ..io.data import write_events_csv

        events = list(self.recent_events())
        out = Path(self.models_dir) / f"finetuned-{time.strftime('%Y%m%d%H%M%S', time.gmtime())}"
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "recent.csv"
            write_events_csv(path, events)
            tmp_out = Path(self.models_dir) / f".{out.name}.partial"  # not a model dir until renamed
            result, version, report = finetune_model_dir(str(self.current_model_dir()), str(path), str(tmp_out),
                                                         self.items_path, None, "csv", self.params, progress=False)
            Path(result).rename(out)
        log.info("fine-tuned model %s written to %s (%d users, %d events)", version, out, report.users, report.events)
        self.results.append((str(out), version))
        return out, version, report


def drift_finetuner(settings, recent_events: Callable[[], list[dict]]) -> DriftFinetuner | None:
    """The worker's :class:`DriftFinetuner`, writing into ``settings.model`` (a directory of model
    directories, watched by the hot reload), or None (with a warning) when that is not possible."""
    from ..model.artifacts import resolve_model_dir

    if not settings.model:
        log.warning("drift_finetune is on but no --model directory is given: drift is only reported")
        return None
    models_dir = Path(settings.model)
    try:
        if resolve_model_dir(models_dir) == models_dir:
            log.warning("drift_finetune needs --model to be a directory of model directories (got a model "
                        "directory): drift is only reported")
            return None
    except Exception as exc:
        log.warning("drift_finetune: %s: drift is only reported", exc)
        return None
    return DriftFinetuner(models_dir, lambda: resolve_model_dir(models_dir), recent_events,
                          cooldown_s=settings.drift_finetune_cooldown_s)


async def follow_alarms(monitor, on_alarm: Callable, interval_s: float = 1.0) -> None:
    """Hand every new alarm of a drift ``monitor`` (``OnlineQualityMonitor.alarms``) to ``on_alarm``;
    runs forever as a task beside the stream (the monitor itself only records)."""
    seen = len(monitor.alarms)
    while True:
        await asyncio.sleep(interval_s)
        new, seen = monitor.alarms[seen:], len(monitor.alarms)
        for alarm in new:
            on_alarm(alarm)
