"""Which model the worker serves, how a new version replaces it live, and what happens to user state.

Resolution (``--model DIR`` / ``STREAM_REC_MODEL``): ``DIR`` is either a model directory itself, or a
directory of model directories, in which case the newest *valid* one is served (newest = latest
modification time of its files; a directory still being written, or a broken one, is skipped with a
warning, so dropping a half-copied model never takes the worker down).

Hot reload (:class:`LiveModel`): a watcher polls the models directory every few seconds, and a
``control`` topic message ``{"type": "reload", "path": ...}`` asks for a reload explicitly
(:func:`control_loop`: every worker follows that topic group-less, like the catalog, since a consumer
group would give each message to one worker only; messages older than the worker are ignored, so a
restart does not replay old reloads). The new version is loaded in a thread while the worker keeps
serving the old one; then the reference is swapped between two micro-batches (a batch reads
``live.current`` once, so it never mixes versions). Items the old model learned live from the
``catalog`` topic are carried into the new one before the swap (:func:`carry_live_items`), so a reload
never forgets them.

User state across versions: a hidden state is only meaningful for the weights that produced it (and
its dimension may change). Each stored state carries the 32-bit tag of its model version
(``stream_rec.state.model_tag``). When a user's next event arrives and the tags differ, the state is
*re-warmed*: the user's stored rolling history (last N items with timestamps) is replayed through the
new model's step (``model.sequences.rewarm``, called by ``pipeline.initial_hiddens``), and the event
is applied on top. This is lazy -- no stop-the-world pass over the table on reload -- and costs one
N-step replay per user, once. The result equals a fresh run of the new model over those N items (not
over the user's whole life: older items were not kept).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..io.topics import reload_request
from ..validation import Invalid
from .follow import follow_records

log = logging.getLogger(__name__)


class ModelResolutionError(RuntimeError):
    """``--model`` points at nothing servable."""


# --- resolution ----------------------------------------------------------------------------------
def is_model_dir(path: Path) -> bool:
    """Cheap structural check (every artifact file present), without loading weights."""
    from ..model.artifacts import ARTIFACT_FILES

    path = Path(path)
    return path.is_dir() and all((path / f).is_file() for f in ARTIFACT_FILES)


def dir_mtime(path: Path) -> float:
    """Latest modification time of a model directory's files (a copy in progress keeps moving it)."""
    path = Path(path)
    times = [path.stat().st_mtime]
    for child in path.iterdir():
        try:
            times.append(child.stat().st_mtime)
        except OSError:
            pass
    return max(times)


def candidate_dirs(path: Path) -> list[Path]:
    """Model directories under ``path`` (itself if it is one), newest first."""
    path = Path(path)
    if not path.exists():
        raise ModelResolutionError(f"model path {path} does not exist")
    if is_model_dir(path):
        return [path]
    if not path.is_dir():
        raise ModelResolutionError(f"model path {path} is neither a model directory nor a directory of them")
    subdirs = [p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".") and is_model_dir(p)]
    return sorted(subdirs, key=lambda p: (dir_mtime(p), p.name), reverse=True)


def newest_model_dir(path: str | Path) -> Path:
    """The model directory to serve for ``path`` (newest one that passes the structural check)."""
    found = candidate_dirs(Path(path))
    if not found:
        raise ModelResolutionError(f"no model directory in {path} (train one with `stream-rec train --out DIR`)")
    return found[0]


def load_recommender(path: str | Path, device: str = "auto"):
    """Load one model directory (validated by ``Recommender.load``)."""
    from ..model.recommender import Recommender

    return Recommender.load(Path(path), device=device)


def load_newest(path: str | Path, device: str = "auto"):
    """(directory, recommender) of the newest model under ``path`` that actually loads; broken ones
    (half-copied, corrupt) are skipped with a warning, so a bad drop never stops the worker."""
    errors = []
    for candidate in candidate_dirs(Path(path)):
        try:
            return candidate, load_recommender(candidate, device)
        except Exception as exc:
            log.warning("skipping model directory %s: %s", candidate, exc)
            errors.append(f"{candidate}: {exc}")
    raise ModelResolutionError(f"no loadable model in {path}" + ("".join(f"\n  {e}" for e in errors) or
                                                                 " (no model directories)"))


def carry_live_items(old, new) -> list[str]:
    """Add to ``new`` the items ``old`` learned live (from the catalog topic) that ``new`` was not trained
    on, with their text vectors and texts, so a reload never forgets a live catalog item. Returns them.
    (An item both models know keeps the new model's own vectors.)"""
    carried = [item for item in old.item_ids if item not in new.row_of]
    if not carried:
        return []
    rows = old.rows_for(carried)
    old_tv = old.model.text_vectors
    texts = [old.item_texts[r - 1] for r in rows] if hasattr(old, "item_texts") else None
    if old_tv.shape[1] == new.model.text_vectors.shape[1]:
        new.add_items(carried, old_tv[rows].detach().cpu().numpy(), texts=texts)
    else:  # another encoder: the ids survive, their text vectors must be re-encoded from the catalog
        log.warning("new model uses %d-d text vectors, old %d-d: %d live items carried without text",
                    new.model.text_vectors.shape[1], old_tv.shape[1], len(carried))
        new.add_items(carried, None, texts=texts)
    new.added_at[new.rows_for(carried)] = old.added_at[rows]  # their age stays what it was (freshness policy)
    return carried


