"""Closed-loop simulation of new items (issue 21): does exploration that learns from what users take get
new items to the people who want them, and what does it cost the others?

    python benchmarks/closed_loop.py --worlds cold series topics --days 7 --out runs/closed_loop.json

Per synthetic world (``benchmarks/datasets.py``'s specs): a model trained as ``stream-rec train`` does
with its defaults on the world's log without its new items (``--models DIR`` keeps the trained models
and reuses them; ``--train-budget`` seconds each, one torch thread); then ``--days`` simulated days in
which the new items come out and ``--users`` users answer the lists they are shown
(stream_rec_devtools/closedloop/: the world, the users' choice model, the seam to the system under test),
through the serving path (``Recommender`` stepped per event, new items added from their text), with each
policy:

* ``none``: plain ranking; ``fixed``: today's freshness policy (``--fixed``, by default the policy
  benchmarks/quality.py chose on validation for cold and series); ``bandit``: ``stream_rec.recsys.explore``
  (``--set`` overrides its ``ExplorePolicy`` defaults); ``oracle``: the bandit knowing every new item's
  true appeal (``closedloop.policies.OraclePolicy``); ``omniscient``: a reference that knows every user's
  true next-item probabilities (``closedloop.policies.OmniscientPolicy``).

Prints one table per world (columns: stream_rec_devtools/closedloop/report.py) and writes every figure to
``--out``. Everything is seeded (``--seed``: the users' random numbers, release times and appeals;
``--draws-seed``: the bandit's Thompson draws, by default ``--seed``).

``--through-worker``: the ``none`` and ``bandit`` policies also run through a real worker (``stream-rec
worker --model DIR`` with ``EXPLORE_*`` settings from the same ``--set``, on an embedded broker:
``closedloop.sources.WorkerSource``), and a parity table compares them with the offline runs.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import datasets  # noqa: E402  (benchmarks/datasets.py: the worlds' specs)

POLICIES = ["none", "fixed", "bandit", "oracle", "omniscient"]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--worlds", nargs="+", default=["cold", "series", "topics"], choices=list(datasets.WORLDS))
    p.add_argument("--policies", nargs="+", default=POLICIES, choices=POLICIES)
    p.add_argument("--days", type=int, default=7)
    p.add_argument("--users", type=int, default=1500, help="simulated users (the world's first ones)")
    p.add_argument("--events-per-day", type=float, default=4.0, help="per user (Poisson)")
    p.add_argument("--seed", type=int, default=0, help="0: the reported runs; defaults were chosen with 1")
    p.add_argument("--set", nargs="*", default=[], metavar="NAME=VALUE", help="override an ExplorePolicy default")
    p.add_argument("--fixed", nargs="*", default=["slots=3", "by=content", "min_similarity=-1"], metavar="NAME=VALUE",
                   help="the fixed policy (FreshnessPolicy fields)")
    p.add_argument("--models", default="runs/closed_loop/models", help="trained models, one directory per world "
                                                                      "(trained there when missing)")
    p.add_argument("--train-budget", type=float, default=240.0, help="seconds of training per world")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--train-set", nargs="*", default=[], metavar="NAME=VALUE",
                   help="GRUConfig / TrainParams overrides for the models trained here (experiments; as "
                        "benchmarks/quality.py --set)")
    p.add_argument("--draws-seed", type=int, default=None, help="the bandit's Thompson draws (default: --seed)")
    p.add_argument("--through-worker", action="store_true",
                   help="also run none and bandit through a real worker on an embedded broker")
    p.add_argument("--out", default="", help="write every figure here (JSON)")
    p.add_argument("--tables-from", nargs="+", default=[], metavar="JSON",
                   help="print the tables of earlier --out files (runs of some policies each, same seed) and exit")
    return p.parse_args(argv)


def tables_from(paths: list[str]) -> None:
    """One table per world from several --out files: their policies side by side (each policy's days as
    recorded; the runs must share the world, users and seed for the ratios to mean anything)."""
    from stream_rec_devtools.closedloop import report
    from stream_rec_devtools.closedloop.loop import DayCounts

    worlds: dict[str, dict] = {}
    for path in paths:
        for name, world in json.loads(Path(path).read_text())["worlds"].items():
            runs = worlds.setdefault(name, {"describe": world["describe"], "runs": {}})["runs"]
            for policy, row in world["policies"].items():
                extra = {k: row[k] for k in ("graduated", "retired", "impressions", "hits") if k in row}
                runs[policy] = {"days": [DayCounts(**d) for d in row["days"]]} | extra
    for name, world in worlds.items():
        order = sorted(world["runs"], key=lambda p: POLICIES.index(p))
        summary = report.summarise({p: world["runs"][p] for p in order})
        print("\n" + report.table(name, summary, world["describe"]) + "\n")


def fields(pairs: list[str]) -> dict:
    out = {}
    for pair in pairs:
        name, _, raw = pair.partition("=")
        try:
            out[name] = json.loads(raw)
        except json.JSONDecodeError:
            out[name] = raw
    return out


def world_model(name: str, args, encoder):
    """The world's trained model directory (trained now if it is not there yet)."""
    from stream_rec_devtools.synthetic import make_spec_world
    from stream_rec_devtools.closedloop.world import train_model

    path = Path(args.models) / name
    if not (path / "VERSION").is_file():
        started = time.perf_counter()
        from quality import overrides

        model_kw, train_kw = overrides(args.train_set)
        rec, history = train_model(make_spec_world(datasets.WORLDS[name]), encoder, budget_s=args.train_budget,
                                   threads=args.threads, config_kwargs=model_kw, train_kwargs=train_kw)
        rec.save(path)
        print(f"{name}: trained in {time.perf_counter() - started:.0f} s, best epoch {history.best_epoch} of "
              f"{len(history.epochs)}, valid NDCG@10 {history.best_valid.get('ndcg@10', 0):.4f}", flush=True)
    return path


