"""The freshness policy chosen at training time (recsys/freshchoice.py), stored with the model, applied
by the worker unless settings give one."""

import json
import time

import numpy as np
import pytest
import torch

from stream_rec.recsys.freshchoice import ChoiceParams, hidden_rows, hide_ids, pick
from stream_rec.recsys.freshness import FreshnessPolicy, model_policy

torch.set_num_threads(1)


def grid_entry(slots, new_hr, warm_cost, by="content"):
    return {"policy": FreshnessPolicy(slots=slots, by=by, min_similarity=0.5), "new_hr@10": new_hr, "warm_cost": warm_cost}


def test_pick_takes_the_most_new_item_hits_within_the_warm_cost_and_declines_when_text_carries_nothing():
    params = ChoiceParams(max_warm_cost=0.02, min_new_hr=0.1)
    grid = [grid_entry(1, 0.20, 0.005), grid_entry(2, 0.30, 0.015), grid_entry(3, 0.45, 0.04)]
    policy, why = pick(grid, params)
    assert policy.slots == 2 and why.startswith("chosen") and "0.300" in why  # slots 3: too costly
    policy, why = pick([grid_entry(1, 0.02, 0.001), grid_entry(3, 0.05, 0.01)], params)
    assert policy.slots == 0 and "do not carry relevance" in why
    policy, why = pick([grid_entry(1, 0.106, 0.0137), grid_entry(2, 0.09, 0.019)], params)  # ml-1m-half-new's
    assert policy.slots == 0 and "worth its warm cost" in why  # 0.08 per 1% of warm NDCG@10
    assert pick([grid_entry(1, 0.106, 0.0137), grid_entry(1, 0.12, 0.0)], params)[0].slots == 1  # free: taken
    policy, why = pick([grid_entry(1, 0.5, 0.03)], params)
    assert policy.slots == 0 and "costs the warm users" in why
    assert pick([], params)[0].slots == 0


def tiny_recommender(n_items=30, recent=4, prior=True):
    from stream_rec.model.gru import GRUConfig, HybridGRU
    from stream_rec.model.recommender import Recommender
    from stream_rec.model.transitions import build_tables

    torch.manual_seed(0)
    text = torch.cat([torch.zeros(1, 8), torch.nn.functional.normalize(torch.randn(n_items, 8), dim=1)])
    config = GRUConfig(n_items=n_items, text_dim=8, emb_dim=8, hidden=8, recent=recent, prior=prior, prior_recent=0)
    model = HybridGRU(config, text)
    seqs = [np.array([(u + t) % n_items + 1 for t in range(8)]) for u in range(20)]
    if prior:
        model.prior.set_tables(*build_tables(seqs, n_items + 1, text, config.prior_neighbours))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return Recommender(model, [f"i{n}" for n in range(n_items)], "v", trained=True, device="cpu"), seqs


def test_hidden_items_are_scored_from_their_text_alone_and_the_model_is_untouched():
    rec, seqs = tiny_recommender()
    rows = hidden_rows(seqs, rec.n_items, share=0.2, seed=1)
    assert len(rows) == round(0.2 * 27) and len(set(rows.tolist())) == len(rows)  # 27 items occur in the sequences
    assert rows.min() >= 1 and rows.max() <= 27
    before = rec.score_rows(rec.init_state(2)).clone()
    twin = hide_ids(rec, rows, seqs)
    idx = torch.as_tensor(rows)
    assert twin.model.id_embedding.weight[idx].abs().sum() == 0 and twin.model.next_embedding.weight[idx].abs().sum() == 0
    assert twin.model.item_bias[idx].abs().sum() == 0 and rec.model.id_embedding.weight[idx].abs().sum() > 0
    counts, _ = twin.model.prior.tables()
    assert not set(counts.indices.tolist()) & set(rows.tolist())  # no transition into a hidden item
    assert all(counts.indptr[r + 1] == counts.indptr[r] for r in rows)  # nor out of one
    for r in rows:  # and none made up between a hidden item's neighbours (the sequences step by +1)
        before_r = counts.indices[counts.indptr[r - 1]:counts.indptr[r]] if r > 1 else []
        assert r + 1 not in set(np.asarray(before_r).tolist())
    torch.testing.assert_close(rec.score_rows(rec.init_state(2)), before)  # the served model is unchanged
    state = rec.step(rec.init_state(1), [int(rows[0])], [0.0])
    hidden, known = twin.score_rows(state)[0, idx], rec.score_rows(state)[0, idx]
    assert torch.isfinite(hidden).all() and (hidden - known).abs().min() > 1e-4  # scored without their IDs