# --- the live, swappable model --------------------------------------------------------------------
@dataclass
class ReloadResult:
    reloaded: bool
    version: str
    path: str | None
    seconds: float = 0.0
    reason: str = ""


class LiveModel:
    """The recommender being served, swappable while the worker runs.

    ``current`` is read once per micro-batch; :meth:`reload` loads a new version off the event loop
    and swaps it in (``on_swap(new)`` tells the owner, the worker's ``WorkerServices``).
    """

    def __init__(self, recommender, source: str | Path | None = None, device: str = "auto",
                 on_swap: Callable[[Any], None] | None = None):
        self.current = recommender
        self.root = None if source is None else Path(source)  # what --model named (dir or dir of dirs)
        self.loaded_dir: Path | None = None  # the directory ``current`` came from
        self.seen_on_disk: tuple[Path, float] | None = None  # newest dir under root (and its mtime), last look
        self.device = device
        self.on_swap = on_swap
        self.reloads = 0
        self._reload_lock: asyncio.Lock | None = None

    @classmethod
    def from_path(cls, path: str | Path, device: str = "auto", **kw) -> "LiveModel":
        loaded_dir, rec = load_newest(path, device)
        live = cls(rec, path, device, **kw)
        live.loaded_dir = loaded_dir
        live.changed_on_disk()  # the watcher's baseline
        return live

    @property
    def version(self) -> str:
        return self.current.version

    # --- reload ----------------------------------------------------------------------------------
    def changed_on_disk(self) -> Path | None:
        """The newest model directory under the ``--model`` root if it changed since the last look (a new
        directory, or new files in it); None otherwise. The watcher compares with what it saw last, not
        with what is served, so a version loaded on request from elsewhere (control topic) stays served
        until the models directory itself changes again."""
        if self.root is None:
            return None
        try:
            newest = newest_model_dir(self.root)
        except ModelResolutionError:
            return None
        seen = (newest, dir_mtime(newest))
        if seen == self.seen_on_disk:
            return None
        self.seen_on_disk = seen
        return newest

    async def reload(self, path: str | Path | None = None, *, force: bool = False) -> ReloadResult:
        """Load ``path`` (a model dir or a dir of them; default: the ``--model`` root) in a thread and
        swap it in. A version equal to the served one is not swapped unless ``force``."""
        if self._reload_lock is None:
            self._reload_lock = asyncio.Lock()
        async with self._reload_lock:
            target = Path(path) if path is not None else self.root
            if target is None:
                return ReloadResult(False, self.version, None, reason="no model path to reload from")
            t0 = time.perf_counter()
            try:
                loaded_dir, rec = await asyncio.to_thread(load_newest, target, self.device)
            except Exception as exc:
                log.error("model reload from %s failed, still serving %s: %s", target, self.version, exc)
                return ReloadResult(False, self.version, str(target), reason=str(exc))
            if rec.version == self.version and not force:
                return ReloadResult(False, self.version, str(loaded_dir), time.perf_counter() - t0,
                                    reason="same version already served")
            old = self.version
            self.loaded_dir = loaded_dir
            carry_live_items(self.current, rec)  # on the loop: no catalog record can slip in between
            self.current = rec
            self.reloads += 1
            seconds = time.perf_counter() - t0
            log.info("model reloaded: %s -> %s from %s in %.2f s (user states re-warm lazily)",
                     old, rec.version, loaded_dir, seconds)
            if self.on_swap is not None:
                self.on_swap(rec)
            return ReloadResult(True, rec.version, str(loaded_dir), seconds)

    async def watch(self, interval_s: float = 3.0) -> None:
        """Poll the models directory forever; reload when a newer model appears. Run as a task."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                changed = await asyncio.to_thread(self.changed_on_disk)
            except Exception as exc:  # e.g. the directory vanished for a moment
                log.warning("model watcher: %s", exc)
                continue
            if changed is not None:
                await self.reload(changed)


async def control_loop(live: LiveModel, settings, poll_ms: int = 200, on_reload=None) -> None:
    """Follow the ``control`` topic and hot-reload on reload messages (every worker does this). Anything
    but a reload request is skipped (logged and counted, ``worker/follow.py``), and so is a request
    whose reload raises."""
    started_ms = int(time.time() * 1000) - 1000

    def parse(message):
        if message.timestamp is not None and message.timestamp < started_ms:
            return None  # sent before this worker started
        path = reload_request(message.value)
        # a 1-tuple: None is a request too (reload from the --model root), not "nothing to do"
        return Invalid("not_a_command", "not a control command") if path is False else (path,)

    async def apply(requests) -> None:
        for _, (path,) in requests:
            result = await live.reload(path)
            log.info("control: reload -> %s", result)
            if on_reload is not None:
                on_reload(result)

    await follow_records(settings, settings.topic(settings.control_topic), role="control", parse=parse, apply=apply,
                         poll_ms=poll_ms, max_records=100)
