"""`stream-rec finetune` and `stream-rec interests` end to end on a tiny synthetic model."""

import json

import pytest
import torch

from stream_rec.cli import main
from stream_rec.io.data import write_events_csv, write_items_csv
from stream_rec.model.recommender import Recommender
from stream_rec_devtools.synthetic import THEMES, make_world


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    torch.set_num_threads(1)
    d = tmp_path_factory.mktemp("cli")
    world = make_world(n_users=60, events_per_user=(6, 10), items_per_theme=4, seed=3)
    write_events_csv(d / "events.csv", world.events)
    write_items_csv(d / "items.csv", world.items)
    recent = make_world(n_users=40, events_per_user=(4, 8), items_per_theme=4, seed=9, start_ts=1_800_000_000.0)
    write_events_csv(d / "recent.csv", [dict(e, user_id="r" + e["user_id"]) for e in recent.events])
    assert main(["train", "--events-file", str(d / "events.csv"), "--items-file", str(d / "items.csv"), "--text-columns", "text",
                 "--out", str(d / "m1"), "--hidden", "16", "--emb-dim", "8", "--epochs", "2", "--quiet"]) == 0
    return d


def test_finetune_writes_a_loadable_new_version(model_dir, capsys):
    d = model_dir
    capsys.readouterr()
    assert main(["finetune", "--model", str(d / "m1"), "--events-file", str(d / "recent.csv"), "--out", str(d / "m2"),
                 "--epochs", "2", "--quiet"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["users"] > 0 and [e["epoch"] for e in out["epochs"]] == [0, 1, 2]
    old, new = Recommender.load(d / "m1", device="cpu"), Recommender.load(d / "m2", device="cpu")
    assert new.meta["finetune"]["from_version"] == old.version
    assert new.item_ids == old.item_ids


def test_finetune_bad_input_is_a_clear_error(model_dir, tmp_path):
    (tmp_path / "bad.csv").write_text("user,item\n1,2\n")
    with pytest.raises(SystemExit, match="user_id,item_id,timestamp"):
        main(["finetune", "--model", str(model_dir / "m1"), "--events-file", str(tmp_path / "bad.csv"),
              "--out", str(tmp_path / "x")])


def test_interests_cli(model_dir, capsys):
    d = model_dir
    events = [line.split(",") for line in (d / "events.csv").read_text().splitlines()[1:]]
    by_user = {}
    for e in events:
        by_user.setdefault(e[0], []).append(e[1].split("-")[0])
    user, themes = next((u, t) for u, t in by_user.items() if len(set(t[-3:])) == 1)  # last 3 of one theme
    theme = themes[-1]
    capsys.readouterr()
    assert main(["interests", "--model", str(d / "m1"), "--events-file", str(d / "events.csv"), "--user", user,
                 "--labels", ",".join(THEMES), "--recent", "3", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["interests"] and out["interests"][0]["label"] == theme
    with pytest.raises(SystemExit, match="no events"):
        main(["interests", "--model", str(d / "m1"), "--events-file", str(d / "events.csv"), "--user", "nobody",
              "--labels", "space"])


def test_drift_alarm_triggers_a_background_finetune_into_the_models_dir(model_dir, tmp_path):
    from stream_rec.io.data import read_events
    from stream_rec.learning.drift import DriftAlarm
    from stream_rec.learning.finetune import DriftFinetuner, FinetuneParams

    recent = [{"user_id": e.user_id, "item_id": e.item_id, "timestamp": e.timestamp}
              for e in read_events(model_dir / "recent.csv")]
    tuner = DriftFinetuner(tmp_path / "models", lambda: model_dir / "m1", lambda: recent,
                           FinetuneParams(epochs=1, device="cpu"), cooldown_s=60)
    (tmp_path / "models").mkdir()
    assert tuner(DriftAlarm(0.5, 0.2, 100)) is True
    assert tuner(DriftAlarm(0.5, 0.2, 101)) is False  # running / cooling down
    tuner.thread.join(timeout=120)
    (out, version), = tuner.results
    assert Recommender.load(tmp_path / "models", device="cpu").version == version  # newest model dir
    assert not list((tmp_path / "models").glob(".*"))
