"""The exploration bandit (stream_rec/recsys/explore.py, arms.py): its state codecs, the feedback rules
that keep it from being forged cheaply, and the lists it picks."""

import math
import struct

import numpy as np
import pytest
import torch

from stream_rec.recsys.arms import (ARM_BYTES, MAX_DECLINED, MAX_PENDING, ArmDecodeError, ArmStats, Exposure,
                                    Prior, arm_key, counted_arms, decode_arm, decode_exposure, encode_arm,
                                    encode_exposure, expose, gamma_quantile, item_key, merge_arms, posterior, resolve)
from stream_rec.recsys.explore import (EXPLORING, GRADUATED, RETIRED, ArmBook, ArmView, ExplorePolicy, arm_status,
                                       explore_topk, pooled_prior)

# rows 1..8 old items, 9..11 new; one user; log-probability-like scores
SCORES = torch.tensor([[-math.inf, 5.0, 4.0, 3.0, 2.0, 1.0, 0.5, 0.2, 0.1, 0.9, -0.5, -9.0]])


def view(status, mean, rows=(9, 10, 11), sharp: float = 1e6) -> ArmView:
    """Arms with a posterior so sharp that a Thompson sample is its mean (deterministic lists)."""
    mean = np.asarray(mean, dtype=float)
    return ArmView(np.array(rows), mean * sharp, np.full(len(rows), sharp), np.array(status, dtype=np.int8))


def topk(v, policy, scores=SCORES, k=4, seen=((),), **kw):
    return explore_topk(scores, k, [list(s) for s in seen], v, policy, np.random.default_rng(0), **kw)


# --- state: arms and exposures ----------------------------------------------------------------------
def test_arm_record_is_32_bytes_and_round_trips():
    arm = ArmStats(impressions=7, hits=2, expected=0.75, born=1.7e9, applied=12345)
    raw = encode_arm(arm)
    assert len(raw) == ARM_BYTES == 32
    back = decode_arm(raw)
    assert (back.impressions, back.hits, back.born, back.applied) == (7, 2, 1.7e9, 12345)
    assert back.expected == pytest.approx(0.75)


@pytest.mark.parametrize("raw", [b"", b"\x01" * 31, struct.pack("<BBxxIIfdq", 9, 0, 1, 0, 0.0, 0.0, -1),
                                 struct.pack("<BBxxIIfdq", 1, 0, 1, 2, 0.0, 0.0, -1),  # hits > impressions
                                 struct.pack("<BBxxIIfdq", 1, 0, 1, 0, float("nan"), 0.0, -1)])
def test_arm_decode_rejects_what_it_cannot_trust(raw):
    with pytest.raises(ArmDecodeError):
        decode_arm(raw)


def test_arms_are_keyed_per_partition_and_merge_by_sum_of_the_latest_records():
    assert arm_key(0, "x") != arm_key(1, "x")
    latest = {}  # what a changelog reader keeps: the latest record per key
    for key, arm in [(arm_key(0, "x"), ArmStats(3, 1, 0.5, 10.0)), (arm_key(1, "x"), ArmStats(2, 0, 0.25, 20.0)),
                     (arm_key(0, "x"), ArmStats(4, 2, 0.75, 10.0))]:
        latest[key] = arm
    merged = merge_arms(latest.values())
    assert (merged.impressions, merged.hits, merged.born) == (6, 2, 10.0)
    assert merged.expected == pytest.approx(1.0)
    latest[arm_key(1, "x")] = ArmStats(2, 0, 0.25, 20.0)  # a record read again (a replay) changes nothing
    assert merge_arms(latest.values()) == merged
    assert merge_arms([]) == ArmStats()


def test_exposure_round_trips_and_stays_small():
    full = Exposure(1.7e9, [item_key(f"i{n}") for n in range(MAX_PENDING)],
                    {item_key(f"d{n}"): n + 1 for n in range(MAX_DECLINED)})
    raw = encode_exposure(full)
    assert len(raw) <= 125
    back = decode_exposure(raw)
    assert back == full
    assert decode_exposure(encode_exposure(Exposure())) == Exposure()
    with pytest.raises(ArmDecodeError):
        decode_exposure(raw + b"\x00")
    with pytest.raises(ArmDecodeError):
        decode_exposure(raw[:-3])
    with pytest.raises(ArmDecodeError):  # a count beyond the bound is refused before anything is read
        decode_exposure(struct.pack("<BdBB", 1, 0.0, MAX_PENDING + 1, 0) + b"\x00" * 4 * (MAX_PENDING + 1))


