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


# --- worlds with knobs (benchmarks/quality.py: data we did not tune on) --------------------------------
# Each topic: a description, nouns and adjectives for series titles, and words for episode blurbs.
TOPIC_WORDS = {
    "space": ("science fiction in outer space", "Galaxy Orbit Nebula Rocket Comet Starship Moonbase Asteroid Pulsar "
              "Quasar Satellite Cosmos Eclipse Meteor Supernova Voyager", "Dark Silent Distant Frozen Red Last Lost Outer",
              "astronaut planet alien spaceship gravity crew mission star launch colony"),
    "cooking": ("a cooking show about food", "Pasta Curry Bread Soup Dumplings Tacos Risotto Pie Noodles Salad Grill "
                "Bakery Kitchen Spice Cheese Pancake", "Spicy Sweet Golden Rustic Crispy Hearty Fresh Smoky",
                "recipe chef kitchen oven flavour ingredients dinner sauce baking taste"),
    "detective": ("a crime mystery", "Murder Alibi Clue Suspect Verdict Motive Witness Cipher Fingerprint Autopsy "
                  "Ransom Heist Interrogation Evidence Inspector Poison", "Cold Silent Broken Hidden Fatal Midnight "
                  "Perfect Deadly", "detective police crime investigation killer victim case suspect trial murder"),
    "nature": ("a nature documentary", "Forest River Mountain Ocean Desert Glacier Jungle Savanna Reef Volcano Tundra "
               "Wetland Canyon Prairie Island Lagoon", "Wild Ancient Living Hidden Vast Secret Frozen Blue",
               "wildlife animals habitat species landscape predators birds migration plants ecosystem"),
    "romance": ("a romantic story about love", "Kiss Letter Wedding Summer Promise Heart Dance Paris Valentine "
                "Honeymoon Proposal Bouquet Sweetheart Rendezvous Serenade Engagement", "Sweet Endless Secret First "
                "Second Tender Golden Little", "love couple romance date marriage passion relationship feelings bride"),
    "history": ("a historical drama", "Empire Revolution Pharaoh Castle Crusade Dynasty Senate Viking Kingdom Throne "
                "Legion Conquest Monarch Republic Knight Sultan", "Iron Golden Fallen Ancient Great Holy Bloody Last",
                "king queen war army battle medieval century emperor rebellion conquest"),
    "sports": ("a sports series", "Champions Stadium Marathon Derby Playoffs Rookie Coach Penalty Trophy Tournament "
               "Goal Sprint Match League Season Comeback", "Final Golden Perfect Underdog Winning Fast Iron Big",
               "football team player match coach goal league fans training championship"),
    "horror": ("a horror story", "Haunting Ghost Curse Demon Zombie Vampire Nightmare Ritual Asylum Possession Shadow "
               "Crypt Witch Poltergeist Graveyard Scream", "Dark Evil Bloody Cursed Silent Dead Wicked Black",
               "terror fear monster haunted blood scary evil spirits horror screams"),
    "comedy": ("a comedy series", "Sitcom Roommates Office Prank Wedding Neighbours Holiday Roadtrip Party Family "
               "Intern Diner Camp Reunion School Talkshow", "Crazy Silly Awkward Happy Funny Lazy Little Big",
               "jokes laughter funny hilarious awkward friends chaos pranks sitcom humour"),
    "music": ("a music documentary", "Concert Guitar Symphony Jazz Opera Rockstar Album Chorus Festival Piano Band "
              "Tour Ballad Studio Drummer Orchestra", "Electric Acoustic Live Golden Loud Soulful Classical Wild",
              "songs musicians concert melody band singer rhythm orchestra stage album"),
    "science": ("a science documentary", "Atom Genome Quantum Brain Climate Evolution Energy Robot Laboratory "
                "Microbe Telescope Vaccine Particle Cell Fossil Chemistry", "Hidden Invisible Tiny Secret Modern "
                "Future Amazing Inner", "scientists research experiment discovery physics biology theory laboratory data"),
    "travel": ("a travel show", "Journey Voyage Safari Backpacker Cruise Pilgrimage Expedition Roadtrip Passport "
               "Islands Capitals Train Markets Villages Coastline Trek", "Grand Slow Great Lost Hidden Exotic Little "
               "Wild", "travel destination tourists culture cities adventure hotels local explore trip"),
}
PSEUDO_SYLLABLES = "ba ko ri zu ne la mo ti vu sa pe do gu fi xa re no ki lu ma".split()