def test_the_worker_applies_the_models_policy_unless_settings_give_one(tmp_path):
    from stream_rec.model.artifacts import ModelLoadError
    from stream_rec.model.recommender import Recommender
    from stream_rec.pipeline import Incoming, PipelineConfig, process_batch, states_in
    from stream_rec.settings import Settings

    rec, _ = tiny_recommender(prior=False)
    rec.meta["freshness"] = {"slots": 1, "by": "model", "min_ratio": 0.0, "max_age_s": 86400.0, "why": "test"}
    rec.save(tmp_path / "m")
    model = Recommender.load(tmp_path / "m", device="cpu")
    assert model_policy(model) == FreshnessPolicy(slots=1, by="model", min_ratio=0.0, max_age_s=86400.0)
    now = 1_750_000_000.0
    model.add_items(["new"], np.zeros((1, 8), np.float32) + 0.3, now=now - 60)
    with torch.no_grad():
        model.model.item_bias[model.row_of["new"]] = -50.0  # only a policy lists it
    model.refresh_item_table()
    raw = json.dumps({"user_id": "u", "item_id": "i1", "event_type": "view", "timestamp": now - 5}).encode()

    def listed(settings):
        out = process_batch([Incoming(raw, b"u", "events", 0, 0, time.time())], states_in({}), model,
                            config=PipelineConfig.from_settings(settings), now=lambda: now)
        return [i["item_id"] for i in out.recommendations[0]["items"]]

    assert Settings().fresh_slots == -1 and PipelineConfig.from_settings(Settings()).freshness is None
    assert "new" in listed(Settings())  # the model's policy
    assert "new" not in listed(Settings(fresh_slots=0))  # settings override it: off
    model.meta.pop("freshness")
    assert "new" not in listed(Settings())  # a model without a policy: none

    config = json.loads((tmp_path / "m" / "config.json").read_text())
    for bad in ({"slots": -1}, {"slots": "3"}, {"slots": 1, "by": "random"}, {"slots": 1, "min_similarity": 7.0}, [1]):
        (tmp_path / "m" / "config.json").write_text(json.dumps(config | {"freshness": bad}))
        with pytest.raises(ModelLoadError, match="freshness"):
            Recommender.load(tmp_path / "m", device="cpu")


def test_train_writes_its_policy_and_recommend_and_evaluate_apply_it(tmp_path, capsys, monkeypatch):
    """`stream-rec train` on a catalogue with items nobody took yet: they stay out of the trained catalogue,
    the policy it chose is in config.json and its summary (with why), and `recommend` / `evaluate` give those
    items slots by it -- unless STREAM_REC_FRESH_SLOTS says otherwise."""
    from stream_rec.cli import main
    from stream_rec.io.data import write_events_csv, write_items_csv
    from stream_rec_devtools.synthetic import make_catalog, make_world

    world = make_world(n_users=60, items_per_theme=10, events_per_user=(6, 12), seed=1,
                       themes=["space", "cooking", "detective"])
    write_events_csv(tmp_path / "events.csv", world.events)
    write_items_csv(tmp_path / "items.csv", world.items + make_catalog(4, ["nature"]))  # never taken
    model = tmp_path / "m"
    # bounds that accept any policy with slots: the choice itself is tested above (pick)
    assert main(["train", "--events-file", str(tmp_path / "events.csv"), "--items-file", str(tmp_path / "items.csv"),
                 "--out", str(model), "--epochs", "2", "--hidden", "16", "--emb-dim", "8", "--batch-size", "8",
                 "--quiet", "--device", "cpu", "--fresh-max-warm-cost", "1", "--fresh-min-new-hr", "0",
                 "--fresh-hide-share", "0.3"]) == 0
    summary = json.loads(capsys.readouterr().out)
    stored = json.loads((model / "config.json").read_text())["freshness"]
    assert summary["freshness"]["slots"] >= 1 and summary["freshness"]["why"].startswith("chosen on validation")
    assert stored["slots"] == summary["freshness"]["slots"] and len(stored["validation"]["grid"]) > 10
    assert not any(i.startswith("nature-") for i in json.loads((model / "items.json").read_text())["item_ids"])

    def nature_lists(fresh_slots):
        monkeypatch.setenv("STREAM_REC_FRESH_SLOTS", str(fresh_slots))
        out = tmp_path / f"recs{fresh_slots}.jsonl"
        assert main(["recommend", "--model", str(model), "--items-file", str(tmp_path / "items.csv"), "--events-file",
                     str(tmp_path / "events.csv"), "--top-k", "5", "--out", str(out), "--quiet"]) == 0
        lines = [json.loads(line) for line in out.read_text().splitlines()]
        assert len(lines) == 60 and all(len(line["items"]) == 5 for line in lines)
        return sum(any(i.startswith("nature-") for i in line["items"]) for line in lines)

    assert nature_lists(-1) > nature_lists(0)  # the model's policy; settings override it (off)
    monkeypatch.setenv("STREAM_REC_FRESH_SLOTS", "-1")
    assert main(["evaluate", "--model", str(model), "--events-file", str(tmp_path / "events.csv"), "--items-file",
                 str(tmp_path / "items.csv"), "--no-baselines", "--quiet", "--plot", str(tmp_path / "c.png")]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["freshness"]["slots"] == stored["slots"] and report["freshness"]["fresh_items"] == 4
    assert report["gru"]["users"] == report["gru_plain"]["users"] == 60
