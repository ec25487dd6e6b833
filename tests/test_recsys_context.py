"""Context and interests with the real text encoder (MiniLM) on the synthetic catalog, whose
descriptions say what each theme is about ("a science fiction space adventure ...")."""

import numpy as np
import pytest
import torch

from stream_rec.recsys.context import context_boost, context_text, encode_queries
from stream_rec.recsys.interests import InterestProfiler, labels_from_texts, recency_weights
from stream_rec_devtools.synthetic import make_catalog


@pytest.fixture(scope="module")
def encoder():
    torch.set_num_threads(1)
    from stream_rec.model.encoder import shared_encoder
    return shared_encoder()


@pytest.fixture(scope="module")
def catalog_vectors(encoder):
    catalog = make_catalog(6)
    texts = [f"{it['title']}. {it['text']}" for it in catalog]
    vecs = np.zeros((len(catalog) + 1, encoder.dim), dtype=np.float32)
    vecs[1:] = encoder.encode(texts)
    return catalog, vecs


def test_space_query_moves_the_list_toward_space_items(encoder, catalog_vectors):
    catalog, vecs = catalog_vectors
    genre = [""] + [it["attributes"]["genre"] for it in catalog]
    rng = np.random.default_rng(0)
    # a cooking fan: the model's scores favour cooking, nothing favours space
    scores = rng.normal(size=(2, len(genre))).astype(np.float32)
    scores[:, 1:] += np.array([3.0 if g == "cooking" else 0.0 for g in genre[1:]], dtype=np.float32)
    scores[:, 0] = -np.inf
    queries = [context_text({"text": "space adventure"}), context_text(None)]
    q = encode_queries(encoder, queries)
    assert np.abs(q[1]).sum() == 0
    before = np.argsort(-scores, axis=1)[:, :10]
    after = np.argsort(-context_boost(scores, q, vecs, alpha=2.0), axis=1)[:, :10]
    space = lambda rows: sum(genre[r] == "space" for r in rows)  # noqa: E731
    assert space(before[0]) <= 1 and space(after[0]) >= 5
    assert genre[after[0, 0]] == "space"
    assert before[1].tolist() == after[1].tolist()  # no query: unchanged
    # alpha = 0 is the model alone
    assert np.array_equal(context_boost(scores, q, vecs, alpha=0.0), scores)


def test_interests_name_the_users_theme(encoder, catalog_vectors):
    catalog, vecs = catalog_vectors
    row_of = {it["item_id"]: r for r, it in enumerate(catalog, start=1)}
    labels = sorted({it["attributes"]["genre"] for it in catalog})
    profiler = InterestProfiler.from_encoder(encoder, labels, vecs)
    history = np.array([
        [row_of["space-00"], row_of["space-01"], row_of["space-02"]],
        [row_of["space-00"], row_of["detective-01"], row_of["detective-02"]],  # taste moved on
        [0, 0, 0],
    ])
    out = profiler.summarise(history, top=2)
    assert out[0][0][0] == "space"
    assert out[1][0][0] == "detective"
    assert out[2] == []


def test_labels_and_recency_weights():
    texts = ["Toy Story (1995). Genres: Animation, Children's, Comedy.", "Heat (1995). Genres: Action, Crime.",
             "no genres here"]
    assert labels_from_texts(texts) == ["Animation", "Children's", "Comedy", "Action", "Crime"]
    w = recency_weights(np.array([[0, 5, 6, 7]]), half_life=1.0)
    assert w.tolist() == [[0.0, 0.25, 0.5, 1.0]]


def test_genre_centroid_profile():
    from recsys_fixtures import theme_world

    catalog, vecs, row_of, themes = theme_world()
    texts = [f"{it['title']}. Genres: {it['attributes']['genre'].title()}." for it in catalog]
    profiler = InterestProfiler.from_genres(texts, vecs)
    assert set(profiler.labels) == {"Space", "Cooking", "Detective", "Nature", "Romance", "History"}
    out = profiler.summarise(np.array([[row_of["nature-01"], row_of["nature-02"], row_of["cooking-03"]]]), top=2)
    assert [label for label, _ in out[0]] == ["Nature", "Cooking"]
