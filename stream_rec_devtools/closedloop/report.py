"""The closed-loop table: per world and policy, new-item hits per simulated day, against the oracle, and
what the warm users paid.

* ``hits/oracle``: the policy's new-item hits over the oracle policy's, on the last simulated day and
  over the whole run; ``gain/oracle``: the hits *added* over plain ranking, as a share of what the oracle
  added (plain ranking already shows some new items: the first ratio counts them for everyone);
* ``regret``: the oracle's new-item hits minus the policy's, summed over the run; ``hits/omniscient``: over
  the hits of a reference that knows every user's true probabilities;
* warm cost: 1 - the policy's NDCG@10 (HR@10) on the events on old items over plain ranking's. ``vs none``:
  against the ``none`` run (the closed loop: the users answered different lists, with the same random
  numbers); ``same events``: against the plain list of the same state, on the policy's own events.
"""

from __future__ import annotations

from dataclasses import asdict

from .loop import DayCounts


def totals(days: list[DayCounts]) -> DayCounts:
    out = DayCounts()
    for d in days:
        out.add(d)
    return out


def ratio(a: float, b: float) -> float | None:
    return a / b if b else None


def summarise(runs: dict[str, dict]) -> dict[str, dict]:
    """runs: policy -> {"days": [DayCounts], ...extra} -> policy -> figures (JSON-ready)."""
    oracle = runs.get("oracle")
    none = runs.get("none")
    omniscient = runs.get("omniscient")
    out = {}
    for name, run in runs.items():
        days, t = run["days"], totals(run["days"])
        row = {"new_hits_per_day": [d.new_hits for d in days], "new_hits": t.new_hits,
               "new_events": t.new_events, "explore_hits": t.explore_hits,
               "warm_hr": ratio(t.warm_hits, t.warm_events), "warm_ndcg": ratio(t.warm_ndcg, t.warm_events),
               "slots_per_list": ratio(t.slots, t.lists),
               "warm_cost_same_events_ndcg": 1 - t.warm_ndcg / t.plain_warm_ndcg if t.plain_warm_ndcg else None,
               "warm_cost_same_events_hr": 1 - t.warm_hits / t.plain_warm_hits if t.plain_warm_hits else None,
               "days": [asdict(d) for d in days]} | {k: v for k, v in run.items() if k != "days"}
        if none is not None:
            base = totals(none["days"])
            row["warm_cost_vs_none_ndcg"] = 1 - row["warm_ndcg"] / (base.warm_ndcg / base.warm_events)
            row["warm_cost_vs_none_hr"] = 1 - row["warm_hr"] / (base.warm_hits / base.warm_events)
        if omniscient is not None:
            row["hits_over_omniscient"] = ratio(t.new_hits, totals(omniscient["days"]).new_hits)
        if oracle is not None:
            o_days, o = oracle["days"], totals(oracle["days"])
            row["hits_over_oracle_last_day"] = ratio(days[-1].new_hits, o_days[-1].new_hits)
            row["hits_over_oracle"] = ratio(t.new_hits, o.new_hits)
            row["regret"] = o.new_hits - t.new_hits
            row["regret_per_day"] = [a.new_hits - b.new_hits for a, b in zip(o_days, days)]
            if none is not None:
                base = totals(none["days"])
                row["gain_over_oracle_gain"] = ratio(t.new_hits - base.new_hits, o.new_hits - base.new_hits)
        out[name] = row
    return out


def fmt(v, pct: bool = False) -> str:
    if v is None:
        return "-"
    if pct:
        return f"{100 * v:.1f}%"
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def table(world: str, summary: dict[str, dict], describe: str = "") -> str:
    """The markdown table of one world."""
    n_days = len(next(iter(summary.values()))["new_hits_per_day"])
    head = (["policy"] + [f"d{d + 1}" for d in range(n_days)]
            + ["new hits", "hits/oracle last day", "hits/oracle", "gain/oracle", "regret", "hits/omniscient",
               "warm NDCG cost vs none",
               "warm HR cost vs none", "warm NDCG cost same events", "slots/list", "graduated", "retired"])
    lines = [f"#### {world}{': ' + describe if describe else ''}", "| " + " | ".join(head) + " |",
             "|" + "---|" * len(head)]
    for name, r in summary.items():
        cells = ([name] + [str(h) for h in r["new_hits_per_day"]]
                 + [str(r["new_hits"]), fmt(r.get("hits_over_oracle_last_day")), fmt(r.get("hits_over_oracle")),
                    fmt(r.get("gain_over_oracle_gain")), fmt(r.get("regret")), fmt(r.get("hits_over_omniscient")),
                    fmt(r.get("warm_cost_vs_none_ndcg"), True), fmt(r.get("warm_cost_vs_none_hr"), True),
                    fmt(r.get("warm_cost_same_events_ndcg"), True), fmt(r.get("slots_per_list")),
                    fmt(r.get("graduated")), fmt(r.get("retired"))])
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
