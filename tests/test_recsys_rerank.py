import numpy as np
import pytest

from recsys_fixtures import theme_world
from stream_rec.recsys.rerank import (ExposureWindow, catalog_coverage, intra_list_diversity, mmr_rerank_batch,
                                      mmr_rerank_scores)


def _scores_favouring(theme, theme_of_row, seed=0):
    """Scores where every item of ``theme`` beats every other item (a one-note list)."""
    rng = np.random.default_rng(seed)
    s = rng.normal(size=len(theme_of_row)).astype(np.float32)
    s += np.array([5.0 if t == theme else 0.0 for t in theme_of_row], dtype=np.float32)
    s[0] = -np.inf
    return s


def test_lambda_one_is_pure_relevance_order():
    _, vecs, _, themes = theme_world()
    s = _scores_favouring("space", themes)[None, :]
    out = mmr_rerank_scores(s, vecs, k=10, lam=1.0)
    expected = np.argsort(-s[0])[:10]
    assert out[0].tolist() == expected.tolist()


def test_lower_lambda_raises_diversity_and_keeps_the_top_item():
    _, vecs, _, themes = theme_world()
    s = np.stack([_scores_favouring(t, themes, seed=i) for i, t in enumerate(["space", "cooking", "nature"])])
    plain = mmr_rerank_scores(s, vecs, k=6, lam=1.0)
    diverse = mmr_rerank_scores(s, vecs, k=6, lam=0.4)
    assert (plain[:, 0] == diverse[:, 0]).all()  # the best item stays first
    assert intra_list_diversity(diverse, vecs) > intra_list_diversity(plain, vecs) + 0.2
    assert len({themes[r] for r in diverse[0]}) > len({themes[r] for r in plain[0]})


def test_one_lambda_per_user_matches_each_users_own_call():
    """Per-request diversity: lam [B] re-ranks each row as a call with that row's lambda would."""
    _, vecs, _, themes = theme_world()
    s = np.stack([_scores_favouring(t, themes, seed=i) for i, t in enumerate(["space", "cooking", "nature"])])
    lams = np.array([1.0, 0.4, 0.0])
    out = mmr_rerank_scores(s, vecs, k=6, lam=lams)
    for b, lam in enumerate(lams):
        assert out[b].tolist() == mmr_rerank_scores(s[b:b + 1], vecs, k=6, lam=float(lam))[0].tolist()
    with pytest.raises(ValueError):
        mmr_rerank_scores(s, vecs, k=6, lam=np.array([1.0, 1.5, 0.2]))
    with pytest.raises(ValueError):
        mmr_rerank_scores(s, vecs, k=6, lam=np.array([1.0, 0.5]))  # not one per user


def test_excluded_and_padding_never_recommended():
    _, vecs, _, themes = theme_world()
    s = _scores_favouring("space", themes)[None, :]
    top = int(np.nanargmax(np.where(np.isfinite(s[0]), s[0], -np.inf)))
    out = mmr_rerank_scores(s, vecs, k=10, lam=0.6, exclude_rows=[[top]])
    assert top not in out[0] and 0 not in out[0]
    # fewer eligible candidates than k: padded with 0, no repeats
    rows = mmr_rerank_batch(np.array([[3, 5, 0]]), np.array([[1.0, 2.0, -np.inf]]), vecs, k=4, lam=0.5)
    assert rows[0].tolist() == [5, 3, 0, 0]


def test_exposure_cap_demotes_over_recommended_items():
    _, vecs, _, themes = theme_world()
    s = _scores_favouring("space", themes)[None, :]
    window = ExposureWindow(window=5, cap=2)
    first = mmr_rerank_scores(s, vecs, k=5, lam=1.0, exposure=window)[0].tolist()
    for _ in range(2):
        mmr_rerank_scores(s, vecs, k=5, lam=1.0, exposure=window)
    assert window.count(first[0]) == 3
    capped = mmr_rerank_scores(s, vecs, k=5, lam=1.0, exposure=window)[0].tolist()
    assert not set(capped) & set(first)  # all five were shown 3 > 2 times: demoted behind others
    # the window slides: after 5 more lists without them, the counts expire
    for _ in range(5):
        window.record([[1, 2]])
    assert window.count(first[0]) == 0


def test_metrics_and_bad_input():
    _, vecs, _, themes = theme_world()
    same = [[1, 2, 3]]  # one theme
    mixed = [[1, 9, 17]]  # three themes
    assert intra_list_diversity(mixed, vecs) > intra_list_diversity(same, vecs)
    assert catalog_coverage([[1, 2], [2, 3, 0]], n_items=6) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="lambda"):
        mmr_rerank_batch(np.array([[1]]), np.array([[1.0]]), vecs, k=1, lam=1.5)


def test_vector_helpers():
    from stream_rec.recsys.vectors import centred, pad_rows, score_scale, unit_rows

    v = np.array([[0, 0], [1, 1], [3, 1]], dtype=np.float32)
    c = centred(v)
    assert c[0].tolist() == [0, 0] and np.allclose(c[1:].mean(axis=0), 0)
    assert np.allclose(np.linalg.norm(unit_rows(v[1:]), axis=1), 1) and unit_rows(v)[0].tolist() == [0, 0]
    s = np.array([[-np.inf, 1.0, 3.0], [-np.inf, 2.0, 2.0]])
    assert score_scale(s).ravel().tolist() == [1.0, 1.0]  # std 1; constant row falls back to 1
    assert pad_rows([[1, 2], []]).tolist() == [[1, 2], [0, 0]]