@dataclass(frozen=True)
class WorldSpec:
    """Knobs of a synthetic world (all seeded): who watches what, in which order, and what item texts say.

    * ``order``: how often a user's next item is the next episode of the series they are in;
    * ``resume``: otherwise, how often they go back to the series they most recently left unfinished
      (its next episode) -- a dependence on more than the last item;
    * ``stickiness``: otherwise, how often they stay in the current topic (else they switch to another
      of their favourite topics, or any topic with probability ``explore``);
    * ``history``: (min, max) events per user;
    * ``new_share``: share of items that are *new releases* (``SyntheticWorld.new_items``): the latest
      episodes of random series. They are in the catalog but out only before each user's last two events
      (the validation and test events of a leave-one-out split), so they are absent from the training log;
    * ``text``: ``"series"`` (English title naming the series and episode, plus topic words),
      ``"topic"`` (topic words only, series not named), ``"random"`` (random pseudo-words: no information).
    """

    name: str = "world"
    n_users: int = 3000
    topics: int = 12
    series_per_topic: int = 20
    episodes: tuple[int, int] = (4, 16)
    order: float = 0.7
    resume: float = 0.0
    stickiness: float = 0.7
    explore: float = 0.1
    favourite_topics: int = 2
    history: tuple[int, int] = (8, 40)
    new_share: float = 0.08
    text: str = "series"
    popularity_skew: float = 1.0  # Zipf exponent of series popularity inside a topic
    seed: int = 0


@dataclass(frozen=True)
class SyntheticWorld:
    spec: WorldSpec
    items: list[dict]  # {item_id, title, text, attributes: {topic, series, episode}}
    events: list[dict]  # {user_id, item_id, event_type, timestamp}, sorted by time
    new_items: list[str]  # new releases: only ever among a user's last two events, absent from the training log
    favourites: dict[str, list[int]]  # user -> favourite topic indexes (the latent part of the oracle)

    def oracle_next(self, user: str, history: list[str]) -> "np.ndarray":
        """The true probability of every catalog item (in ``items`` order) being the user's next event
        after ``history`` (item ids, oldest first), before seen items are ruled out (the generator draws
        among unseen items in proportion to it): what no model can beat."""
        moves = _Transitions.of(self)
        return moves.next_probabilities([moves.index[i] for i in history], self.favourites[user])


class _Transitions:
    """The generator's next-item distribution, vectorised over the catalog."""

    _cache: dict = {}

    def __init__(self, spec: WorldSpec, items: list[dict]):
        import numpy as np

        self.spec = spec
        self.index = {it["item_id"]: n for n, it in enumerate(items)}
        topics = list(TOPIC_WORDS)[:spec.topics]
        self.topic = np.array([topics.index(it["attributes"]["topic"]) for it in items])
        series = [it["attributes"]["series"] for it in items]
        self.series = series
        episode = np.array([int(it["attributes"]["episode"]) for it in items])
        length = {}
        for name in series:
            length[name] = length.get(name, 0) + 1
        self.next = np.array([n + 1 if n + 1 < len(items) and series[n + 1] == series[n] else -1
                              for n in range(len(items))])
        rank = np.array([int(name.rsplit("-", 1)[1]) for name in series])  # series index inside its topic
        zipf = 1.0 / (rank + 1.0) ** spec.popularity_skew
        zipf = zipf / sum(1.0 / (r + 1.0) ** spec.popularity_skew for r in range(spec.series_per_topic))
        first = (episode == 1).astype(float)
        self.jump_item = zipf * (0.5 * first + 0.5 / np.array([length[name] for name in series]))  # given the topic
        self.n_topics = len(topics)

    @classmethod
    def of(cls, world: "SyntheticWorld") -> "_Transitions":
        key = id(world.items)
        if key not in cls._cache:
            cls._cache = {key: cls(world.spec, world.items)}
        return cls._cache[key]

    def resume_target(self, history: list[int]) -> int:
        """The next episode of the series the user most recently left unfinished (-1 = none)."""
        if not history:
            return -1
        seen = set(history)
        current = self.series[history[-1]]
        for item in reversed(history):
            if self.series[item] != current:
                nxt = self.next[item]
                while nxt >= 0 and nxt in seen:
                    nxt = self.next[nxt]
                if nxt >= 0:
                    return int(nxt)
        return -1

    def next_probabilities(self, history: list[int], favourites: list[int]) -> "np.ndarray":
        import numpy as np

        spec = self.spec
        last = history[-1] if history else None
        fav = np.zeros(self.n_topics)
        fav[list(favourites)] = 1.0 / len(favourites)
        if last is None:  # the first event: a series of the first favourite topic
            topic_p = np.zeros(self.n_topics)
            topic_p[favourites[0]] = 1.0
            return topic_p[self.topic] * self.jump_item
        switch = spec.explore / self.n_topics + (1 - spec.explore) * fav
        topic_p = (1 - spec.stickiness) * switch
        topic_p[self.topic[last]] += spec.stickiness
        p_next = spec.order if self.next[last] >= 0 else 0.0
        resume = self.resume_target(history) if spec.resume > 0 else -1
        p_resume = (1 - p_next) * spec.resume if resume >= 0 else 0.0
        p = (1 - p_next - p_resume) * topic_p[self.topic] * self.jump_item
        if p_next:
            p[self.next[last]] += p_next
        if p_resume:
            p[resume] += p_resume
        return p


