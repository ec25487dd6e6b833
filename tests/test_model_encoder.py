"""The text encoder loads from its PyPI package (no hub), gives similar vectors to similar texts,
caches on disk; and the hybrid model learns with it."""

import numpy as np
import pytest
import torch

from stream_rec.model.encoder import EmbeddingCache, TextEncoder, text_key

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def encoder(tmp_path_factory):
    # Default cache dir: the 90 MB model is extracted once per machine, not once per test run.
    return TextEncoder(device="cpu")


def test_loads_from_package_and_similar_texts_are_close(encoder):
    assert encoder.dim == 384 and "all-MiniLM-L6-v2" in encoder.encoder_id
    v = encoder.encode(["a science fiction adventure among the stars",
                        "space opera: rockets, planets and aliens",
                        "a cooking show about pasta and bread", ""])
    assert v.shape == (4, 384) and v.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v[:3], axis=1), 1.0, atol=1e-5)
    assert not v[3].any()  # empty text -> zero vector
    assert v[0] @ v[1] > v[0] @ v[2] + 0.2


def test_batching_does_not_change_vectors(encoder):
    texts = ["short", "a much longer text about detectives solving a murder in Paris", "medium length text"]
    together = encoder.encode(texts)
    alone = np.concatenate([encoder.encode([t]) for t in texts])
    np.testing.assert_allclose(together, alone, atol=1e-5)


def test_disk_cache(encoder, tmp_path):
    enc_cache, encoder.cache = encoder.cache, EmbeddingCache(tmp_path / "emb")
    try:
        first = encoder.encode_cached(["alpha", "beta", "alpha"], progress=False)
        assert len(list((tmp_path / "emb").glob("*.npz"))) == 1
        fresh = EmbeddingCache(tmp_path / "emb")  # another process would see the same vectors
        np.testing.assert_array_equal(fresh.get([text_key("beta")])[0], first[1])
        np.testing.assert_array_equal(first[0], first[2])
        again = encoder.encode_cached(["beta", "alpha"], progress=False)
        np.testing.assert_array_equal(again, first[[1, 0]])
        assert len(list((tmp_path / "emb").glob("*.npz"))) == 1  # nothing new written
    finally:
        encoder.cache = enc_cache


def test_fast_tokenize_matches_the_transformers_tokenizer(encoder):
    """``tokenize`` goes straight to the Rust tokenizer (5x faster); the ids and masks must be the ones
    the transformers wrapper gives, padding and truncation included."""
    texts = ["Toy Story (1995) Animation|Children's|Comedy", "a", "word " * 400, "Amélie (2001) Comedy|Romance"]
    ids, mask = encoder.tokenize(texts)
    ref = encoder.tokenizer(texts, padding=True, truncation=True, max_length=encoder.max_length, return_tensors="pt")
    assert ids.shape[1] == encoder.max_length  # the long text was truncated, the others padded to it
    assert torch.equal(ids, ref["input_ids"]) and torch.equal(mask, ref["attention_mask"])
