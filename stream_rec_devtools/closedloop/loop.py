"""The simulation: users answer the lists a ``ListSource`` gives them, day by day, and what it shows costs
or earns is counted.

Per simulated event (time order): the new items whose release time has come join the catalogue; the
user's next item is drawn given the list she holds (``world.Users.next_item``); the event is graded
against that list; then the source answers with her next list. Events are handed to the source in
micro-batches of distinct users (the stream batches across users the same way).

Counted per simulated day (``DayCounts``):

* ``new_events`` / ``new_hits``: events on new items, and those whose item was in the list the user held
  (the new-item hits every policy is compared on); ``explore_hits``: those a policy had put in;
* ``warm_events`` / ``warm_hits`` / ``warm_ndcg``: events on old items, graded against the list held
  (HR@k, NDCG@k); ``plain_warm_hits`` / ``plain_warm_ndcg``: the same events graded against the plain
  ranking's list for the same state (offline sources only): a policy's warm cost on the very same events;
* ``lists`` and ``slots``: lists emitted, and list positions a policy gave to new items.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from .sources import ListSource, Shown
from .world import SimWorld, Users, event_times


@dataclass
class DayCounts:
    events: int = 0
    new_events: int = 0
    new_hits: int = 0
    explore_hits: int = 0
    warm_events: int = 0
    warm_hits: int = 0
    warm_ndcg: float = 0.0
    plain_warm_hits: int = 0
    plain_warm_ndcg: float = 0.0
    lists: int = 0
    slots: int = 0

    def add(self, other: "DayCounts") -> None:
        for name, value in asdict(other).items():
            setattr(self, name, getattr(self, name) + value)


def grade(shown: list[str], item: str) -> float:
    """NDCG@k of one event against one list (0 when the item is not in it)."""
    return 1.0 / math.log2(shown.index(item) + 2) if item in shown else 0.0


def count_event(day: DayCounts, shown: Shown, item: str, new: set[str]) -> None:
    day.events += 1
    if item in new:
        day.new_events += 1
        day.new_hits += item in shown.items
        day.explore_hits += item in shown.fresh
        return
    day.warm_events += 1
    day.warm_hits += item in shown.items
    day.warm_ndcg += grade(shown.items, item)
    if shown.plain is not None:
        day.plain_warm_hits += item in shown.plain
        day.plain_warm_ndcg += grade(shown.plain, item)


def count_lists(day: DayCounts, lists: dict[str, Shown]) -> None:
    day.lists += len(lists)
    day.slots += sum(len(s.fresh) for s in lists.values())


def batches(events: list[tuple[float, str]], size: int):
    """Consecutive events, cut so a batch never holds a user twice nor more than ``size`` events."""
    batch, users = [], set()
    for ts, user in events:
        if user in users or len(batch) >= size:
            yield batch
            batch, users = [], set()
        batch.append((ts, user))
        users.add(user)
    if batch:
        yield batch


def simulate(sim: SimWorld, source: ListSource, batch: int = 64, progress=None, users: Users | None = None
             ) -> list[DayCounts]:
    """Run the simulated days through ``source``; counts per day. ``users``: the simulated users (a fresh
    ``Users(sim)`` by default; an omniscient policy reads the same object)."""
    users = users or Users(sim)
    new = set(sim.new_items)
    releases = sorted((t, i) for i, t in sim.release_at.items())
    days = [DayCounts() for _ in range(sim.params.days)]
    lists = source.warm(sim.histories, sim.start)
    count_lists(days[0], lists)
    for part in batches(event_times(sim), batch):
        now = part[0][0]
        out = [i for t, i in releases if t <= now]
        if out:
            releases = releases[len(out):]
            users.release(out)
            source.release({i: sim.texts[i] for i in out}, now)
        answered = []
        for ts, user in part:
            item = users.next_item(user, lists[user].items)
            if item is None:
                continue
            count_event(days[min(sim.day_of(ts), len(days) - 1)], lists[user], item, new)
            answered.append((user, item, ts))
        if answered:
            fresh = source.answer(answered)
            count_lists(days[min(sim.day_of(now), len(days) - 1)], fresh)
            lists.update(fresh)
        if progress is not None:
            progress(len(part))
    return days