def make_policy(name: str, args, sim, users):
    from stream_rec.recsys.explore import ExplorePolicy
    from stream_rec.recsys.freshness import FreshnessPolicy
    from stream_rec_devtools.closedloop import policies

    explore = ExplorePolicy(**fields(args.set))
    if name == "none":
        return policies.PlainPolicy()
    if name == "fixed":
        return policies.FixedPolicy(FreshnessPolicy(**fields(args.fixed)))
    if name == "bandit":
        return policies.BanditPolicy(explore, seed=args.seed if args.draws_seed is None else args.draws_seed)
    if name == "omniscient":
        return policies.OmniscientPolicy(explore, users)
    return policies.OraclePolicy(explore, sim.appeal, seed=args.seed)


def run_world(name: str, args, encoder) -> dict:
    from stream_rec.model.recommender import Recommender
    from stream_rec_devtools.closedloop import report
    from stream_rec_devtools.closedloop.loop import simulate
    from stream_rec_devtools.closedloop.sources import ServingSource
    from stream_rec_devtools.closedloop.world import SimParams, Users, make_sim_world

    model_dir = world_model(name, args, encoder)
    sim = make_sim_world(datasets.WORLDS[name], SimParams(days=args.days, users=args.users,
                                                          events_per_day=args.events_per_day, seed=args.seed))
    runs = {}
    for policy_name in args.policies:
        started = time.perf_counter()
        users = Users(sim)
        policy = make_policy(policy_name, args, sim, users)
        days = simulate(sim, ServingSource(Recommender.load(model_dir, device="cpu"), policy, encoder), users=users)
        runs[policy_name] = {"days": days, "seconds": round(time.perf_counter() - started, 1)}
        if hasattr(policy, "book"):
            runs[policy_name] |= {"graduated": len(policy.book.graduated), "retired": len(policy.book.retired),
                                  "impressions": policy.impressions, "hits": policy.hits}
        print(f"{name} {policy_name}: {sum(d.new_hits for d in days)} new-item hits, "
              f"{runs[policy_name]['seconds']:.0f} s", flush=True)
    summary = report.summarise(runs)
    describe = (f"{len(sim.users)} users, {len(sim.new_items)} new items over {sim.params.release_days:g} days, "
                f"{sum(len(h) for h in sim.histories.values())} events before day 1")
    print("\n" + report.table(name, summary, describe) + "\n", flush=True)
    out = {"describe": describe, "policies": summary}
    if args.through_worker:
        from through_worker import parity_table, run_through_worker

        out["worker"] = report.summarise(run_through_worker(sim, model_dir, args, fields(args.set)))
        print("\n" + report.table(f"{name} through the worker", out["worker"], describe) + "\n")
        print(parity_table(name, summary, out["worker"]) + "\n", flush=True)
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.tables_from:
        tables_from(args.tables_from)
        return 0
    import torch

    from stream_rec.model.encoder import shared_encoder

    torch.set_num_threads(args.threads)
    encoder = shared_encoder()
    results = {"args": vars(args), "worlds": {}}
    for name in args.worlds:
        results["worlds"][name] = run_world(name, args, encoder)
        if args.out:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(json.dumps(results, indent=2, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
