"""Hyper-parameter sweep of the GRU on the validation split only (never the test events).

    python benchmarks/sweep.py --data-dir PATH --dataset ml-1m-half --parallel 6 --out runs/sweep.json

Each configuration (``--grid`` JSON: a list of objects with model fields ``hidden``, ``emb_dim``,
``dropout``, ``id_dropout``, ``use_text`` and training fields ``lr``, ``batch_size``, ``max_len``,
``weight_decay``) is trained with early stopping on each user's second-to-last event, in parallel
processes (several fit on one GPU). It prints, per configuration, the best validation NDCG@10, the
epoch it came at, and the validation NDCG@10 reached by epochs 10/20/30/40 -- what a CPU run with a
20-minute budget can reach depends on how fast a configuration converges, not only on where it ends.
The test events are held out of everything here; `benchmarks/quality.py` reports them for the chosen
configuration.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MODEL_FIELDS = ("hidden", "emb_dim", "dropout", "id_dropout", "use_text", "use_ids", "use_time_gap")
TRAIN_FIELDS = ("lr", "batch_size", "max_len", "weight_decay", "epochs", "patience")



def base_config() -> dict:
    """`stream-rec train`'s defaults (GRUConfig / TrainParams); each grid entry is applied on top.
    (The first sweep, in runs/, ran when the default window was 200.)"""
    from stream_rec.model.gru import GRUConfig
    from stream_rec.model.train import TrainParams

    model, train = GRUConfig(n_items=0, text_dim=0), TrainParams()
    return {k: getattr(model, k) for k in ("hidden", "emb_dim", "dropout")} | {
        k: getattr(train, k) for k in ("lr", "batch_size", "max_len")}

DEFAULT_GRID = [
    {"name": "defaults"},
    {"name": "drop .3", "dropout": 0.3},
    {"name": "drop .4", "dropout": 0.4},
    {"name": "emb 128 drop .3", "emb_dim": 128, "dropout": 0.3},
    {"name": "h256 emb128 drop .4", "hidden": 256, "emb_dim": 128, "dropout": 0.4},
    {"name": "bs 64", "batch_size": 64},
    {"name": "window 200", "max_len": 200},
    {"name": "window 200 h256 emb128 drop .4", "max_len": 200, "hidden": 256, "emb_dim": 128, "dropout": 0.4},
    {"name": "lr 1e-3", "lr": 1e-3},
    {"name": "ID-only", "use_text": False},
]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", required=True, help="directory holding the data set folder")
    p.add_argument("--dataset", default="ml-1m-half", help="folder name under --data-dir")
    p.add_argument("--grid", default="", help="JSON file with a list of configurations (default: a built-in grid)")
    p.add_argument("--parallel", type=int, default=2, help="configurations trained at once")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads per process")
    p.add_argument("--epochs", type=int, default=40, help="maximum epochs per configuration")
    p.add_argument("--patience", type=int, default=5, help="epochs without validation gain before stopping")
    p.add_argument("--time-budget", type=float, default=0.0, help="wall seconds per configuration (0 = none)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--out", default="", help="write all histories as JSON here")
    return p.parse_args(argv)


def train_one(config: dict, data_path: str, args: dict) -> dict:
    """Train one configuration (in a worker process) and return its validation history."""
    import torch

    from stream_rec.io.data import leave_one_out, read_events, read_items, sequences
    from stream_rec.model.encoder import shared_encoder
    from stream_rec.model.train import TrainParams, train_recommender
    from stream_rec.settings import Settings

    torch.set_num_threads(args["threads"])
    config = base_config() | config
    split = leave_one_out(sequences(read_events(data_path)))
    items = read_items(data_path)
    model_kw = {k: config[k] for k in MODEL_FIELDS if k in config}
    train_kw = {"epochs": args["epochs"], "patience": args["patience"]} | {k: config[k] for k in TRAIN_FIELDS if k in config}
    params = TrainParams(seed=0, device=args["device"], threads=args["threads"],
                         time_budget_s=args["time_budget"], **train_kw)
    encoder = shared_encoder(Settings.from_env().cache_dir, args["device"]) if model_kw.get("use_text", True) else None
    t0 = time.perf_counter()
    _, history = train_recommender(split, items, model_kw, params, encoder=encoder, progress=False)
    return {"config": config, "seconds": round(time.perf_counter() - t0, 1), "best_epoch": history.best_epoch,
            "best_valid": history.best_valid,
            "curve": [round(e.get("valid_ndcg@10", 0.0), 4) for e in history.epochs],
            "epoch_seconds": [round(e["seconds"], 2) for e in history.epochs]}


def reached_by(curve: list[float], epoch: int) -> str:
    return f"{max(curve[:epoch]):.4f}" if curve else "-"


def main(argv=None) -> int:
    import multiprocessing

    args = parse_args(argv)
    grid = json.loads(Path(args.grid).read_text()) if args.grid else DEFAULT_GRID
    data_path = str(Path(args.data_dir) / args.dataset)
    shared = {"threads": args.threads, "epochs": args.epochs, "patience": args.patience,
              "time_budget": args.time_budget, "device": args.device}
    results = []
    # spawn: CUDA cannot be used in forked children.
    with ProcessPoolExecutor(args.parallel, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(train_one, c, data_path, shared): c for c in grid}
        for n, fut in enumerate(as_completed(futures), 1):
            try:
                r = fut.result()
            except Exception as exc:  # one broken configuration must not lose the others
                r = {"config": futures[fut], "error": repr(exc)}
            results.append(r)
            print(f"[{n}/{len(grid)}] {json.dumps(r)}", flush=True)
            if args.out:
                Path(args.out).write_text(json.dumps(results, indent=1))
    print(f"\n### validation NDCG@10 on {args.dataset} (test split untouched)")
    print("| configuration | best | best epoch | by 10 | by 20 | by 30 | by 40 | s/epoch |")
    print("|---|---|---|---|---|---|---|---|")
    for r in sorted(results, key=lambda r: -r.get("best_valid", {}).get("ndcg@10", -1)):
        if "error" in r:
            print(f"| {r['config'].get('name', r['config'])} | error: {r['error'][:80]} |")
            continue
        c = r["curve"]
        secs = sum(r["epoch_seconds"]) / max(len(r["epoch_seconds"]), 1)
        print(f"| {r['config'].get('name', r['config'])} | {r['best_valid'].get('ndcg@10', 0):.4f} | {r['best_epoch']} | "
              f"{reached_by(c, 10)} | {reached_by(c, 20)} | {reached_by(c, 30)} | {reached_by(c, 40)} | {secs:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
