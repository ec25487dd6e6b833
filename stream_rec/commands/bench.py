"""`stream-rec bench`: the worker's throughput and latency beside a bare Faust consumer, same broker, same run,
on one or more models, each scenario repeated (``--repeats``, default 3) so one lucky run cannot carry a claim.

    stream-rec bench --model demo runs/models/ml-100k runs/models/ml-1m-half     # the 3 x 3 table

1. start an embedded broker, publish N synthetic events (keyed by user, P partitions);
then, in each run:
2. **bare Faust**: a minimal Faust app (stock aiokafka driver) whose agent only counts
   ``stream.take(1000, within=5 ms)`` batches -- the ceiling of Faust on this machine;
   **Faust floor**: the same plus what any worker of this shape must do, through Faust's stock paths --
   one RocksDB table write (with its changelog record) and one output record per user per micro-batch,
   fixed bytes instead of a model: the ceiling for a Faust table + changelog + one record per event;
3. **spine**: ``stream-rec worker`` (validation, RocksDB state + changelog, untrained GRU step, top-K,
   recommendation sends), read through its own /metrics;
4. **pipeline**, for each ``--model`` in turn (the trained model live, stream_rec_devtools/bench_live.py):
   ``stream-rec worker --model`` measured from the outside: saturation events/s on a backlog, then
   p50/p95/p99 event->recommendation latency at a fixed offered load (``--latency-rate``, default 1000 ev/s)
   split into legs (in: sent -> taken by the worker; worker: taken -> record built; out: built -> arrived at
   a consumer), worker CPU% and RSS, bytes of state per user (from the state table's changelog);
   **pipeline_batch1** (with ``--batch1-events N``): the same with micro-batches of one event;
   **model_stage** (first run): ``pipeline.process_batch`` alone, no Kafka.

At the end, the table: per model, the median and the min-max over the runs of p50/p95/p99, the worker
leg's p50/p99, saturation and its ratio to the Faust floor of the same run, and state bytes per user,
with the goals the medians miss marked. The JSON holds every run; a PNG plot sits beside it. The box's
load average before and after is printed: on a shared machine, compare figures of one run.

The baselines read the same N events from the beginning in their own consumer group, each in a subprocess.
Each rate is measured from the first consumed batch to the last event (so group join and model loading are
not counted): ``(N - events in the first observation) / (t_last - t_first)``. The spine's count is
"events consumed with their recommendations sent" (a batch is counted once its records are handed to
the producer; the worker awaits their acks a few batches later, and Faust flushes before committing).
"""

from __future__ import annotations

import argparse

from ._common import add_command


SUMMARY = "worker throughput and latency vs bare Faust and a Faust floor (embedded broker)"


def register(sub) -> None:
    p = add_command(sub, __name__, SUMMARY, __doc__, raw=True)
    p.add_argument("--synthetic-events", type=int, default=20000, metavar="N", help="events to publish")
    p.add_argument("--synthetic-users", type=int, default=1000, metavar="N", help="synthetic users")
    p.add_argument("--partitions", type=int, default=4, metavar="N", help="partitions of the events topic")
    p.add_argument("--batch-max-events", type=int, default=256, metavar="N", help="spine micro-batch size")
    p.add_argument("--batch-max-wait-ms", type=int, default=5, metavar="MS", help="spine micro-batch wait limit")
    p.add_argument("--skip-bare", action="store_true", help="measure the spine only")
    p.add_argument("--out", metavar="FILE", default="runs/bench-spine.json", help="JSON results file")
    p.add_argument("--timeout-s", type=float, default=300, metavar="S", help="give up on a stage after S seconds")
    p.add_argument("--model", metavar="DIR", nargs="+",
                   help="trained model(s) for the pipeline scenarios, each measured in every run; 'demo' = the demo "
                        "model of the synthetic world, trained on first use and cached (default: demo)")
    p.add_argument("--repeats", type=int, default=3, metavar="N",
                   help="runs of every scenario; the table gives the median and the min-max of each figure")
    p.add_argument("--skip-model", action="store_true", help="skip the trained-model pipeline scenarios")
    p.add_argument("--skip-spine", action="store_true", help="skip the untrained-model spine scenario")
    p.add_argument("--latency-rate", type=float, default=1000.0, metavar="EV/S", help="offered load of the latency run")
    p.add_argument("--latency-duration-s", type=float, default=10.0, metavar="S", help="how long that load is offered")
    p.add_argument("--batch1-events", type=int, default=0, metavar="N",
                   help="backlog of the batch-size-1 pipeline, run after each model's pipeline (0 = skip it)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from stream_rec_devtools.bench import run_bench

    return run_bench(args)
