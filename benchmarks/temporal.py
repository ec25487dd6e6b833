"""What live is worth: the whole system on a global temporal split, beside batch cadences and the peers.

    python benchmarks/temporal.py --data-dir ../shared/data --datasets ml-100k --out runs/temporal.json
    python benchmarks/temporal.py --data-dir ../shared/data --through-worker ml-100k --out runs/temporal.json

Protocol (stream_rec_devtools/temporal.py has the details): the log is split at T, 80 % of its time span
(``--split``); every model is trained on the events before T and every later event is replayed in time
order. Before each replayed event, each system holds a list for the user; the event scores a hit when its
item is in the first 10 items of that list once the items the user had seen are filtered out (a client's
filter); NDCG@10 likewise. A user's first event ever and repeats are not scored (counted).

Systems, same replay, same run:

* ``live`` -- stream-rec: the worker's pipeline (``process_batch``: validation, state codec, one
  ``Recommender.step`` per event, top-K with the worker's seen-item exclusion) on the model
  ``stream-rec train`` gives at T (defaults, ``--train-budget-s``); the list held is the one the worker
  sent after the user's previous event. With ``--through-worker NAME`` the same row comes from a real worker on
  the embedded broker (``live_worker``): the whole log is streamed through it, the lists it sent before the
  events after T are scored. Beside them, ``live_model`` (a diagnostic): the same model and states, the
  list computed from the state at every event without the pipeline -- the model's own CPU per event, and
  the list without the worker's 50-item limit on seen-item exclusion;
* ``hourly`` / ``nightly`` -- the same model and states, lists computed at every UTC hour / midnight (and
  at T) from the events before it; users with no history then get the last 24 h's popularity;
* ``sasrec_live`` / ``sasrec_nightly`` -- SASRec+ (benchmarks/sasrec.py) trained at T with the same
  budget, re-run after every event (batched per round) / refreshed nightly;
* ``markov_live`` -- first-order transition counts of the training events, list after every event;
  ``popularity_24h`` -- the most consumed items of the last 24 hours, at every event;
* ``live_online`` -- ``live`` with online learning as the worker does it (drift monitor, fine-tune on the
  recent-events buffer, hot reload, state re-warm; stream_rec_devtools/temporal_systems.py);
* ``live_fresh`` -- ``live`` with the new-item policy (``temporal_systems.new_item_policy``: the
  model's own, chosen by `stream-rec train`, unless ``--fresh-slots`` n >= 0 gives n slots).

Items released after T (the ``arrivals`` world) join the GRUs' catalogue from their text at their
release, as the worker's live catalogue adds them; SASRec+ and Markov know the items of their training
events only. CPU: process time of each system's own calls, one torch thread, per 1,000 replayed events.

Data sets: ``ml-100k``, ``ml-1m-half`` (MovieLens, timestamps moved by whole days past 2000 for the
worker's validation), and the time worlds of stream_rec_devtools/time_worlds.py: ``returning``,
``drift``, ``arrivals``. Writes ``--out`` ({dataset: {system: {"ndcg10", "hr10", "cpu_s_per_1k"}}}),
``<out>.details.json`` (everything), and docs/img/temporal-<dataset>.png (daily hit rate, staleness).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

SYSTEMS = ["live", "hourly", "nightly", "sasrec_live", "sasrec_nightly", "markov_live", "popularity_24h",
           "live_online", "live_fresh"]
MOVIELENS = ("ml-100k", "ml-1m-half")
WORLDS = ("returning", "drift", "arrivals")
DATASETS = list(MOVIELENS) + list(WORLDS)
MIN_TS = 978_307_200.0  # 2001-01-01: logs older than this are moved forward by whole days
log = logging.getLogger("temporal")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default="", help="directory holding ml-100k/ and ml-1m-half/ (not needed for worlds)")
    p.add_argument("--datasets", nargs="+", default=DATASETS, choices=DATASETS, metavar="NAME",
                   help=f"data sets ({', '.join(DATASETS)})")
    p.add_argument("--systems", nargs="+", default=SYSTEMS, choices=SYSTEMS, metavar="NAME", help="systems to run")
    p.add_argument("--out", required=True, help="JSON of {dataset: {system: {ndcg10, hr10, cpu_s_per_1k}}}")
    p.add_argument("--split", type=float, default=0.8, help="T as a fraction of the log's time span")
    p.add_argument("--train-budget-s", type=float, default=900.0,
                   help="wall-time budget of each model trained at T (the GRU and SASRec+ alike)")
    p.add_argument("--models-dir", default="runs/temporal/models",
                   help="trained models are kept here and reused by later runs with the same data, T and budget")
    p.add_argument("--fresh-slots", type=int, default=-1,
                   help="live_fresh: the settings' FRESH_SLOTS for the new-item policy (-1: the model's own policy, "
                        "chosen by `stream-rec train`; n >= 0: n slots, the rest from STREAM_REC_FRESH_*)")
    p.add_argument("--max-events", type=int, default=0, help="replay only the first N events after T (development)")
    p.add_argument("--through-worker", nargs="+", default=[], choices=DATASETS, metavar="NAME",
                   help="for these data sets, also stream the whole log through a real worker on the embedded broker "
                        "and score the lists it sent (the live_worker row; ~500 events/s here)")
    p.add_argument("--img-dir", default=str(Path(__file__).resolve().parents[1] / "docs" / "img"),
                   help="where temporal-<dataset>.png is written")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--replot", metavar="DETAILS_JSON", help="only redraw the pictures and reprint the tables of an "
                                                             "earlier run's <out>.details.json")
    return p.parse_args(argv)


# --- data ------------------------------------------------------------------------------------------
@dataclasses.dataclass
class TemporalData:
    name: str
    log: object  # stream_rec_devtools.temporal.Log
    texts: dict  # item -> text, every item of the catalogue over the whole log
    released: dict  # item -> release time, for items released during the log (empty: all there from the start)
    shift_s: float = 0.0


def load_data(name: str, data_dir: str) -> TemporalData:
    from stream_rec_devtools.temporal import DAY, Log

    if name in WORLDS:
        from stream_rec_devtools.time_worlds import TIME_WORLDS, make_time_world

        world = make_time_world(TIME_WORLDS[name])
        log_ = Log.of([(e["user_id"], e["item_id"], e["timestamp"]) for e in world.events])
        return TemporalData(name, log_, world.texts, dict(world.released))
    if not data_dir:
        raise SystemExit(f"{name} needs --data-dir (the folder holding {name}/)")
    from stream_rec.io.data import read_events, read_items

    path = Path(data_dir) / name
    log_ = Log.of([(e.user_id, e.item_id, e.timestamp) for e in read_events(path)])
    shift = max(0.0, math.ceil((MIN_TS - float(log_.ts.min())) / DAY) * DAY)
    return TemporalData(name, log_.shifted(shift), read_items(path), {}, shift)


# --- models trained at T ---------------------------------------------------------------------------
def model_key(data: TemporalData, stop: int, budget: float) -> str:
    return f"{data.name}-T{int(data.log.ts[stop - 1])}-n{stop}-budget{int(budget)}"


def train_gru(data: TemporalData, stop: int, t_split: float, args, encoder):
    """`stream-rec train`'s path (leave-one-out of the events before T, `TrainParams` defaults, the
    catalogue of the items released by T) -> (Recommender, model dir, training info); reused when kept."""
    from stream_rec.io.data import leave_one_out
    from stream_rec.model.evaluate import baseline_warnings, validation_baselines
    from stream_rec.model.recommender import Recommender
    from stream_rec.model.train import TrainParams, train_recommender

    out = Path(args.models_dir) / model_key(data, stop, args.train_budget_s) / "gru"
    if (out / "VERSION").exists():
        rec = Recommender.load(out, device="cpu")
        return rec, out, json.loads((out.parent / "gru-info.json").read_text())
    split = leave_one_out(data.log.sequences(stop))
    texts = {i: t for i, t in data.texts.items() if data.released.get(i, -math.inf) < t_split}
    params = TrainParams(threads=1, device="cpu", time_budget_s=args.train_budget_s)
    rec, history = train_recommender(split, texts, {}, params, encoder=encoder, progress=not args.quiet)
    warnings = baseline_warnings(history.best_valid, validation_baselines(split, rec.row_of))
    rec.save(out)
    info = {"best_epoch": history.best_epoch, "epochs_run": len(history.epochs), "valid": history.best_valid,
            "train_seconds": round(history.train_seconds, 1), "train_cpu_seconds": round(history.cpu_seconds, 1),
            "budget_s": args.train_budget_s, "warnings": warnings, "catalogue_items": rec.n_items}
    (out.parent / "gru-info.json").write_text(json.dumps(info, indent=2))
    return rec, out, info


def train_peer(data: TemporalData, stop: int, args):
    """SASRec+ on the same split and budget -> (model, params, row_of, training rows, info); reused when kept."""
    from safetensors.torch import load_file, save_file

    from quality import catalogue, valid_cases
    from sasrec import SASRec, SASRecParams, train_sasrec
    from stream_rec.io.data import leave_one_out
    from stream_rec.model.sequences import to_sequence

    split = leave_one_out(data.log.sequences(stop))
    row_of = catalogue(split)
    train_rows = [to_sequence(seq, row_of).rows for seq in split.train.values()]
    params = SASRecParams(time_budget_s=args.train_budget_s)
    out = Path(args.models_dir) / model_key(data, stop, args.train_budget_s)
    if (out / "sasrec.safetensors").exists():
        model = SASRec(len(row_of), params)
        model.load_state_dict(load_file(str(out / "sasrec.safetensors")))
        info = json.loads((out / "sasrec-info.json").read_text())
    else:
        model, hist = train_sasrec(train_rows, valid_cases(split, row_of), len(row_of), params)
        out.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out / "sasrec.safetensors"))
        info = {"best_epoch": hist.best_epoch, "epochs_run": len(hist.epochs), "valid": hist.best_valid,
                "train_seconds": round(hist.train_seconds, 1), "train_cpu_seconds": round(hist.cpu_seconds, 1),
                "budget_s": args.train_budget_s, "params": params.to_dict()}
        (out / "sasrec-info.json").write_text(json.dumps(info, indent=2))
    return model.eval(), params, row_of, train_rows, info


# --- the SASRec+ systems ---------------------------------------------------------------------------
class SASRecLists:
    """SASRec+'s lists from each user's history of known items (seen items excluded)."""

    def __init__(self, model, row_of: dict, max_len: int, popularity, length: int):
        self.model, self.row_of, self.max_len, self.popularity, self.length = model, row_of, max_len, popularity, length
        self.ids = [None] * (len(row_of) + 1)
        for item, row in row_of.items():
            self.ids[row] = item
        self.history: dict[str, list[int]] = {}

    def start(self, sequences: dict) -> None:
        for u, seq in sequences.items():
            self.history[u] = [self.row_of[i] for i, _ in seq if i in self.row_of]

    def append(self, users, items) -> None:
        for u, i in zip(users, items):
            rows = self.history.setdefault(u, [])
            if i in self.row_of:
                rows.append(self.row_of[i])

    def lists(self, users: list[str], ts: list[float]) -> list[list[str]]:
        """A list per user: SASRec+ re-run on the history (batched), popularity at ``ts`` without one."""
        import torch

        with torch.no_grad():
            return self._lists(users, ts)

    def _lists(self, users: list[str], ts: list[float]) -> list[list[str]]:
        from sasrec import _user_vectors
        from stream_rec.model.gru import topk_excluding
        from stream_rec_devtools.temporal_systems import ranked_ids

        out: list[list[str]] = [self.popularity.top(t) for t in ts]
        known = [n for n, u in enumerate(users) if self.history.get(u)]
        if known:
            hist = [self.history[users[n]] for n in known]
            scores = self.model.scores(_user_vectors(self.model, [np.asarray(h, dtype=np.int64) for h in hist],
                                                     self.max_len))
            values, rows = topk_excluding(scores, self.length, hist, inplace=True)
            for n, items in zip(known, ranked_ids(values, rows, self.ids)):
                out[n] = items
        return out


class SASRecLive:
    def __init__(self, lists: SASRecLists):
        self.sasrec, self.held_lists = lists, {}

    def start(self, sequences: dict) -> None:
        from stream_rec_devtools.temporal import Held

        self.sasrec.start(sequences)
        users = list(sequences)
        for s in range(0, len(users), 256):
            part = users[s:s + 256]
            ts = [sequences[u][-1][1] for u in part]
            for u, t, items in zip(part, ts, self.sasrec.lists(part, ts)):
                self.held_lists[u] = Held(items, t)

    def window(self, t):
        pass

    def held(self, users, ts):
        return [self.held_lists.get(u) for u in users]

    def update(self, users, items, ts, offsets):
        from stream_rec_devtools.temporal import Held

        self.sasrec.append(users, items)
        for u, t, lst in zip(users, ts, self.sasrec.lists(list(users), list(ts))):
            self.held_lists[u] = Held(lst, t)


class SASRecCadence:
    def __init__(self, lists: SASRecLists, start: float, period_s: float, popularity):
        from stream_rec_devtools.temporal import CadenceLists

        self.sasrec, self.cadence = lists, CadenceLists(start, period_s, popularity)

    def start(self, sequences: dict) -> None:
        self.sasrec.start(sequences)

    def window(self, t):
        pass

    def held(self, users, ts):
        return self.cadence.held(users, ts, lambda u: bool(self.sasrec.history.get(u)),
                                 lambda us, bounds: self.sasrec.lists(us, bounds))

    def update(self, users, items, ts, offsets):
        self.sasrec.append(users, items)


# --- one data set ----------------------------------------------------------------------------------
def build_systems(data, stop, t_split, rec, model_dir, peer, settings, args, encoder, work_dir) -> dict:
    """name -> system, each started from the state at T."""
    from stream_rec.pipeline import PipelineConfig
    from stream_rec.recsys.freshness import FreshnessPolicy
    from stream_rec_devtools.temporal import DAY, HOUR, WindowPopularity
    from stream_rec_devtools.temporal_systems import (LIST_LENGTH, CadenceGRU, Catalogue, MarkovLive, OnlinePipeline,
                                                      PipelineSystem, PopularityLive, new_item_policy, recent_events,
                                                      warm_pipeline)

    log_, want = data.log, set(args.systems)
    pre = log_.sequences(stop)
    popularity = WindowPopularity(log_)
    late = {i: t for i, t in data.released.items() if t >= t_split}
    catalogue = Catalogue(data.texts, late, lambda: encoder) if late else None
    config = dataclasses.replace(PipelineConfig.from_settings(settings), freshness=FreshnessPolicy())
    c0 = time.process_time()
    states, lists = warm_pipeline(rec, log_, stop, config, progress=not args.quiet)
    warm_cpu = time.process_time() - c0
    systems: dict = {}
    if "live" in want:
        systems["live"] = PipelineSystem(rec, config, catalogue)
    if "live_fresh" in want:
        policy = new_item_policy(rec, settings.replace(fresh_slots=args.fresh_slots))
        systems["live_fresh"] = PipelineSystem(rec, dataclasses.replace(config, freshness=policy), catalogue)
    for name in ("live", "live_fresh"):
        if name in systems:
            systems[name].start(states, lists)
    if "live_online" in want:
        online = OnlinePipeline(rec, config, model_dir, work_dir, settings, catalogue)
        online.start(states, lists, recent_events(log_, stop, settings.drift_recent_events))
        systems["live_online"] = online
    seen = {u: {i for i, _ in seq} for u, seq in pre.items()}
    # live_model (a diagnostic beside the nine): live's model and states with the list computed at every event
    # straight from the state (Recommender.step + top-K, no pipeline, every seen item excluded): the model's
    # own CPU per event, and what the worker's 50-item seen-item exclusion costs
    for name, period in (("live_model", 0.0), ("hourly", HOUR), ("nightly", DAY)):
        if name in want or (name == "live_model" and "live" in want):
            systems[name] = CadenceGRU(rec, t_split, period, popularity, catalogue)
            systems[name].start(states, seen)
    if peer is not None:
        model, params, row_of, train_rows, _ = peer
        if "sasrec_live" in want:
            systems["sasrec_live"] = SASRecLive(SASRecLists(model, row_of, params.max_len, popularity, LIST_LENGTH))
            systems["sasrec_live"].start(pre)
        if "sasrec_nightly" in want:
            systems["sasrec_nightly"] = SASRecCadence(SASRecLists(model, row_of, params.max_len, popularity,
                                                                  LIST_LENGTH), t_split, DAY, popularity)
            systems["sasrec_nightly"].start(pre)
        if "markov_live" in want:
            systems["markov_live"] = MarkovLive(train_rows, row_of)
            systems["markov_live"].start(pre)
    if "popularity_24h" in want:
        systems["popularity_24h"] = PopularityLive(popularity)
    ordered = {name: systems[name] for name in SYSTEMS[:1] + ["live_model"] + SYSTEMS[1:] if name in systems}
    ordered["_warm_cpu_s"] = warm_cpu
    return ordered


def run_dataset(name: str, args, encoder, settings) -> dict:
    import tempfile

    from stream_rec_devtools.temporal import Scoreboard, replay, split_time

    data = load_data(name, args.data_dir)
    log_ = data.log
    t_split = split_time(log_.ts, args.split)
    stop = log_.index_at(t_split)
    print(f"\n== {name}: {len(log_)} events, T after {stop} ({stop / len(log_):.1%} of the events)", flush=True)
    rec, model_dir, gru_info = train_gru(data, stop, t_split, args, encoder)
    print(f"GRU at T: {json.dumps(gru_info)}", flush=True)
    needs_peer = {"sasrec_live", "sasrec_nightly", "markov_live"} & set(args.systems)
    peer = train_peer(data, stop, args) if needs_peer else None
    if peer is not None:
        print(f"SASRec+ at T: {json.dumps(peer[4])}", flush=True)
    worker = None
    if name in args.through_worker:
        from stream_rec_devtools.temporal_systems import worker_lists

        worker = worker_lists(log_, model_dir, rec, progress=not args.quiet)
        print(f"through the worker: {json.dumps({k: v for k, v in worker.items() if k != 'lists'})}", flush=True)
    with tempfile.TemporaryDirectory(prefix="temporal-finetunes-") as work_dir:
        systems = build_systems(data, stop, t_split, rec, model_dir, peer, settings, args, encoder, work_dir)
        warm_cpu = systems.pop("_warm_cpu_s")
        if worker is not None:
            from stream_rec_devtools.temporal_systems import WorkerLists

            systems["live_worker"] = WorkerLists(worker["lists"], log_.sequences(stop))
        board = Scoreboard(list(systems))
        pre_items = set(log_.items[:stop])
        pre_users = set(log_.users[:stop])
        stats = replay(log_, stop, t_split, systems, board, pre_items, pre_users, progress=not args.quiet,
                       max_events=args.max_events)
    t_end = float(log_.ts[min(len(log_), stop + stats.events) - 1])
    summary = board.summary(t_split, t_end)
    for s, row in summary.items():
        row["cpu_s"] = round(stats.cpu_s[s], 2) if s != "live_worker" else None
        row["cpu_s_per_1k"] = round(1000.0 * stats.cpu_s[s] / stats.events, 3) if s != "live_worker" else None
    online = systems.get("live_online")
    extra = {}
    if online is not None:
        extra = {"alarms": online.alarms_seen, "finetunes": [
            {"days_after_T": round((f["t"] - t_split) / 86400.0, 2)} | {k: v for k, v in f.items() if k != "t"}
            for f in online.finetunes]}
    if "nightly" in systems:
        extra["nightly_lists_computed"] = systems["nightly"].lists.computed
    replay_days = (t_end - t_split) / 86400.0
    info = {
        "events": len(log_), "events_before_T": stop, "replayed_events": stats.events, "scored_events": stats.scored,
        "skipped": dict(board.skipped), "T": t_split - data.shift_s, "replay_days": round(replay_days, 2),
        "users_new_at_T_events": int(np.sum(board.new_user)), "new_item_events": int(np.sum(board.new_item)),
        "items_released_after_T": sum(1 for t in data.released.values() if t >= t_split),
        "warm_cpu_s": round(warm_cpu, 1), "replay_wall_s": round(stats.wall_s, 1), "gru": gru_info,
        "sasrec": peer[4] if peer is not None else None,
        "fresh_policy": str(systems["live_fresh"].config.freshness) if "live_fresh" in systems else None,
    } | extra
    if worker is not None:
        info["through_worker"] = {k: v for k, v in worker.items() if k != "lists"}
    daily = {s: board.periodic(s, t_split, bin_days(board, t_split) * 86400.0) for s in systems}
    from temporal_report import plot_dataset

    png = plot_dataset(name, summary, daily, info, Path(args.img_dir), bin_days(board, t_split))
    return {"info": info, "systems": summary, "daily": daily, "png": str(png), "bin_days": bin_days(board, t_split)}


def bin_days(board, t_split: float) -> int:
    """Days per bin of the hit-rate plot: 1, or more when a day holds too few scored events to read."""
    days = max(1.0, (max(board.t) - t_split) / 86400.0) if board.t else 1.0
    per_day = len(board.t) / days
    return 1 if per_day >= 100 else int(min(14, math.ceil(100 / max(per_day, 1e-9))))


def replot(details_path: Path, img_dir: Path) -> int:
    from temporal_report import plot_dataset, print_dataset

    details = json.loads(details_path.read_text())
    for name, res in details.items():
        starts = sorted({p[0] for points in res["daily"].values() for p in points})
        bin_days = res.get("bin_days") or int(round(min(np.diff(starts), default=1.0)))  # older files lack it
        res["png"] = str(plot_dataset(name, res["systems"], res["daily"], res["info"], img_dir, bin_days))
        print_dataset(name, res)
    return 0


def main(argv=None) -> int:
    import torch
    from threadpoolctl import threadpool_limits

    from stream_rec.model.encoder import shared_encoder
    from stream_rec.settings import Settings
    from temporal_report import print_dataset

    args = parse_args(argv)
    if args.replot:
        return replot(Path(args.replot), Path(args.img_dir))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(1)
    threadpool_limits(1)
    settings = Settings.from_env()
    encoder = shared_encoder(settings.cache_dir, "cpu")
    results, details = {}, {}
    for name in args.datasets:
        res = run_dataset(name, args, encoder, settings)
        details[name] = res
        results[name] = {s: {"ndcg10": r["ndcg10"], "hr10": r["hr10"], "cpu_s_per_1k": r["cpu_s_per_1k"]}
                         for s, r in res["systems"].items()}
        print_dataset(name, res)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=2))
        Path(args.out).with_suffix(".details.json").write_text(json.dumps(details, indent=2, default=str))
    print(f"\nwrote {args.out} and {Path(args.out).with_suffix('.details.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