def test_a_hit_needs_a_preceding_impression_to_that_user_and_counts_once():
    exposure = expose(Exposure(), ["a", "b"], ts=100.0)
    after, hit, missed = resolve(exposure, "a", 150.0, window_s=3600)
    assert hit == item_key("a") and missed == [item_key("b")]
    again, hit2, missed2 = resolve(after, "a", 160.0, window_s=3600)  # the same event again: nothing pending
    assert hit2 is None and missed2 == [] and again.declined == {item_key("b"): 1}
    _, never, _ = resolve(Exposure(), "a", 150.0, window_s=3600)  # no impression: no hit
    assert never is None
    _, late, late_missed = resolve(exposure, "a", 100.0 + 3601, window_s=3600)  # after the window: a miss
    assert late is None and item_key("a") in late_missed
    _, early, _ = resolve(exposure, "a", 99.0, window_s=3600)  # an event older than the list: no hit
    assert early is None


def test_declines_count_in_a_row_and_stay_bounded():
    exposure = Exposure()
    for n in range(3):
        exposure, _, _ = resolve(expose(exposure, ["a"], ts=n), "other", n + 1.0, window_s=10)
    assert exposure.declined[item_key("a")] == 3
    exposure, hit, _ = resolve(expose(exposure, ["a"], ts=5), "a", 6.0, window_s=10)
    assert hit == item_key("a") and item_key("a") not in exposure.declined  # taken: forgiven
    for n in range(MAX_DECLINED + 3):
        exposure, _, _ = resolve(expose(exposure, [f"x{n}"], ts=n), "other", n + 1.0, window_s=10)
    assert len(exposure.declined) == MAX_DECLINED and item_key(f"x{MAX_DECLINED + 2}") in exposure.declined
    assert item_key("x0") not in exposure.declined  # the oldest are forgotten first
    assert len(expose(Exposure(), [f"i{n}" for n in range(40)], 0.0).pending) == MAX_PENDING


# --- the posterior ------------------------------------------------------------------------------------
def test_gamma_quantile_matches_sampled_quantiles():
    rng = np.random.default_rng(0)
    for shape, rate in [(1.0, 1.0), (3.0, 10.0), (40.0, 5.0)]:
        draws = rng.gamma(shape, 1 / rate, size=200_000)
        for z, q in [(-1.64, 0.05), (1.64, 0.95)][shape < 2:]:  # the lower tail is rough at shape 1
            approx = gamma_quantile(np.array([shape]), np.array([rate]), z)[0]
            assert approx == pytest.approx(np.quantile(draws, q), rel=0.05)


def test_pooled_prior_starts_at_the_model_and_follows_all_arms():
    assert pooled_prior([], 1.0) == Prior(1.0, 1.0)
    prior = pooled_prior([ArmStats(100, 9, 19.0), ArmStats(50, 1, 1.0)], 2.0)
    assert prior.hits / prior.expected == pytest.approx(11 / 21) and prior.hits == 2.0
    shape, rate = posterior([ArmStats(10, 3, 2.0)], prior)
    assert shape[0] == 5.0 and rate[0] == pytest.approx(2.0 + 2.0 * 21 / 11)


def test_items_users_take_graduate_and_items_nobody_takes_retire():
    policy = ExplorePolicy(graduate_hits=5)
    prior = Prior(1.0, 1.0)
    arms = [ArmStats(200, 20, 10.0), ArmStats(1000, 0, 50.0), ArmStats(20, 1, 1.0), ArmStats(10, 4, 1.0)]
    shape, rate = posterior(arms, prior)
    status = arm_status(shape, rate, np.array([a.hits for a in arms]), prior, policy)
    assert status.tolist() == [GRADUATED, RETIRED, EXPLORING, EXPLORING]  # the last: too few hits yet


# --- the lists ----------------------------------------------------------------------------------------
def test_without_arms_the_list_is_the_plain_top_k():
    empty = ArmView(np.zeros(0, dtype=np.int64), np.zeros(0), np.zeros(0), np.zeros(0, dtype=np.int8))
    out = topk(empty, ExplorePolicy())
    assert out.rows == [[1, 2, 3, 4]] and out.inserted == [[]] and out.arms == [[]]


def test_arms_go_in_from_the_bottom_by_expected_hits_against_the_displaced_item():
    # appeal 3.1 on row 9 (score 0.9): 3.1 e^0.9 = 7.6 vs the displaced row 4's e^2.0 = 7.4: in; row 10
    # (-0.5) would need to beat row 3 (e^3): it does not. With appeal 3.0 row 9 (7.38) would not make it.
    v = view([GRADUATED, GRADUATED, GRADUATED], [3.1, 3.1, 3.1])
    assert topk(view([GRADUATED] * 3, [3.0] * 3), ExplorePolicy(min_gain=1.0)).rows == [[1, 2, 3, 4]]
    out = topk(v, ExplorePolicy(min_gain=1.0))
    assert out.rows == [[1, 2, 3, 9]] and out.inserted == [[9]] and out.explored == [[]]
    loose = topk(v, ExplorePolicy(min_gain=0.01))
    assert loose.rows == [[1, 2, 9, 10]] and loose.inserted == [[9, 10]]  # row 11 (-9) fails even at 0.01
    probs = torch.softmax(SCORES[0, 1:], 0)
    assert [p for _, p in loose.arms[0]] == pytest.approx([probs[8].item(), probs[9].item()], rel=1e-5)


