"""A small synthetic world with clear sequential structure, for the demo, tests and benchmarks.

Items belong to themes ("space", "cooking", ...) and are ordered in chains inside each theme: a user
who watched item ``t/i`` most likely watches ``t/i+1`` next (a series), sometimes jumps to a random item
of the same theme, rarely to another theme. A next-item model must learn the chains to beat popularity;
the titles carry the theme, so a text encoder sees it too.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

THEMES = {
    "space": ["Galaxy", "Orbit", "Nebula", "Rocket", "Comet", "Starship", "Moonbase", "Asteroid"],
    "cooking": ["Pasta", "Curry", "Bread", "Soup", "Dumplings", "Tacos", "Risotto", "Pie"],
    "detective": ["Murder", "Alibi", "Clue", "Suspect", "Verdict", "Motive", "Witness", "Cipher"],
    "nature": ["Forest", "River", "Mountain", "Ocean", "Desert", "Glacier", "Jungle", "Savanna"],
    "romance": ["Kiss", "Letter", "Wedding", "Summer", "Promise", "Heart", "Dance", "Paris"],
    "history": ["Empire", "Revolution", "Pharaoh", "Castle", "Crusade", "Dynasty", "Senate", "Viking"],
}
DESCRIPTIONS = {
    "space": "a science fiction space adventure among stars and planets",
    "cooking": "a cooking show about recipes, food and kitchens",
    "detective": "a crime mystery where a detective solves a murder",
    "nature": "a nature documentary about wildlife and landscapes",
    "romance": "a romantic comedy about love and relationships",
    "history": "a historical drama about kings, wars and empires",
}


@dataclass(frozen=True)
class World:
    items: list[dict]  # catalog records: {item_id, title, text, attributes}
    events: list[dict]  # event records: {user_id, item_id, event_type, timestamp}, sorted by time


def item_id(theme: str, index: int) -> str:
    return f"{theme}-{index:02d}"


def make_catalog(items_per_theme: int = 8, themes: list[str] | None = None) -> list[dict]:
    out = []
    for theme in themes or list(THEMES):
        words = THEMES[theme]
        for i in range(items_per_theme):
            out.append({
                "item_id": item_id(theme, i),
                "title": f"{words[i % len(words)]} {'Part ' + str(i // len(words) + 1) if i >= len(words) else ''}".strip(),
                "text": DESCRIPTIONS[theme],
                "attributes": {"genre": theme, "episode": str(i + 1)},
            })
    return out


def make_world(n_users: int = 200, events_per_user: tuple[int, int] = (8, 20), items_per_theme: int = 8,
               p_next: float = 0.8, p_same_theme: float = 0.15, seed: int = 0,
               start_ts: float = 1_700_000_000.0, themes: list[str] | None = None) -> World:
    """Users walk the chains of one favourite theme: next episode with ``p_next``, a random item of the
    same theme with ``p_same_theme``, any random item otherwise."""
    rng = random.Random(seed)
    themes = themes or list(THEMES)
    catalog = make_catalog(items_per_theme, themes)
    events = []
    for u in range(n_users):
        theme = rng.choice(themes)
        pos = rng.randrange(items_per_theme)
        ts = start_ts + rng.uniform(0, 86400)
        for _ in range(rng.randint(*events_per_user)):
            events.append({"user_id": f"u{u:04d}", "item_id": item_id(theme, pos), "event_type": "view",
                           "timestamp": round(ts, 3)})
            r = rng.random()
            if r < p_next:
                pos = (pos + 1) % items_per_theme
            elif r < p_next + p_same_theme:
                pos = rng.randrange(items_per_theme)
            else:
                theme, pos = rng.choice(themes), rng.randrange(items_per_theme)
            ts += rng.uniform(60, 7200)
    events.sort(key=lambda e: e["timestamp"])
    return World(items=catalog, events=events)


def synthetic_events(n: int, users: int, seed: int) -> tuple[list[dict], list[dict]]:
    """(catalog, first n events) of a synthetic world large enough for n events."""
    per_user = max(1, -(-n // max(users, 1)))
    world = make_world(n_users=users, events_per_user=(per_user, per_user + 4), seed=seed)
    events = world.events
    while len(events) < n:  # tiny --synthetic-users: repeat the walk
        events = events + world.events
    return world.items, events[:n]