def _pseudo_words(rng: random.Random, n: int) -> str:
    return " ".join("".join(rng.choice(PSEUDO_SYLLABLES) for _ in range(rng.randint(2, 3))).capitalize()
                    for _ in range(n))


def make_spec_world(spec: WorldSpec) -> SyntheticWorld:
    """Generate the world of ``spec`` (deterministic in ``spec``). Each user has favourite topics; the
    first item is a series of the first one; each next item is drawn from
    ``SyntheticWorld.oracle_next`` among the items the user has not seen yet."""
    import numpy as np

    if spec.text not in ("series", "topic", "random"):
        raise ValueError(f"text must be series, topic or random, got {spec.text!r}")
    rng = random.Random(spec.seed)
    topics = list(TOPIC_WORDS)[:spec.topics]
    if len(topics) < spec.topics:
        raise ValueError(f"at most {len(TOPIC_WORDS)} topics")
    items = []
    for t, topic in enumerate(topics):
        desc, nouns, adjectives, words = TOPIC_WORDS[topic]
        nouns, adjectives, words = nouns.split(), adjectives.split(), words.split()
        names = rng.sample([f"{a} {n}" for a in adjectives for n in nouns], spec.series_per_topic)
        for s, name in enumerate(names):
            for e in range(rng.randint(*spec.episodes)):
                blurb = " ".join(rng.sample(words, 4))
                if spec.text == "series":
                    title, text = f"{name}, episode {e + 1}", f"{desc}: {blurb}"
                elif spec.text == "topic":
                    title, text = f"{rng.choice(adjectives)} {rng.choice(nouns)}", f"{desc}: {blurb}"
                else:
                    title, text = _pseudo_words(rng, 2), _pseudo_words(rng, 5).lower()
                items.append({"item_id": f"{topic[:3]}{s:02d}e{e + 1:02d}", "title": title, "text": text,
                              "attributes": {"topic": topic, "series": f"{topic}-{s}", "episode": str(e + 1)}})
    world = SyntheticWorld(spec, items, [], [], {})
    moves = _Transitions.of(world)
    # New releases: the latest episode of random series, then the one before, ... up to the share.
    budget = int(round(spec.new_share * len(items)))
    by_series: dict[str, list[int]] = {}
    for n, it in enumerate(items):
        by_series.setdefault(it["attributes"]["series"], []).append(n)
    order = list(by_series)
    rng.shuffle(order)
    released = np.ones(len(items))
    depth = 1
    while budget > 0 and depth <= max(len(v) for v in by_series.values()):
        for name in order:
            if budget > 0 and len(by_series[name]) > depth:  # the first episode of a series stays out of it
                released[by_series[name][-depth]] = 0.0
                budget -= 1
        depth += 1
    world.new_items.extend(sorted(it["item_id"] for n, it in enumerate(items) if not released[n]))
    topic_weight = 1.0 / np.sqrt(np.arange(1, len(topics) + 1))
    nprng = np.random.default_rng(spec.seed)
    ids = [it["item_id"] for it in items]
    for u in range(spec.n_users):
        user = f"u{u:05d}"
        favourites = [int(t) for t in nprng.choice(len(topics), size=min(spec.favourite_topics, len(topics)),
                                                   replace=False, p=topic_weight / topic_weight.sum())]
        world.favourites[user] = favourites
        unseen = np.ones(len(items))
        history: list[int] = []
        ts = 1_700_000_000.0 + rng.uniform(0, 30 * 86400)
        length = rng.randint(*spec.history)
        for step in range(length):
            p = moves.next_probabilities(history, favourites) * unseen
            if step < length - 2:
                p = p * released  # the new releases come out just before the user's last two events
            if p.sum() <= 0:
                break
            last = int(nprng.choice(len(items), p=p / p.sum()))
            history.append(last)
            unseen[last] = 0.0
            world.events.append({"user_id": user, "item_id": ids[last], "event_type": "view", "timestamp": round(ts, 3)})
            ts += rng.expovariate(1 / 3600.0)
    world.events.sort(key=lambda e: (e["timestamp"], e["user_id"]))
    return world
