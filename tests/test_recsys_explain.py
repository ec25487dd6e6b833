import numpy as np

from recsys_fixtures import theme_world
from stream_rec.recsys.explain import NO_EVIDENCE_REASON, best_evidence, explain_batch
from stream_rec.recsys.vectors import unit_rows


def test_reason_names_the_history_item_of_the_same_theme():
    catalog, vecs, row_of, themes = theme_world()
    titles = [""] + [f"{it['title']} ({it['attributes']['genre']})" for it in catalog]
    history = np.array([[row_of["cooking-01"], row_of["space-02"], row_of["nature-03"]]])
    recs = np.array([[row_of["space-03"], row_of["nature-04"], row_of["cooking-05"]]])
    reasons = explain_batch(recs, history, vecs, titles)
    assert reasons == [[f"because you watched {titles[row_of['space-02']]}",
                        f"because you watched {titles[row_of['nature-03']]}",
                        f"because you watched {titles[row_of['cooking-01']]}"]]


def test_query_wins_when_closer_and_empty_history_has_a_fallback():
    catalog, vecs, row_of, themes = theme_world()
    titles = [""] + [it["title"] for it in catalog]
    history = np.array([[0, 0, row_of["cooking-01"]], [0, 0, 0]])  # padded on the left
    recs = np.array([[row_of["space-03"], row_of["cooking-02"]], [row_of["space-03"], row_of["nature-01"]]])
    query = np.zeros((2, vecs.shape[1]), dtype=np.float32)
    query[0] = vecs[row_of["space-00"]]  # user 0 searched something spacey
    source, sim = best_evidence(recs, history, vecs, query_vectors=query)
    assert source[0].tolist() == [3, 2] and source[1].tolist() == [-1, -1]
    reasons = explain_batch(recs, history, vecs, titles, query_vectors=query, queries=["space adventure", None])
    assert reasons[0][0] == "because you searched 'space adventure'"
    assert reasons[0][1].startswith("because you watched")
    assert reasons[1] == [NO_EVIDENCE_REASON, NO_EVIDENCE_REASON]


def test_model_space_is_averaged_in():
    catalog, vecs, row_of, themes = theme_world()
    history = np.array([[row_of["cooking-01"], row_of["space-02"]]])
    recs = np.array([[row_of["detective-00"]]])
    model = np.zeros_like(vecs)
    model[row_of["detective-00"], 0] = model[row_of["cooking-01"], 0] = 1.0  # the model pairs them
    source, _ = best_evidence(recs, history, vecs, model_vectors=model)
    assert source[0, 0] == 0


def test_unit_rows_given_skip_normalising_with_the_same_answer():
    catalog, vecs, row_of, themes = theme_world()
    rng = np.random.default_rng(0)
    scaled = vecs * rng.uniform(0.1, 10.0, size=(len(vecs), 1)).astype(np.float32)  # norms far from 1
    history = rng.integers(1, len(vecs), size=(4, 6))
    recs = rng.integers(1, len(vecs), size=(4, 3))
    source, sim = best_evidence(recs, history, scaled)
    source_unit, sim_unit = best_evidence(recs, history, unit_rows(scaled), unit=True)
    assert source_unit.tolist() == source.tolist()
    np.testing.assert_allclose(sim_unit, sim, atol=1e-5)
    # unit=True trusts the caller: un-normalised rows then change the answer (the flag is not a no-op)
    assert not np.allclose(best_evidence(recs, history, scaled, unit=True)[1], sim)
