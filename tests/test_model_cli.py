"""`stream-rec train / evaluate / recommend` end to end on tiny generated CSVs."""

import json

import pytest
import torch

from stream_rec.cli import main
from stream_rec.io.data import write_events_csv, write_items_csv
from stream_rec_devtools.synthetic import make_catalog, make_world

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    world = make_world(n_users=60, items_per_theme=10, events_per_user=(6, 12), seed=1,
                       themes=["space", "cooking", "detective"])
    write_events_csv(d / "events.csv", world.events)
    write_items_csv(d / "items.csv", world.items)
    # The catalog grows after training: a new theme the model has never seen.
    write_items_csv(d / "items_more.csv", world.items + make_catalog(4, ["nature"]))
    return d, world


def run_cli(*argv):
    assert main([str(a) for a in argv]) == 0


@pytest.mark.parametrize("variant", ["id-only", "hybrid"])
def test_train_evaluate_recommend(files, variant, capsys):
    d, world = files
    model = d / f"model-{variant}"
    extra = ["--no-text"] if variant == "id-only" else []
    run_cli("train", "--events-file", d / "events.csv", "--items-file", d / "items.csv", "--out", model, "--epochs", 3,
            "--hidden", 16, "--emb-dim", 8, "--batch-size", 8, "--quiet", "--device", "cpu", *extra)
    summary = json.loads(capsys.readouterr().out)
    assert summary["state_bytes_per_user"] == 4 * (16 + 2 * 16) and summary["version"].startswith("gru-")
    assert (model / "VERSION").read_text().strip() == summary["version"]

    run_cli("evaluate", "--model", model, "--events-file", d / "events.csv", "--items-file", d / "items.csv",
            "--plot", d / f"curve-{variant}.png", "--out", d / f"eval-{variant}.json", "--quiet")
    report = json.loads(capsys.readouterr().out)
    assert set(report) >= {"gru", "popularity", "markov"} and report["gru"]["users"] == 60
    assert 0 <= report["gru"]["ndcg@10"] <= report["gru"]["hr@10"] <= 1
    assert (d / f"curve-{variant}.png").stat().st_size > 1000
    assert json.loads((d / f"eval-{variant}.json").read_text())["markov"] == report["markov"]

    out = d / f"recs-{variant}.jsonl"
    run_cli("recommend", "--model", model, "--items-file", d / "items_more.csv", "--events-file", d / "events.csv",
            "--top-k", 20, "--out", out, "--quiet")
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == 60
    seen = {}
    for e in world.events:
        seen.setdefault(e["user_id"], set()).add(e["item_id"])
    recommended = set()
    for line in lines:
        assert len(line["items"]) == 20 and len(set(line["items"])) == 20
        assert not set(line["items"]) & seen[line["user_id"]]
        recommended |= set(line["items"])
    if variant == "hybrid":  # new items reach the lists through their text vectors
        assert any(i.startswith("nature-") for i in recommended)


def test_train_and_recommend_read_the_jsonl_the_stack_produces(files, tmp_path, capsys):
    """train / evaluate / recommend on the events as the events topic carries them (JSONL) and the catalog as
    `stream-rec produce --items-out-file` writes it."""
    _, world = files
    (tmp_path / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in world.events))
    (tmp_path / "catalog.jsonl").write_text("".join(json.dumps(i) + "\n" for i in world.items))
    model = tmp_path / "model"
    run_cli("train", "--events-file", tmp_path / "events.jsonl", "--items-file", tmp_path / "catalog.jsonl", "--out", model,
            "--epochs", 1, "--hidden", 16, "--emb-dim", 8, "--quiet", "--device", "cpu", "--no-text")
    assert json.loads(capsys.readouterr().out)["version"].startswith("gru-")
    assert json.loads((model / "items.json").read_text())["item_ids"] == [i["item_id"] for i in world.items]
    run_cli("evaluate", "--model", model, "--events-file", tmp_path / "events.jsonl", "--items-file",
            tmp_path / "catalog.jsonl", "--no-baselines", "--quiet", "--device", "cpu", "--plot", tmp_path / "c.png")
    report = json.loads(capsys.readouterr().out)
    assert report["data"]["users"] == len({e["user_id"] for e in world.events}) and "model" in report
    run_cli("recommend", "--model", model, "--events-file", tmp_path / "events.jsonl", "--top-k", 5, "--quiet",
            "--out", tmp_path / "recs.jsonl")
    users = {json.loads(line)["user_id"] for line in (tmp_path / "recs.jsonl").read_text().splitlines()}
    assert users == {e["user_id"] for e in world.events}


def test_clear_errors(files, tmp_path, capsys):
    """A model directory that does not load, or a file in the wrong format: one line, exit code 1."""
    d, _ = files
    assert main(["evaluate", "--model", str(tmp_path / "nope"), "--events-file", str(d / "events.csv"),
                 "--items-file", str(d / "items.csv")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "model directory not found" in err and err.count("\n") == 1
    assert main(["train", "--events-file", str(d / "items.csv"), "--items-file", str(d / "items.csv"),
                 "--out", str(tmp_path / "m")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "needs columns user_id,item_id,timestamp" in err and err.count("\n") == 1


def test_help_explains_every_flag(capsys):
    for command in ("train", "evaluate", "recommend"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        text = capsys.readouterr().out
        assert "--events-file" in text and "--model" in text or command == "train"


def test_train_warns_when_the_model_does_not_beat_the_baselines(files, tmp_path, capsys):
    """A model that learnt nothing (one epoch at a tiny learning rate, no transition prior) loses to popularity and Markov on
    validation: `stream-rec train` says so in its log and in its summary, and still writes the model."""
    d, _ = files
    model = tmp_path / "weak"
    run_cli("train", "--events-file", d / "events.csv", "--items-file", d / "items.csv", "--out", model,
            "--epochs", 1, "--lr", 1e-6, "--hidden", 4, "--emb-dim", 2, "--quiet", "--device", "cpu", "--no-text",
            "--no-prior")
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    assert summary["beats_baselines"] is False and len(summary["warnings"]) == 2
    assert summary["valid"]["ndcg@10"] < min(summary["valid_baselines"].values())
    warned = [line for line in captured.err.splitlines() if "WARNING" in line and "does not beat" in line]
    assert len(warned) == 2 and any("markov" in line for line in warned), captured.err
    assert (model / "VERSION").exists()
    assert json.loads((model / "config.json").read_text())["warnings"] == summary["warnings"]


def test_train_summary_says_when_the_model_beats_the_baselines(files, tmp_path, capsys):
    d, _ = files
    run_cli("train", "--events-file", d / "events.csv", "--items-file", d / "items.csv", "--out", tmp_path / "m",
            "--epochs", 8, "--hidden", 32, "--emb-dim", 16, "--batch-size", 8, "--quiet", "--device", "cpu", "--no-text")
    summary = json.loads(capsys.readouterr().out)
    assert summary["beats_baselines"] is (summary["valid"]["ndcg@10"] > max(summary["valid_baselines"].values()))
