"""The temporal replay's pure parts (stream_rec_devtools/temporal.py): split, cadence boundaries, rounds,
the held-list scorer, the sliding popularity, the lazy cadence lists and the replay loop, on tiny logs."""

from __future__ import annotations

import math

import numpy as np
import pytest

from stream_rec_devtools.temporal import (DAY, HOUR, CadenceLists, Held, Log, Scoreboard, WindowPopularity,
                                          cadence_boundary, replay, split_time, windows)

T0 = 1_700_006_400.0  # a UTC midnight


def test_log_sorts_stably_and_cuts_before_t():
    log = Log.of([("a", "x", 5.0), ("b", "y", 1.0), ("a", "z", 5.0), ("c", "w", 3.0)])
    assert log.users == ["b", "c", "a", "a"] and log.items == ["y", "w", "x", "z"]  # ties keep input order
    assert log.index_at(5.0) == 2 and log.index_at(5.5) == 4
    assert log.sequences(3) == {"b": [("y", 1.0)], "c": [("w", 3.0)], "a": [("x", 5.0)]}
    assert split_time(np.array([10.0, 20.0, 110.0]), 0.8) == pytest.approx(90.0)
    with pytest.raises(ValueError):
        split_time(np.array([1.0, 2.0]), 1.0)


def test_cadence_boundaries_are_t_then_utc_multiples():
    t_split = T0 + 5.5 * HOUR
    assert cadence_boundary(T0 + 5.7 * HOUR, t_split, DAY) == t_split  # before the first midnight: T
    assert cadence_boundary(T0 + DAY + 1.0, t_split, DAY) == T0 + DAY
    assert cadence_boundary(T0 + 7.2 * HOUR, t_split, HOUR) == T0 + 7 * HOUR
    assert cadence_boundary(T0 + 7.2 * HOUR, t_split, 0) == T0 + 7.2 * HOUR  # live


def test_rounds_keep_each_users_order_and_never_repeat_a_user():
    ts = [T0 + 10, T0 + 20, T0 + 30, T0 + 40, T0 + HOUR + 5, T0 + 5 * HOUR]
    log = Log.of(list(zip(["a", "a", "b", "a", "a", "b"], ["1", "2", "3", "4", "5", "6"], ts)))
    got = list(windows(log, 0, T0))
    assert [w for w, _ in got] == [T0, T0 + HOUR, T0 + 5 * HOUR]
    assert got[0][1] == [[0, 2], [1], [3]]  # a's 1st and b's 1st, then a's 2nd, then a's 3rd
    assert got[1][1] == [[4]] and got[2][1] == [[5]]


def test_scoreboard_filters_seen_items_then_takes_k():
    board = Scoreboard(["s"], k=2)
    row = board.add_event(T0 + 100, new_item=False, new_user=False)
    board.score("s", row, Held(["seen", "x", "target"], T0), "target", {"seen"})  # 'seen' filtered: rank 1
    row = board.add_event(T0 + 200, new_item=True, new_user=True)
    board.score("s", row, Held(["x", "y", "target"], T0 + 150), "target", set())  # rank 2 > k
    row = board.add_event(T0 + 300, new_item=True, new_user=False)
    board.score("s", row, None, "target", set())  # no list: a miss
    assert board.hit["s"] == [1.0, 0.0, 0.0]
    assert board.ndcg["s"][0] == pytest.approx(1 / math.log2(3))
    assert board.age["s"][:2] == [100.0, 50.0] and math.isnan(board.age["s"][2])
    summary = board.summary(T0, T0 + 300, reference="s")["s"]
    assert summary["hr2"] == pytest.approx(1 / 3) and summary["ratio_to_live"] == 1.0
    assert summary["new_item_hits"] == 0 and summary["new_item_events"]["n"] == 2
    assert summary["users_new_at_T"]["n"] == 1 and summary["last_third"]["n"] == 2  # t >= T0 + 200
    stale = summary["staleness"]  # ages 100 s (1-10 min, a hit) and 50 s (<1 min, a miss)
    assert (stale[0]["n"], stale[0]["hr2"], stale[1]["n"], stale[1]["hr2"]) == (1, 0.0, 1, 1.0)


