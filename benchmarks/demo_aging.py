"""Does the embedded demo age? Runs ``stream-rec demo`` and prints, per minute, the lists it printed and the
CPU of the embedded broker and of the worker, and the broker's resident memory at the minute's end.

    nice -n 5 python benchmarks/demo_aging.py                       # --rate 200 for 600 s (issue 23, part 6)
    nice -n 5 python benchmarks/demo_aging.py --rate 20 --duration-s 1800
    nice -n 5 python benchmarks/demo_aging.py --rate 20 --duration-s 960 --demo-args "--roll-s 300"   # rolls

The demo runs as ``python -m stream_rec demo --rate R --duration-s D --synthetic-events N`` in a child
process (the code on PYTHONPATH: run it from a checkout with ``PYTHONPATH=$PWD``), with N large enough that
the producer never runs out (the demo's default of 100,000 ends at 500 s at 200 ev/s). Minute 1 starts when
the demo says it is producing; the worker's group join falls in it, so minute 2 is the reference.
The verdict line checks issue 23's bar: the broker's CPU in the last full minute at most 2x minute 2's, and
the lists of the last full minute at least 90 % of minute 2's (with ``--roll-s``: the last full minute
without a roll, whose worker restart pauses the lists). Exit status 0 when both hold.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import re
import subprocess
import sys
import threading
import time

from stream_rec_devtools.procfs import cpu_seconds, proc_status_kb


def read_lines(proc: subprocess.Popen, state: dict, lock: threading.Lock) -> None:
    """Count the demo's list lines (every stdout line not ``[demo] ...``) and catch the pids it announces."""
    for line in proc.stdout:
        with lock:
            if line.startswith("[demo]"):
                if m := re.search(r"broker pid (\d+) on (\S+)", line):
                    state["broker"], state["bootstrap"] = int(m.group(1)), m.group(2)
                elif m := re.search(r"worker pid (\d+)", line):  # again at each roll (a new process)
                    state["worker"] = int(m.group(1))
                    state.setdefault("workers", []).append(state["worker"])
                elif "rolling to topics" in line:
                    state["rolls"] = state.get("rolls", 0) + 1
                elif "producing" in line:
                    state["producing"] = time.monotonic()
            else:
                state["lists"] += 1


def sample(state: dict, lock: threading.Lock) -> tuple[int, float, float, float, int]:
    """(lists so far, broker CPU s, CPU s of every worker process the demo started, broker RSS MB, rolls)."""
    with lock:
        workers = sum(_worker_cpu(state, pid) for pid in state.get("workers", []))
        rss_mb = (proc_status_kb(state["broker"], "VmRSS") or 0) / 1024
        return state["lists"], cpu_seconds(state["broker"]), workers, rss_mb, state.get("rolls", 0)


def _worker_cpu(state: dict, pid: int) -> float:
    """A worker's CPU seconds, its last reading kept once the process is gone (a roll stopped it)."""
    seen = state.setdefault("worker_cpu", {})
    now = cpu_seconds(pid)
    if not math.isnan(now):
        seen[pid] = now
    return seen.get(pid, 0.0)


def count_batches(bootstrap: str) -> None:
    """The record batches the broker holds per partition of the events and recommendations topics."""
    from stream_rec.settings import Settings
    from stream_rec_devtools.batches import record_batches

    settings = Settings.from_env()
    for name in (settings.events_topic, settings.recommendations_topic):
        counts = asyncio.run(record_batches(bootstrap, settings.topic(name)))
        print(f"[aging] record batches in {settings.topic(name)}'s partitions: {counts}", flush=True)


def measure(proc: subprocess.Popen, minutes: int, state: dict) -> list[tuple[int, float, float, float, int]]:
    """Per full minute after the demo started producing: (lists, broker CPU s, worker CPU s, broker RSS MB at
    its end, rolls of the demo's topics in it)."""
    lock = threading.Lock()
    threading.Thread(target=read_lines, args=(proc, state, lock), daemon=True).start()
    while "producing" not in state:
        if proc.poll() is not None:
            raise SystemExit(f"the demo exited with {proc.returncode} before producing")
        time.sleep(0.2)
    rows, last = [], sample(state, lock)
    print("minute  lists  broker CPU s  worker CPU s  broker RSS MB  roll", flush=True)
    for minute in range(1, minutes + 1):
        time.sleep(max(0.0, state["producing"] + 60 * minute - time.monotonic()))
        if proc.poll() is not None:
            break
        now = sample(state, lock)
        rows.append((now[0] - last[0], now[1] - last[1], now[2] - last[2], now[3], now[4] - last[4]))
        print(f"{minute:>6} {rows[-1][0]:>6} {rows[-1][1]:>13.1f} {rows[-1][2]:>13.1f} {now[3]:>14.0f}  "
              f"{'yes' if rows[-1][4] else ''}", flush=True)
        last = now
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rate", type=float, default=200.0, help="the demo's --rate (ev/s)")
    p.add_argument("--duration-s", type=int, default=600, help="the demo's --duration-s (whole minutes count)")
    p.add_argument("--demo-args", default="", help="more arguments for the demo, e.g. '--untrained'")
    p.add_argument("--batches", action="store_true", help="count the batches the broker holds at the end (a "
                                                              "fetch per batch, each listing the partition: "
                                                              "minutes for 30,000 batches a partition)")
    args = p.parse_args()
    events = int(args.rate * (args.duration_s + 360))
    cmd = [sys.executable, "-m", "stream_rec", "demo", "--rate", f"{args.rate:g}", "--duration-s",
           str(args.duration_s + 300), "--synthetic-events", str(events), *args.demo_args.split()]
    print(f"[aging] {' '.join(cmd[1:])}", flush=True)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, errors="replace", bufsize=1,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    state = {"lists": 0}
    try:
        rows = measure(proc, args.duration_s // 60, state)
        if args.batches:
            count_batches(state["bootstrap"])
    finally:
        proc.terminate()  # SIGTERM: the demo stops its worker and broker in order
        proc.wait(timeout=120)
    if len(rows) < 3:
        print(f"[aging] only {len(rows)} full minutes measured")
        return 1
    # the last minute without a roll in it (a roll pauses the lists while the worker restarts, ~15 s)
    last = max(n for n, row in enumerate(rows) if not row[4])
    (lists2, broker2, *_), (lists_n, broker_n, *_) = rows[1], rows[last]
    ok = broker_n <= 2 * broker2 and lists_n >= 0.9 * lists2
    print(f"[aging] broker RSS {rows[1][3]:.0f} MB in minute 2, at most {max(r[3] for r in rows):.0f} MB; "
          f"{sum(r[4] for r in rows)} rolls", flush=True)
    print(f"[aging] minute 2 -> minute {last + 1}: lists {lists2} -> {lists_n} ({lists_n / max(lists2, 1):.2f}x), "
          f"broker CPU {broker2:.1f} s -> {broker_n:.1f} s ({broker_n / max(broker2, 1e-9):.2f}x): "
          f"{'holds' if ok else 'FAILS'} (bar: broker CPU <= 2x, lists >= 0.9x)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
