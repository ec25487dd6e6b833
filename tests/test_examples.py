"""examples/producer.py and examples/consumer.py run end to end against the real embedded broker and a
real worker: the producer's catalog and events come out as recommendations that the consumer prints and
that follow topics/recommendations.schema.json."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import WorkerProcess, scrape, wait_until

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


def run_example(name: str, *args: str, timeout_s: float = 90) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, str(EXAMPLES / name), *args], capture_output=True, text=True,
                          timeout=timeout_s, cwd=ROOT)
    assert proc.returncode == 0, f"{name} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


def test_help_explains_every_flag():
    for name in ("producer.py", "consumer.py"):
        out = run_example(name, "--help").stdout
        assert "--bootstrap" in out and "--security-protocol" in out and "--sasl-username" in out


@pytest.mark.timeout(240)
def test_producer_and_consumer_examples_round_trip(spine_settings, tmp_path):
    jsonschema = pytest.importorskip("jsonschema")
    settings = spine_settings
    topic = settings.topic
    common = ["--bootstrap", settings.broker, "--topic", topic("events"), "--catalog-topic", topic("catalog"),
              "--no-idempotence"]  # the embedded broker has no idempotent producers
    catalog_file = str(EXAMPLES / "sample-catalog.jsonl")
    out = run_example("producer.py", *common, "--catalog", catalog_file, "--count", "0").stdout
    assert "published 48 catalog records" in out

    with WorkerProcess(settings, tmp_path / "worker") as worker:
        # Events of items the worker has not read from `catalog` yet are dead-lettered (unknown_item):
        # wait until it has applied the catalog before producing.
        wait_until(lambda: scrape(worker.metrics_url()).get("stream_rec_catalog_items_total") == 48,
                   timeout_s=90, message="the worker to apply the 48 catalog records")
        out = run_example("producer.py", *common, "--catalog", catalog_file, "--count", "40", "--users", "5").stdout
        assert "published 40 events" in out
        proc = run_example("consumer.py", "--bootstrap", settings.broker, "--topic", topic("recommendations"),
                           "--group", f"{settings.app_id}-example-reader", "--from-beginning", "--json",
                           "--max", "5", "--idle-exit-s", "60", timeout_s=120)
    assert "published 48 catalog records" in out
    records = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    assert len(records) == 5, f"{proc.stderr}\nworker log:\n{worker.log_tail()}"
    schema = json.loads((ROOT / "topics" / "recommendations.schema.json").read_text())
    catalog = {json.loads(line)["item_id"] for line in (EXAMPLES / "sample-catalog.jsonl").read_text().splitlines()}
    for rec in records:
        jsonschema.validate(rec, schema)
        assert rec["user_id"].startswith("user-")
        assert rec["items"] and {i["item_id"] for i in rec["items"]} <= catalog


@pytest.mark.timeout(120)
def test_consumer_idle_exit_counts_from_the_last_record(spine_settings):
    """--idle-exit-s 4 with a record every ~1.5 s: the consumer keeps reading, and stops about 4 s after
    the last one. (Summing idle polls over the run, it used to stop after the 4th gap: >= 1 idle poll each.)"""
    from conftest import produce

    settings = spine_settings
    topic = settings.topic("recommendations")

    def rec(n: int) -> dict:
        return {"user_id": f"u{n}", "items": [{"item_id": "a", "score": 0.5}]}

    produce(settings, topic, [rec(0)])
    proc = subprocess.Popen([sys.executable, str(EXAMPLES / "consumer.py"), "--bootstrap", settings.broker,
                             "--topic", topic, "--group", f"{settings.app_id}-idle", "--from-beginning", "--json",
                             "--idle-exit-s", "4"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        seen = [json.loads(proc.stdout.readline())["user_id"]]
        for n in range(1, 6):
            time.sleep(1.5)
            produce(settings, topic, [rec(n)])
            line = proc.stdout.readline()
            assert line, f"the consumer stopped after {seen} although records kept coming: {proc.stderr.read()}"
            seen.append(json.loads(line)["user_id"])
        last = time.monotonic()
        assert proc.wait(timeout=30) == 0
        idle = time.monotonic() - last
    finally:
        proc.kill()
    assert seen == [f"u{n}" for n in range(6)]
    assert 3.5 < idle < 15, idle
