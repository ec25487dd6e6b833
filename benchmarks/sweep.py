"""Choosing defaults: configurations of the GRU on the *validation* splits of several data sets.

    python benchmarks/sweep.py --data-dir PATH --datasets ml-100k series topics cold noise --grid grid.json --parallel 2

Each configuration (``--grid``: a JSON list of objects; any ``GRUConfig`` or ``TrainParams`` field, plus an
optional ``name``) is applied on top of ``stream-rec train``'s defaults and trained on each data set
(benchmarks/datasets.py: the same splits as benchmarks/quality.py, new items left out of training) with
early stopping on each user's second-to-last event, in parallel processes. It prints, per configuration
and data set, the best validation NDCG@10 (and its ratio to the first configuration of the grid, the
reference), the epoch it came at and the CPU seconds. The test events are never looked at here;
benchmarks/quality.py reports them for the chosen defaults.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

DEFAULT_GRID = [
    {"name": "defaults"},
    {"name": "GRU only", "recent": 0, "heads": 1},
    {"name": "no seen-item masking", "mask_seen": False},
    {"name": "ID-only", "use_text": False},
]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default="", help="directory holding the MovieLens folders (worlds need none)")
    p.add_argument("--datasets", nargs="+", default=["ml-100k", "series", "topics", "cold", "noise"], help="data sets")
    p.add_argument("--grid", default="", help="JSON file with a list of configurations (default: a built-in grid)")
    p.add_argument("--parallel", type=int, default=2, help="trainings at once")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads per process")
    p.add_argument("--time-budget", type=float, default=0.0, help="wall seconds per training (0 = none)")
    p.add_argument("--out", default="", help="write all histories as JSON here")
    return p.parse_args(argv)


def train_one(config: dict, name: str, args: dict) -> dict:
    """Train one configuration on one data set (in a worker process); its validation history."""
    from dataclasses import fields

    import torch

    import datasets
    from stream_rec.model.encoder import shared_encoder
    from stream_rec.model.gru import GRUConfig
    from stream_rec.model.train import TrainParams, train_recommender
    from stream_rec.settings import Settings

    torch.set_num_threads(args["threads"])
    ds = datasets.load(name, args["data_dir"] or None)
    model_fields, train_fields = {f.name for f in fields(GRUConfig)}, {f.name for f in fields(TrainParams)}
    unknown = set(config) - model_fields - train_fields - {"name"}
    if unknown:
        raise ValueError(f"unknown setting(s) {sorted(unknown)}")
    model_kw = {k: v for k, v in config.items() if k in model_fields}
    train_kw = {k: v for k, v in config.items() if k in train_fields}
    params = TrainParams(**({"threads": args["threads"], "time_budget_s": args["time_budget"]} | train_kw))
    encoder = shared_encoder(Settings.from_env().cache_dir, "cpu") if model_kw.get("use_text", True) else None
    t0 = time.perf_counter()
    label = config.get("name", json.dumps(config))

    def on_epoch(row: dict) -> None:  # one line per epoch: a long sweep can be followed
        print(f"  {name} / {label}: epoch {row['epoch']} valid NDCG@10 {row.get('valid_ndcg@10', float('nan')):.4f} "
              f"({row['seconds']:.0f} s)", flush=True)

    _, history = train_recommender(ds.train_split, ds.items, model_kw, params, encoder=encoder,
                                   exclude_items=sorted(ds.new_items), progress=False, on_epoch=on_epoch)
    return {"config": config, "dataset": name, "seconds": round(time.perf_counter() - t0, 1),
            "cpu_seconds": round(history.cpu_seconds, 1), "best_epoch": history.best_epoch,
            "epochs": len(history.epochs), "best_valid": history.best_valid,
            "curve": [round(e.get("valid_ndcg@10", 0.0), 4) for e in history.epochs]}


def main(argv=None) -> int:
    import multiprocessing

    args = parse_args(argv)
    grid = json.loads(Path(args.grid).read_text()) if args.grid else DEFAULT_GRID
    shared = {"threads": args.threads, "time_budget": args.time_budget, "data_dir": args.data_dir}
    jobs = [(c, d) for d in args.datasets for c in grid]
    results = []
    with ProcessPoolExecutor(args.parallel, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(train_one, c, d, shared): (c, d) for c, d in jobs}
        for n, fut in enumerate(as_completed(futures), 1):
            try:
                r = fut.result()
            except Exception as exc:  # one broken configuration must not lose the others
                r = {"config": futures[fut][0], "dataset": futures[fut][1], "error": repr(exc)}
            results.append(r)
            print(f"[{n}/{len(jobs)}] {json.dumps(r)}", flush=True)
            if args.out:
                Path(args.out).write_text(json.dumps(results, indent=1))
    print_table(grid, args.datasets, results)
    return 0


def print_table(grid: list[dict], names: list[str], results: list[dict]) -> None:
    """One row per configuration: each data set's best validation NDCG@10 with its ratio to the first
    configuration, and the geometric mean of those ratios over the data sets both have (the criterion: a
    default must pay across all data sets at once)."""
    import math

    label = lambda c: c.get("name", json.dumps(c))  # noqa: E731
    cell = {(label(r["config"]), r["dataset"]): r for r in results if "error" not in r}
    print("\n### validation NDCG@10 (test split untouched); (x) = ratio to the first configuration; best epoch / "
          "epochs, CPU s")
    print("| configuration | " + " | ".join(names) + " | geometric mean of the ratios |")
    print("|---|" + "---|" * (len(names) + 1))
    for c in grid:
        row, logs = [], []
        for d in names:
            r, ref = cell.get((label(c), d)), cell.get((label(grid[0]), d))
            if r is None:
                row.append("error" if any(x["dataset"] == d and label(x["config"]) == label(c) for x in results) else "-")
                continue
            v = r["best_valid"].get("ndcg@10", 0.0)
            base = ref["best_valid"].get("ndcg@10", 0.0) if ref else 0.0
            if base and v:
                logs.append(math.log(v / base))
            ratio = f" ({v / base:.3f})" if base else ""
            row.append(f"{v:.4f}{ratio}, ep {r['best_epoch']}/{r['epochs']}, {r['cpu_seconds']:.0f} s")
        mean = f"{math.exp(sum(logs) / len(logs)):.3f} ({len(logs)} sets)" if logs else "-"
        print(f"| {label(c)} | " + " | ".join(row) + f" | {mean} |")


if __name__ == "__main__":
    sys.exit(main())