def test_exploring_items_are_capped_by_the_slots_graduated_ones_are_not():
    scores = torch.tensor([[-math.inf, 5.0, 4.0, 3.0, 2.0, 1.0, 0.5, 0.2, 0.1, 1.9, 1.8, 1.7]])
    exploring = topk(view([EXPLORING] * 3, [1.0] * 3), ExplorePolicy(slots=1, min_gain=0.01), scores=scores)
    assert exploring.explored == [[9]] and exploring.rows[0][-1] == 9
    graduated = topk(view([GRADUATED] * 3, [1.0] * 3), ExplorePolicy(slots=1, min_gain=0.01), scores=scores)
    assert graduated.explored == [[]] and sorted(graduated.inserted[0]) == [9, 10, 11]
    off = topk(view([EXPLORING] * 3, [1.0] * 3), ExplorePolicy(slots=0, min_gain=0.01), scores=scores)
    assert off.rows == [[1, 2, 3, 4]]


def test_retired_items_are_never_put_in_and_the_plain_rankings_arms_stay():
    scores = SCORES.clone()
    scores[0, 11] = 4.5  # new row 11 makes the plain list on its own
    out = topk(view([RETIRED, GRADUATED, RETIRED], [100.0, 1e-6, 1e-6]), ExplorePolicy(min_gain=0.01), scores=scores)
    assert out.rows == [[1, 11, 2, 3]] and out.inserted == [[]]  # row 9 is retired; row 10 too weak
    assert [r for r, _ in out.arms[0]] == [11]  # an impression for the plain ranking's new item too


def test_seen_items_and_irrelevant_users_are_not_explored():
    v = view([EXPLORING] * 3, [1e3] * 3)
    seen = topk(v, ExplorePolicy(min_gain=0.0), seen=[[9, 10, 1]])
    assert 9 not in seen.rows[0] and 10 not in seen.rows[0] and 1 not in seen.rows[0]
    relevance = torch.full((1, 12), -math.inf)
    relevance[0, 9], relevance[0, 10], relevance[0, 11] = 0.9, 0.1, 0.6
    out = topk(v, ExplorePolicy(by="content", min_similarity=0.5, min_gain=0.0, slots=3), relevance=relevance)
    assert sorted(out.inserted[0]) == [9, 11]
    with pytest.raises(ValueError):
        topk(v, ExplorePolicy(by="content"))


def test_one_user_adds_at_most_max_declines_misses_to_an_item_in_a_row():
    exposure = Exposure()
    counted = []
    for n in range(6):  # "a" is in every list she gets and she never takes it; "b" she takes at once
        shown = counted_arms(exposure, ["a", f"b{n}"], max_declines=3)
        counted.append(shown)
        exposure, hit, _ = resolve(expose(exposure, shown, ts=n), f"b{n}", n + 0.5, window_s=10)
        assert hit == item_key(f"b{n}")
    assert [c.count("a") for c in counted] == [1, 1, 1, 0, 0, 0]  # three misses of "a", then no more count
    assert exposure.declined == {item_key("a"): 3}


def test_thompson_sampling_puts_the_taken_item_in_more_often():
    """Two new items equally likely under the model; users take item 9 a third of the times they see it
    and never item 10. After a few hundred lists the bandit shows 9 far more often than 10."""
    rng = np.random.default_rng(1)
    book = ArmBook(ExplorePolicy(slots=1, min_gain=0.1))
    book.register("new-9", 9, 0.0)
    book.register("new-10", 10, 0.0)
    scores = torch.tensor([[-math.inf, 5.0, 4.0, 3.0, 2.0, 1.0, 0.5, 0.2, 0.1, 1.0, 1.0, -9.0]]).repeat(16, 1)
    shown = {9: 0, 10: 0}
    for _ in range(40):
        out = explore_topk(scores, 4, [[]] * 16, book.view(1.0), book.policy, rng)
        for arms in out.arms:
            for r, p in arms:
                item = f"new-{r}"
                book.arms[item] = book.arms[item].impressed(p)
                shown[r] += 1
                if r == 9 and rng.random() < 1 / 3:
                    book.arms[item] = book.arms[item].hit()
    late = sum(1 for arms in out.arms for r, _ in arms if r == 9)
    assert shown[9] > 3 * shown[10] and late >= 12
    assert "new-9" in book.graduated


def test_arm_book_forgets_arms_past_their_age_and_policy_checks_values():
    book = ArmBook(ExplorePolicy(max_age_s=100.0))
    book.register("a", 9, born=0.0)
    book.register("b", 10, born=50.0)
    assert book.view(120.0).rows.tolist() == [10]
    with pytest.raises(ValueError):
        ExplorePolicy(by="magic")
    with pytest.raises(ValueError):
        ExplorePolicy(min_gain=-1)
