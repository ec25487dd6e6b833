"""What the worker keeps for its pages (worker/ui.py) beyond the user states: who watches which user live,
how often each item appeared in the lists this worker emitted lately, and the catalogue's titles.

:class:`UiState` is fed from two places only: the batch handler calls :meth:`UiState.on_batch` once per
micro-batch, after its records were handed to the producer, and the catalog follower adds catalog records
to :attr:`UiState.items`. What that costs the stream:

* live pages: nothing while nobody watches (one empty-dict test per batch); while someone does, a dict
  lookup per emitted user, and for a watched user an append to a bounded queue. A watcher that reads
  slowly or not at all loses the oldest updates (``deque(maxlen=...)``), never the worker's memory;
* the item counts (:class:`ItemExposure`): two ``Counter.update`` per batch, of the item ids of its lists
  and of the (item, reason) pairs of a sample of them, into 5-minute buckets of the last hour, capped;
* the recently active users: a reference to the batch's list of records (the last few batches).

Nothing here is read on the stream's path; the pages read it on request.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from itertools import chain
from operator import itemgetter
from typing import Callable, Iterable, Sequence

from ..io.data import catalog_text

# what a live page hears: a new list (the emitted record), or that its user is gone from this worker
LIST, ERASED, MOVED, STOPPING = "list", "erased", "moved", "stopping"


class Subscription:
    """One live page's queue: at most ``maxlen`` updates wait (the oldest are dropped); ``ended`` (erased,
    moved, stopping) is kept apart, so it is never dropped.

    The page waits on the HTTP listener's loop (``loop``: its thread, worker/listener.py) and the stream
    puts from its own: the deque's appends and pops are atomic, and the wake-up crosses to the page's loop
    with ``call_soon_threadsafe`` (an ``asyncio.Event`` is not thread-safe)."""

    def __init__(self, key: str, maxlen: int = 4, loop: asyncio.AbstractEventLoop | None = None):
        self.key = key
        self.updates: deque[dict] = deque(maxlen=maxlen)
        self.ended: str | None = None
        self.dropped = 0
        self._wake = asyncio.Event()
        self._loop = loop

    def put(self, record: dict) -> None:
        if len(self.updates) == self.updates.maxlen:
            self.dropped += 1
        self.updates.append(record)
        self._signal()

    def end(self, why: str) -> None:
        if self.ended is None:
            self.ended = why
        self._signal()

    def _signal(self) -> None:
        if self._loop is None:
            self._wake.set()
            return
        try:
            self._loop.call_soon_threadsafe(self._wake.set)
        except RuntimeError:  # the page's loop is closed: nobody waits any more
            pass

    async def wait(self, timeout_s: float) -> bool:
        """Wait until something arrived or ended (True), or ``timeout_s`` passed (False)."""
        if self.updates or self.ended:
            return True
        try:
            await asyncio.wait_for(self._wake.wait(), timeout_s)
        except asyncio.TimeoutError:
            return False
        finally:
            self._wake.clear()
        return True

    def take(self) -> list[dict]:
        out = []
        while self.updates:  # popleft: an update the stream appends meanwhile is kept for the next take
            out.append(self.updates.popleft())
        return out


class Watchers:
    """State key -> the live pages watching that user, at most ``max_pages`` in all."""

    def __init__(self, max_pages: int = 64):
        self.max_pages = max_pages
        self.by_user: dict[str, set[Subscription]] = {}
        self._count = 0

    def subscribe(self, key: str, loop: asyncio.AbstractEventLoop | None = None) -> Subscription | None:
        """A new live page for the user of state key ``key``, waiting on ``loop``; None when ``max_pages``
        are open."""
        if self._count >= self.max_pages:
            return None
        sub = Subscription(key, loop=loop)
        self.by_user.setdefault(key, set()).add(sub)
        self._count += 1
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        subs = self.by_user.get(sub.key)
        if subs is not None and sub in subs:
            subs.discard(sub)
            self._count -= 1
            if not subs:
                del self.by_user[sub.key]

    def publish(self, records: Sequence[dict], erased: Iterable[str] = ()) -> None:
        """The emitted records of a batch (the ones of watched users are queued), and the users it erased."""
        watched = self.by_user  # pages subscribe on the listener's thread: sets are copied (tuple: one C call)
        for user in erased:
            for sub in tuple(watched.get(user, ())):
                sub.end(ERASED)
        for record in records:
            subs = watched.get(record["user_id"])
            if subs:
                for sub in tuple(subs):
                    if sub.ended is None:
                        sub.put(record)

    def close_all(self, why: str) -> None:
        """Every live page ends (a rebalance moved the users, or the worker stops)."""
        for subs in list(self.by_user.values()):
            for sub in tuple(subs):
                sub.end(why)

    def __len__(self) -> int:
        return self._count


_ITEMS, _ITEM_ID, _ITEM_AND_REASON = itemgetter("items"), itemgetter("item_id"), itemgetter("item_id", "reason")


def _ITEM_NO_REASON(item: dict) -> tuple[str, str]:  # lists without reasons (Settings.explain off)
    return item["item_id"], ""


class ItemExposure:
    """How often each item appeared in the lists emitted in the last hour, and with which reasons, in
    5-minute buckets (the last ``BUCKETS`` kept). Per bucket: a ``Counter`` of item ids (exact; at most one
    key per catalogue item) and a ``Counter`` of (item id, reason) pairs of a sample of the lists (every
    ``REASON_SAMPLE``-th list of a batch: the reasons' shares, at a quarter of the cost), which admits new
    pairs only while it holds fewer than ``MAX_REASON_KEYS``; after that only the pairs it holds are
    counted (``saturated``). So the memory stays bounded whatever the catalogue's reasons."""

    BUCKET_S = 300
    BUCKETS = 12
    MAX_REASON_KEYS = 10_000
    REASON_SAMPLE = 4

    def __init__(self, clock: Callable[[], float] = time.time):
        self.clock = clock
        self._buckets: deque[tuple[int, Counter, Counter]] = deque(maxlen=self.BUCKETS)
        self.saturated: set[int] = set()  # slots whose reason counting stopped admitting new pairs

    def add(self, records: Sequence[dict]) -> None:
        slot = int(self.clock() // self.BUCKET_S)
        if not self._buckets or self._buckets[-1][0] != slot:
            self._buckets.append((slot, Counter(), Counter()))
            self.saturated = {s for s in self.saturated if s > slot - self.BUCKETS}
        _, items, reasons = self._buckets[-1]
        # iterated in C (map, chain, Counter's counting): no Python-level loop per list entry
        items.update(map(_ITEM_ID, chain.from_iterable(map(_ITEMS, records))))
        sample = list(chain.from_iterable(map(_ITEMS, records[::self.REASON_SAMPLE])))
        pairs = map(_ITEM_AND_REASON if sample and "reason" in sample[0] else _ITEM_NO_REASON, sample)
        if len(reasons) < self.MAX_REASON_KEYS:
            reasons.update(pairs)
        else:
            self.saturated.add(slot)
            reasons.update(filter(reasons.__contains__, pairs))

    def _recent(self) -> list[tuple[int, dict, dict]]:
        """The last hour's buckets, copied (each a C-level copy): the pages read them on the listener's
        thread while the stream counts into the newest."""
        oldest = int(self.clock() // self.BUCKET_S) - self.BUCKETS + 1
        return [(slot, dict(items), dict(pairs)) for slot, items, pairs in list(self._buckets) if slot >= oldest]

    def of(self, item_id: str) -> tuple[int, list[tuple[str, int]]]:
        """(times shown in the last hour, [(reason, times in the sampled lists)] most frequent first)."""
        shown, reasons = 0, Counter()
        for _, items, pairs in self._recent():
            shown += items.get(item_id, 0)
            for (item, reason), n in pairs.items():
                if item == item_id:
                    reasons[reason] += n
        return shown, reasons.most_common()

    def top(self, n: int = 10) -> list[tuple[str, int]]:
        """The ``n`` items shown most often in the last hour: [(item id, times)]."""
        total: Counter = Counter()
        for _, items, _ in self._recent():
            total.update(items)
        return total.most_common(n)

    @property
    def is_saturated(self) -> bool:
        oldest = int(self.clock() // self.BUCKET_S) - self.BUCKETS + 1
        return any(slot >= oldest for slot in tuple(self.saturated))


@dataclass(frozen=True)
class ItemInfo:
    title: str
    text: str  # what the encoder reads (``io.data.catalog_text``), cut at ``ItemIndex.MAX_TEXT``
    attributes: dict[str, str]
    first_seen: float  # when this worker first read the item's catalog record (wall clock)


@dataclass
class ItemIndex:
    """The catalogue as the pages show it: item id -> :class:`ItemInfo` (every worker holds the whole
    catalogue already; each text is cut at ``MAX_TEXT`` characters, at most ``MAX_ATTRIBUTES`` attributes)."""

    MAX_TITLE = 300
    MAX_TEXT = 2000
    MAX_ATTRIBUTES = 20
    items: dict[str, ItemInfo] = field(default_factory=dict)
    clock: Callable[[], float] = time.time

    def add(self, records: Iterable[dict]) -> None:
        now = self.clock()
        for record in records:
            item_id = str(record["item_id"])
            known = self.items.get(item_id)
            attrs = record.get("attributes")
            attrs = ({str(k)[:100]: str(v)[:200] for k, v in list(attrs.items())[:self.MAX_ATTRIBUTES]}
                     if isinstance(attrs, dict) else {})
            self.items[item_id] = ItemInfo(str(record.get("title") or "")[:self.MAX_TITLE],
                                           catalog_text(record)[:self.MAX_TEXT], attrs,
                                           known.first_seen if known else now)

    def title(self, item_id: str) -> str:
        info = self.items.get(item_id)
        return info.title if info is not None else ""

    def search(self, query: str, limit: int = 20) -> list[str]:
        """Item ids matching ``query``: the id itself first, then the items whose id or text contains every
        word of it (case-insensitive), in catalogue order."""
        words = query.lower().split()[:10]
        if not words:
            return []
        out = [query.strip()] if query.strip() in self.items else []
        for item_id, info in list(self.items.items()):  # a copy: the catalog follower adds on the stream's loop
            if len(out) >= limit:
                break
            text = f"{item_id} {info.text}".lower()
            if item_id not in out and all(word in text for word in words):
                out.append(item_id)
        return out


class UiState:
    """What the pages read beyond the states; fed by :meth:`on_batch` (the batch handler) and ``items``
    (the catalog follower)."""

    RECENT_BATCHES = 16

    def __init__(self, clock: Callable[[], float] = time.time, max_pages: int = 64):
        self.watchers = Watchers(max_pages)
        self.exposure = ItemExposure(clock)
        self.items = ItemIndex(clock=clock)
        self.recent: deque[list[dict]] = deque(maxlen=self.RECENT_BATCHES)  # the last batches' records

    def on_batch(self, records: list[dict], erased: Iterable[str]) -> None:
        """A micro-batch's emitted records and erased users (state keys)."""
        if records:
            self.recent.append(records)
            self.exposure.add(records)
        if self.watchers.by_user:
            self.watchers.publish(records, erased)

    def recent_users(self, n: int = 12) -> list[str]:
        """State keys of the users of the latest lists, newest first, each once."""
        out: dict[str, None] = {}
        for records in reversed(list(self.recent)):  # a copy: the stream appends on its own thread
            for record in reversed(records):
                out.setdefault(record["user_id"], None)
                if len(out) >= n:
                    return list(out)
        return list(out)
