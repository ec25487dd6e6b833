"""Model directory round trip, live catalog additions, and clear errors on damaged directories."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from stream_rec.model.evaluate import step_histories
from stream_rec.model.gru import GRUConfig, HybridGRU
from stream_rec.model.recommender import ModelLoadError, Recommender

torch.set_num_threads(1)
N, TEXT_DIM = 30, 8


def make_rec(trained=True):
    torch.manual_seed(0)
    text = torch.cat([torch.zeros(1, TEXT_DIM), torch.nn.functional.normalize(torch.randn(N, TEXT_DIM), dim=1)])
    # id_dropout 0: a new item's ID parts start from its text neighbours (with ID dropout they stay zero)
    model = HybridGRU(GRUConfig(n_items=N, text_dim=TEXT_DIM, emb_dim=6, hidden=10, recent=4, id_dropout=0.0), text)
    with torch.no_grad():
        model.item_bias.normal_()
    return Recommender(model, [f"item-{i}" for i in range(N)], "gru-test", trained=trained, device="cpu",
                       item_texts=[f"title {i}" for i in range(N)], encoder_id="enc-1", meta={"metrics": {"x": 1}})


def scores_after(rec, rows):
    states = step_histories(rec, [np.array(rows)], [np.zeros(len(rows), np.float32)])
    return rec.score_rows(states).numpy()


def test_round_trip(tmp_path):
    rec = make_rec()
    out = rec.save(tmp_path / "m")
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["weights.safetensors", "text_vectors.safetensors", "transitions.safetensors", "config.json", "items.json",
         "VERSION"])
    assert rec.version.startswith("gru-") and (out / "VERSION").read_text().strip() == rec.version
    loaded = Recommender.load(out, device="cpu")
    assert loaded.version == rec.version and loaded.item_ids == rec.item_ids and loaded.trained
    assert loaded.encoder_id == "enc-1" and loaded.item_texts[3] == "title 3" and loaded.meta["metrics"] == {"x": 1}
    np.testing.assert_allclose(scores_after(loaded, [1, 5, 7]), scores_after(rec, [1, 5, 7]), atol=1e-6)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["state_bytes_per_user"] == {"float32": 4 * (10 + 2 * 4), "float16": 2 * (10 + 2 * 4)}  # h + recent rows


def test_newest_model_in_a_parent_directory(tmp_path):
    make_rec().save(tmp_path / "runs" / "a")
    rec = make_rec()
    rec.add_items(["extra"], np.ones((1, TEXT_DIM), np.float32))
    rec.save(tmp_path / "runs" / "b")
    assert Recommender.load(tmp_path / "runs", device="cpu").n_items == N + 1


def test_added_items_are_recommendable_and_saved(tmp_path):
    rec = make_rec()
    target = rec.model.text_vectors[5].numpy()
    rows = rec.add_items(["new-1", "item-2"], np.stack([target, target]), texts=["new one", "changed"])
    assert rows == [N + 1, 3]
    assert rec.row_of["new-1"] == N + 1 and rec.item_texts[-1] == "new one" and rec.item_texts[2] == "changed"
    scores = scores_after(rec, [1])
    assert scores.shape == (1, N + 2) and np.isfinite(scores[0, N + 1])
    loaded = Recommender.load(rec.save(tmp_path / "m"), device="cpu")
    assert loaded.n_items == N + 1
    np.testing.assert_allclose(scores_after(loaded, [1]), scores, atol=1e-6)


def damage(tmp_path, how):
    d = make_rec().save(tmp_path / "m")
    how(d)
    return d


@pytest.mark.parametrize("how, message", [
    (lambda d: (d / "VERSION").unlink(), "missing VERSION"),
    (lambda d: (d / "weights.safetensors").unlink(), "missing weights.safetensors"),
    (lambda d: (d / "config.json").write_text("{not json"), "unreadable JSON"),
    (lambda d: (d / "config.json").write_text("{}"), "no 'gru' section"),
    (lambda d: (d / "items.json").write_text(json.dumps({"item_ids": ["a", "b"]})), "items.json has 2 items"),
    (lambda d: (d / "weights.safetensors").write_bytes(b"garbage"), "unreadable safetensors"),
    (lambda d: save_file({k: v for k, v in load_file(str(d / "weights.safetensors")).items() if k != "item_bias"},
                         str(d / "weights.safetensors")), "missing \\['item_bias'\\]"),
    (lambda d: save_file({"text_vectors": torch.zeros(N + 1, 5)}, str(d / "text_vectors.safetensors")),
     "5 dims, config says 8"),
    (lambda d: (d / "config.json").write_text(json.dumps(
        json.loads((d / "config.json").read_text()) | {"gru": json.loads((d / "config.json").read_text())["gru"] | {"hidden": 11}})),
     "does not match config.json"),
])
def test_damaged_directories_fail_clearly(tmp_path, how, message):
    d = damage(tmp_path, how)
    with pytest.raises(ModelLoadError, match=message):
        Recommender.load(d, device="cpu")


def test_not_a_directory(tmp_path):
    with pytest.raises(ModelLoadError, match="not found"):
        Recommender.load(tmp_path / "nothing")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ModelLoadError, match="not a directory"):
        Recommender.load(tmp_path / "file")
    with pytest.raises(ModelLoadError, match="missing"):
        Recommender.load(tmp_path)


def test_untrained_is_not_saved_with_a_trained_version(tmp_path):
    rec = Recommender.untrained([f"i{n}" for n in range(5)], device="cpu")
    assert not rec.trained
    loaded = Recommender.load(rec.save(tmp_path / "u"), device="cpu")
    assert not loaded.trained and loaded.version == "untrained-gru-0"


@pytest.mark.parametrize("edit, message", [
    ({"hidden": "12"}, "hidden must be an integer"),
    ({"hidden": -4}, "hidden must be >= 1"),
    ({"use_text": 1}, "use_text must be true or false"),
    ({"dropout": 1.5}, "dropout must be in"),
    ({"surprise": 1}, "unknown field"),
])
def test_config_values_are_checked(tmp_path, edit, message):
    d = make_rec().save(tmp_path / "m")
    config = json.loads((d / "config.json").read_text())
    config["gru"].update(edit)
    (d / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match=message):
        Recommender.load(d, device="cpu")


def test_new_item_starts_next_to_its_text_neighbour():
    rec = make_rec()
    known = rec.model.text_vectors[7].numpy()
    [row] = rec.add_items(["twin-of-7"], known[None], neighbours=1)
    m = rec.model
    torch.testing.assert_close(m.id_embedding.weight[row], m.id_embedding.weight[7])
    torch.testing.assert_close(m.item_bias[row], m.item_bias[7])
    [row0] = rec.add_items(["no-text"])  # nothing to go on: zero ID embedding, a typical bias
    assert not m.id_embedding.weight[row0].any()