def test_window_popularity_counts_the_24_hours_before_t():
    log = Log.of([("u", "old", T0 - 2 * DAY), ("u", "a", T0 - 3600), ("v", "b", T0 - 60), ("w", "b", T0 - 30),
                  ("x", "c", T0)])
    pop = WindowPopularity(log)
    assert pop.top(T0) == ["b", "a"]  # 'old' is out of the window, 'c' is not before T0
    assert pop.top(T0 + 1) == ["b", "a", "c"]


def test_cadence_lists_use_the_state_at_the_boundary_and_popularity_without_history():
    log = Log.of([("p", "pop", T0 + 10)])
    cad = CadenceLists(T0, DAY, WindowPopularity(log))
    state = {"a": "a0"}
    calls = []

    def compute(users, bounds):
        calls.append((list(users), list(bounds)))
        return [[f"from-{state[u]}"] for u in users]

    held = cad.held(["a", "new"], [T0 + HOUR, T0 + HOUR], lambda u: u in state, compute)
    assert held[0] == Held(["from-a0"], T0) and held[1] == Held([], T0)  # no event before T0: empty popularity
    state["a"], state["new"] = "a1", "n1"  # their events are applied
    held = cad.held(["a", "new"], [T0 + 2 * HOUR, T0 + 2 * HOUR], lambda u: u in state, compute)
    assert held[0].items == ["from-a0"] and held[1].items == []  # same day: the lists of the boundary stay
    held = cad.held(["a", "new"], [T0 + DAY + 5, T0 + DAY + 5], lambda u: u in state, compute)
    assert [h.items for h in held] == [["from-a1"], ["from-n1"]] and held[0].computed_at == T0 + DAY
    assert cad.computed == 4 and len(calls) == 2


class EchoSystem:
    """Holds, for each user, the item of the user's previous event (a perfect 'repeat' predictor)."""

    def __init__(self):
        self.lists, self.windows = {}, []

    def window(self, t):
        self.windows.append(t)

    def held(self, users, ts):
        return [self.lists.get(u) for u in users]

    def update(self, users, items, ts, offsets):
        for u, i, t in zip(users, items, ts):
            self.lists[u] = Held([f"after-{i}"], t)


def test_replay_scores_each_event_before_applying_it():
    triples = [("a", "1", T0 - 50), ("a", "after-1", T0 + 10), ("a", "after-after-1", T0 + 20), ("b", "x", T0 + 30),
               ("b", "x", T0 + 40), ("b", "y", T0 + 2 * HOUR)]
    log = Log.of(triples)
    echo = EchoSystem()
    echo.lists["a"] = Held(["after-1"], T0 - 50)  # what the system held at T
    board = Scoreboard(["echo"])
    stats = replay(log, 1, T0, {"echo": echo}, board, born_before={"1"}, users_at_t={"a"}, progress=False)
    assert stats.events == 5 and stats.scored == 3
    assert board.skipped == {"first_event": 1, "repeat": 1}  # b's first event, b's repeat of x
    assert board.hit["echo"] == [1.0, 1.0, 0.0]
    assert board.new_user == [False, False, True] and board.new_item == [True, True, True]
    assert echo.windows == [T0, T0 + 2 * HOUR]
    assert set(stats.cpu_s) == {"echo"}


def test_windows_skip_empty_hours_after_t():
    log = Log.of([("a", "1", T0 + 30.5), ("a", "2", T0 + 3 * HOUR + 1)])
    got = list(windows(log, 1, T0 + 0.5 * HOUR))  # nothing between T and the next hour
    assert [w for w, _ in got] == [T0 + 0.5 * HOUR, T0 + 3 * HOUR] and got[0][1] == [] and got[1][1] == [[1]]
