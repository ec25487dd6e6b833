"""The closed-loop simulation through a real worker (``benchmarks/closed_loop.py --through-worker``):
``stream-rec worker --model DIR`` on an embedded broker behind ``closedloop.sources.WorkerSource``, and
the table that compares it with the offline run of the same world, users, seed and policy.

The two differ by the bandit's Thompson draws (the worker's generator is its own), by the micro-batches
the worker cuts (the arms' view is refreshed per micro-batch, the offline one per simulated batch), and
by the float16 hidden states the worker stores; the offline run-to-run spread of the draws alone is
measured with ``--draws-seed``.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path

SETTINGS = ("slots", "max_age_s", "window_s", "min_gain", "by", "min_similarity", "max_declines")


def worker_settings(broker: str, data_dir: Path, model_dir: Path, policy: str, explore: dict):
    """The worker of one policy: ``none`` = plain ranking (no freshness policy, no exploration);
    ``bandit`` = exploration with the offline run's ExplorePolicy (its defaults, then ``--set``)."""
    from stream_rec.recsys.explore import ExplorePolicy
    from stream_rec_devtools.harness import isolated_settings

    values = dict(model=str(model_dir), fresh_slots=0, explore_slots=0, torch_threads=1, device="cpu")
    if policy == "bandit":
        chosen = ExplorePolicy(**explore)
        unknown = set(explore) - set(SETTINGS)
        if unknown:
            raise SystemExit(f"--through-worker: {sorted(unknown)} are not worker settings")
        values |= {f"explore_{name}": getattr(chosen, name) for name in SETTINGS}
    return isolated_settings(broker, data_dir, tag=f"closedloop-{policy}", **values)


def run_through_worker(sim, model_dir, args, explore: dict) -> dict:
    """policy -> {"days": [DayCounts], "seconds"} for ``none`` and ``bandit`` through the worker."""
    from stream_rec.io.broker import EmbeddedBroker
    from stream_rec_devtools.closedloop.loop import simulate
    from stream_rec_devtools.closedloop.sources import WorkerSource
    from stream_rec_devtools.closedloop.world import DAY, Users
    from stream_rec_devtools.harness import read_changelog_arms

    # the worker refuses events more than a day ahead of its clock: the simulated week ends an hour ago
    shift = min(0.0, time.time() - 3600.0 - (sim.start + sim.params.days * DAY))
    runs = {}
    with tempfile.TemporaryDirectory(prefix="closedloop-worker-") as tmp, \
            EmbeddedBroker(log_file=Path(tmp) / "tansu.log") as broker:
        for policy in [p for p in args.policies if p in ("none", "bandit")]:
            started = time.perf_counter()
            settings = worker_settings(broker.bootstrap, Path(tmp) / policy, Path(model_dir).resolve(), policy, explore)
            source = WorkerSource(settings, Path(tmp) / f"w-{policy}", shift=shift).start()
            try:
                days = simulate(sim, source, users=Users(sim))
                arms = asyncio.run(read_changelog_arms(settings))  # the worker's own counts (its changelog)
            finally:
                source.stop()
            runs[policy] = {"days": days, "seconds": round(time.perf_counter() - started, 1)}
            if arms:
                runs[policy] |= {"impressions": sum(a.impressions for a in arms.values()),
                                 "hits": sum(a.hits for a in arms.values())}
            print(f"through the worker, {policy}: {sum(d.new_hits for d in days)} new-item hits, "
                  f"{runs[policy]['seconds']:.0f} s", flush=True)
    return runs


def parity_table(name: str, offline: dict, worker: dict) -> str:
    """The worker's figures against the offline run's: new-item hits, warm NDCG@10 / HR@10, warm cost."""
    rows = [f"#### {name}: through the worker vs offline (same world, users, seed, policy)",
            "| policy | figure | offline | worker | worker/offline |", "|---|---|---|---|---|"]
    figures = [("new-item hits", "new_hits"), ("warm NDCG@10", "warm_ndcg"), ("warm HR@10", "warm_hr"),
               ("warm NDCG@10 cost vs none", "warm_cost_vs_none_ndcg"), ("slots/list", "slots_per_list")]
    for policy in worker:
        for label, key in figures:
            a, b = offline.get(policy, {}).get(key), worker[policy].get(key)
            if a is None or b is None:
                continue
            share = f"{b / a:.3f}" if a else "-"
            rows.append(f"| {policy} | {label} | {a:.4g} | {b:.4g} | {share} |")
    return "\n".join(rows)
