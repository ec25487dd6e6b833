"""The /readyz timeline of workers on an embedded broker: a worker that starts without a catalog, a second
worker joining on an empty data dir (it recovers its partitions from the changelog), then a restart of the
second worker on its data dir. Prints a line each time a worker's answer changes (status, what is
missing, its partitions), with the seconds since the first worker started.

    python benchmarks/readyz_timeline.py [--partitions 2] [--poll-s 0.1]

The same steps as tests/test_worker_http.py, which asserts what this prints; docs/DEPLOY.md shows a run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from stream_rec.io.broker import EmbeddedBroker, free_port
from stream_rec.io.kafka import ensure_topics, produce_json
from stream_rec_devtools.synthetic import make_catalog
from stream_rec_devtools import harness


def readyz(worker: harness.WorkerProcess) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(worker.url("/readyz"), timeout=3) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())
    except OSError:
        return 0, {}


class Timeline:
    def __init__(self):
        self.t0 = time.monotonic()
        self.last: dict[str, tuple] = {}

    def say(self, text: str) -> None:
        print(f"t={time.monotonic() - self.t0:6.1f} s  {text}", flush=True)

    def poll(self, name: str, worker: harness.WorkerProcess) -> tuple[int, dict]:
        status, body = readyz(worker)
        seen = (status, tuple(body.get("missing", ())), tuple(body.get("partitions", ())))
        if seen != self.last.get(name):
            self.last[name] = seen
            self.say(f"{name}: {status or 'no answer'}" + (f" missing={list(seen[1])}" if seen[1] else "")
                     + (f" partitions={list(seen[2])}" if seen[2] else ""))
        return status, body


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--partitions", type=int, default=2, metavar="N", help="partitions of the events topic")
    ap.add_argument("--poll-s", type=float, default=0.1, metavar="S", help="seconds between polls")
    args = ap.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="readyz-timeline-"))
    catalog = make_catalog(4)
    items = workdir / "items.jsonl"
    items.write_text("".join(json.dumps(i) + "\n" for i in catalog))
    with EmbeddedBroker() as broker:
        s1 = harness.isolated_settings(broker.bootstrap, workdir / "data-1", "readyz", partitions=args.partitions)
        s2 = s1.replace(data_dir=workdir / "data-2", metrics_port=free_port())
        asyncio.run(ensure_topics(s1))
        timeline = Timeline()
        w1 = harness.WorkerProcess(s1, workdir / "w1", threads=1).start()
        w2 = None
        try:
            published = False
            while True:
                status, body = timeline.poll("w1", w1)
                if status == 503 and "group" not in body["missing"] and not published:
                    asyncio.run(produce_json(s1, s1.topic(s1.catalog_topic), catalog, "item_id"))
                    published = True
                    timeline.say("(catalog published)")
                if status == 200:
                    break
                time.sleep(args.poll_s)
            for step in ("second worker starts", "second worker restarts (SIGTERM, same data dir)"):
                timeline.say(f"--- {step}")
                if w2 is not None:
                    w2.stop()
                w2 = harness.WorkerProcess(s2, workdir / "w2", items=items, threads=1).start()
                while True:
                    answers = [timeline.poll(name, w) for name, w in (("w1", w1), ("w2", w2))]
                    if all(status == 200 and len(body["partitions"]) < args.partitions for status, body in answers):
                        break
                    time.sleep(args.poll_s)
        finally:
            for w in (w1, w2):
                if w is not None:
                    w.stop()


if __name__ == "__main__":
    main()
