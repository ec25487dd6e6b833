"""Tables and the picture of benchmarks/temporal.py (one data set at a time)."""

from __future__ import annotations

import datetime
from pathlib import Path

STYLE = {  # system -> (colour, line style, width)
    "live": ("#08306b", "-", 2.6),
    "live_model": ("#08306b", ":", 1.2),
    "hourly": ("#4292c6", "--", 1.6),
    "nightly": ("#9ecae1", "--", 1.6),
    "sasrec_live": ("#d94801", "-", 1.6),
    "sasrec_nightly": ("#fdae6b", "--", 1.6),
    "markov_live": ("#238b45", "-", 1.3),
    "popularity_24h": ("#737373", ":", 1.6),
    "live_online": ("#cb181d", "-.", 1.6),
    "live_fresh": ("#6a51a3", ":", 2.0),
    "live_worker": ("#000000", (0, (1, 2)), 1.6),
}


MIN_EVENTS_PER_POINT = 30  # a day with fewer scored events is left out of the picture (its rate is noise)


def fmt(x, digits: int = 4) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def print_dataset(name: str, res: dict) -> None:
    info, rows = res["info"], res["systems"]
    scored = max(info["scored_events"], 1)
    t = datetime.datetime.fromtimestamp(info["T"], datetime.timezone.utc).strftime("%Y-%m-%d %H:%M")
    print(f"\n### {name}: {info['events']:,} events; T = {t} UTC; replay of {info['replay_days']} days: "
          f"{info['replayed_events']:,} events, {info['scored_events']:,} scored "
          f"(not scored: {info['skipped'].get('first_event', 0):,} first events, {info['skipped'].get('repeat', 0):,} "
          f"repeats); events of users with no history at T: {info['users_new_at_T_events']:,} "
          f"({info['users_new_at_T_events'] / scored:.1%}); items born after T: {info['new_item_events']:,} "
          f"({info['new_item_events'] / scored:.1%})")
    print("| system | HR@10 | NDCG@10 | NDCG / live | last third NDCG@10 | HR@10, users new at T | HR@10, users with "
          "history at T | hits on items born after T | CPU s / 1k events |")
    print("|---|---|---|---|---|---|---|---|---|")
    for s, r in rows.items():
        print(f"| {s} | {fmt(r['hr10'])} | {fmt(r['ndcg10'])} | {fmt(r['ratio_to_live'], 3)} | "
              f"{fmt(r['last_third']['ndcg10'])} | {fmt(r['users_new_at_T']['hr10'])} | "
              f"{fmt(r['users_with_history_at_T']['hr10'])} | {r['new_item_hits']} | "
              f"{fmt(r['cpu_s_per_1k'], 3)} |")
    labels = [b["age"] for b in next(iter(rows.values()))["staleness"]]
    print("\nstaleness (HR@10 of the held lists by the time since they were computed; events in brackets)")
    print("| system | " + " | ".join(labels) + " |")
    print("|---|" + "---|" * len(labels))
    for s, r in rows.items():
        cells = [f"{fmt(b['hr10'], 3)} ({b['n']})" if b["n"] else "-" for b in r["staleness"]]
        print(f"| {s} | " + " | ".join(cells) + " |")
    if info.get("through_worker"):
        live, worker = rows.get("live"), rows.get("live_worker")
        if live and worker and live["ndcg10"]:
            print(f"\nthrough the worker: NDCG@10 {fmt(worker['ndcg10'])} vs offline {fmt(live['ndcg10'])} "
                  f"(ratio {worker['ndcg10'] / live['ndcg10']:.4f}), HR@10 {fmt(worker['hr10'])} vs "
                  f"{fmt(live['hr10'])}; {info['through_worker']}")
    extra = {k: info[k] for k in ("alarms", "finetunes", "gru", "sasrec", "fresh_policy", "warm_cpu_s",
                                  "replay_wall_s") if k in info}
    print(f"\n{extra}")
    print(f"picture: {res['png']}", flush=True)


def plot_dataset(name: str, rows: dict, daily: dict, info: dict, img_dir: Path, bin_days: int) -> Path:
    """Two panels: each system's hit rate per day (or per ``bin_days``) over the replay; HR@10 against the
    age of the held list (the staleness curve)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(10, 8.5), gridspec_kw={"height_ratios": [3, 2]})
    for s, points in daily.items():
        colour, ls, lw = STYLE.get(s, ("#999999", "-", 1.0))
        kept = [p for p in points if p[1] >= MIN_EVENTS_PER_POINT]
        ax1.plot([p[0] for p in kept], [p[2] for p in kept], color=colour, ls=ls, lw=lw, marker="o", ms=2.5,
                 label=f"{s} (HR@10 {rows[s]['hr10']:.3f})")
    unit = "day" if bin_days == 1 else f"{bin_days}-day bin"
    ax1.set_xlabel(f"days since T (the end of training); {unit}s with >= {MIN_EVENTS_PER_POINT} scored events")
    ax1.set_ylabel(f"HR@10 per {unit}")
    ax1.set_ylim(bottom=0)
    ax1.grid(alpha=0.3)
    ax1.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8.5, frameon=False)
    ax1.set_title(f"{name}: prequential hit rate of the list each system held before every event "
                  f"({info['scored_events']:,} events over {info['replay_days']:.0f} days after T)", fontsize=10)
    labels = [b["age"] for b in next(iter(rows.values()))["staleness"]]
    x = list(range(len(labels)))
    for s, r in rows.items():
        colour, ls, lw = STYLE.get(s, ("#999999", "-", 1.0))
        pts = [(n, b["hr10"]) for n, b in enumerate(r["staleness"]) if b["n"] >= 20]
        if pts:
            ax2.plot([p[0] for p in pts], [p[1] for p in pts], color=colour, ls=ls, lw=lw, marker="o", ms=3, label=s)
    ax2.set_xticks(x, labels)
    ax2.set_xlabel("age of the held list (time since it was computed; bins with >= 20 events)")
    ax2.set_ylabel("HR@10")
    ax2.set_ylim(bottom=0)
    ax2.grid(alpha=0.3)
    ax2.set_title("staleness: hit rate against the age of the list", fontsize=10)
    fig.tight_layout()
    img_dir.mkdir(parents=True, exist_ok=True)
    path = img_dir / f"temporal-{name}.png"
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path
