import numpy as np
import pytest

from recsys_fixtures import theme_world
from stream_rec.recsys.feedback import is_negative, negative_penalty


def test_negative_signals():
    assert is_negative("dislike") and is_negative("skip")
    assert is_negative("rate", 1.0) and is_negative("rate", 2.0)
    assert not is_negative("rate", 4.0) and not is_negative("view") and not is_negative("view", 1.0)
    assert not is_negative("rate", 3.0, rating_threshold=2.0) and is_negative("rate", 3.0, rating_threshold=3.0)


def test_disliked_item_and_its_neighbours_drop_others_do_not():
    _, vecs, row_of, themes = theme_world()
    rng = np.random.default_rng(1)
    scores = rng.normal(size=(2, len(themes))).astype(np.float32)
    scores[:, 0] = -np.inf
    disliked = row_of["space-03"]
    out = negative_penalty(scores, [[disliked], []], vecs, strength=3.0, radius=0.5)
    space = [r for r, t in enumerate(themes) if t == "space" and r != disliked]
    other = [r for r, t in enumerate(themes) if t not in ("", "space")]
    drop = np.zeros(len(themes))
    drop[1:] = scores[0, 1:] - out[0, 1:]  # row 0 is padding (-inf)
    assert drop[disliked] == pytest.approx(drop.max()) and drop[disliked] > 0
    assert (drop[space] > 0.3 * drop[disliked]).all()  # neighbours pushed down too
    assert np.allclose(drop[other], 0.0)  # unrelated items untouched
    assert np.array_equal(out[1], scores[1])  # user without negatives unchanged

    def rank(s):  # 1 = best, by item row
        r = np.zeros(len(s), dtype=int)
        r[1:] = (-s[1:]).argsort().argsort() + 1
        return r

    before, after = rank(scores[0]), rank(out[0])
    assert after[disliked] >= before[disliked] and after[disliked] > len(themes) // 2
    assert after[space].mean() > before[space].mean()


def test_shape_errors():
    _, vecs, _, _ = theme_world()
    with pytest.raises(ValueError, match="negative lists"):
        negative_penalty(np.zeros((2, vecs.shape[0])), [[1]], vecs)
