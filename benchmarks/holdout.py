"""The quality table's protocol through the user-facing commands: ``stream-rec train`` -> ``stream-rec recommend``.

    python benchmarks/holdout.py split --events-file DATA/ml-100k --out runs/holdout
    stream-rec train --events-file DATA/ml-100k --items-file DATA/ml-100k --out runs/models/ml-100k --threads 1
    stream-rec recommend --model runs/models/ml-100k --events-file runs/holdout/history.csv \\
        --items-file DATA/ml-100k --top-k 10 --out runs/holdout/recs.jsonl
    python benchmarks/holdout.py score --recs runs/holdout/recs.jsonl --targets runs/holdout/targets.csv

``split`` writes each user's events but the last (``history.csv``) and the last one (``targets.csv``): the
leave-one-out split of ``stream-rec train`` and benchmarks/quality.py (``io.data.leave_one_out``: users with
3 or more events; the history keeps the split's order, ties included). ``score`` reads the top-k lists
``recommend`` wrote (seen items already excluded there) and prints HR/NDCG/MRR@k of the held-out events, the
figures benchmarks/quality.py reports for the hybrid from the same split.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def split(events_file: str, out: str, fmt: str = "auto") -> dict:
    from stream_rec.io.data import leave_one_out, read_events, sequences

    s = leave_one_out(sequences(read_events(events_file, fmt)))
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / "history.csv", "w", newline="") as h, open(out_dir / "targets.csv", "w", newline="") as t:
        hw, tw = csv.writer(h), csv.writer(t)
        hw.writerow(["user_id", "item_id", "timestamp"])
        tw.writerow(["user_id", "item_id", "timestamp"])
        for user, (item, ts) in s.test.items():
            for i, when in s.full[user][:-1]:
                hw.writerow([user, i, repr(when)])
            tw.writerow([user, item, repr(ts)])
    return {"users": len(s.test), "history": str(out_dir / "history.csv"), "targets": str(out_dir / "targets.csv")}


def score(recs_file: str, targets_file: str, k: int = 10) -> dict:
    with open(targets_file, newline="") as fh:
        targets = {row["user_id"]: row["item_id"] for row in csv.DictReader(fh)}
    lists = {}
    with open(recs_file, encoding="utf-8") as fh:
        for line in fh:
            rec = json.loads(line)
            lists[rec["user_id"]] = rec["items"][:k]
    sums = {"hr": 0.0, "ndcg": 0.0, "mrr": 0.0}
    for user, item in targets.items():
        items = lists.get(user, [])
        if item in items:
            rank = items.index(item)
            sums["hr"] += 1.0
            sums["ndcg"] += 1.0 / math.log2(rank + 2)
            sums["mrr"] += 1.0 / (rank + 1)
    n = max(len(targets), 1)
    return {f"{key}@{k}": v / n for key, v in sums.items()} | {
        "users": len(targets), "users_without_a_list": sum(u not in lists for u in targets)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    sp = sub.add_parser("split", help="write history.csv and targets.csv")
    sp.add_argument("--events-file", required=True)
    sp.add_argument("--format", default="auto")
    sp.add_argument("--out", required=True, help="directory to write")
    sc = sub.add_parser("score", help="HR/NDCG/MRR@k of recommend's lists against the held-out events")
    sc.add_argument("--recs", required=True)
    sc.add_argument("--targets", required=True)
    sc.add_argument("--k", type=int, default=10)
    args = p.parse_args(argv)
    result = split(args.events_file, args.out, args.format) if args.command == "split" else score(
        args.recs, args.targets, args.k)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
