"""The CLI around the spine: --help everywhere, produce/tail against the broker, and the demo end to end
(live recommendations, then Ctrl-C leaves no process behind)."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from conftest import consume, scrape
from stream_rec.cli import build_parser

SPINE_COMMANDS = ["broker", "worker", "produce", "tail", "demo", "bench"]


@pytest.mark.parametrize("command", SPINE_COMMANDS)
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args([command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "usage:" in out and len(out) > 200
    assert "--help" in out


def run_cli(*args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "stream_rec", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


def test_produce_synthetic_and_file(spine_settings, tmp_path):
    s = spine_settings
    env = s.to_env()
    done = run_cli("produce", "--synthetic-events", "30", "--synthetic-users", "5", "--no-progress", "--publish-catalog", env=env)
    assert done.returncode == 0, done.stderr
    events = consume(s, s.topic("events"), count=30, timeout_s=20)
    assert len(events) == 30
    assert all(r["key"] == r["value"]["user_id"].encode() for r in events)
    catalog = consume(s, s.topic("catalog"), count=1, timeout_s=10)
    assert catalog and catalog[0]["key"] == catalog[0]["value"]["item_id"].encode()

    csv_file = tmp_path / "events.csv"
    csv_file.write_text("userId,movieId,rating,timestamp\n7,42,4.5,1700000000\n8,43,3,1700000001\n")
    done = run_cli("produce", "--events-file", str(csv_file), "--no-progress", env=env)
    assert done.returncode == 0, done.stderr
    more = consume(s, s.topic("events"), count=32, timeout_s=20)
    assert len(more) == 32
    assert {"user_id": "7", "item_id": "42", "event_type": "rate", "timestamp": 1700000000.0, "value": 4.5} in \
        [r["value"] for r in more]  # a log the worker takes is sent as it is

    # a log older than 2000 (MovieLens-100K is from 1997-98): the worker would dead-letter every event
    # (bad_timestamp), so it is shifted to end now, its gaps kept, and produce says so
    old_file = tmp_path / "ratings.csv"
    old_file.write_text("userId,movieId,rating,timestamp\n9,44,4,881250949\n9,45,3,881250960\n")
    before = time.time()
    done = run_cli("produce", "--events-file", str(old_file), "--no-progress", env=env)
    assert done.returncode == 0, done.stderr
    assert "before 2000-01-01" in done.stdout and "shifting it by +" in done.stdout and "ends now" in done.stdout
    shifted = sorted(r["value"]["timestamp"] for r in consume(s, s.topic("events"), count=34, timeout_s=20)
                     if r["value"]["user_id"] == "9")
    assert len(shifted) == 2 and shifted[1] - shifted[0] == pytest.approx(11.0)
    assert before - 1 <= shifted[1] <= time.time() + 1


def _port_open(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def _page_status(url: str, timeout_s: float = 20.0) -> int:
    """The status of ``url`` once it is 200, else the last one seen within ``timeout_s``."""
    deadline, status = time.monotonic() + timeout_s, 0
    while time.monotonic() < deadline and status != 200:
        try:
            status = urllib.request.urlopen(url, timeout=5).status
        except urllib.error.HTTPError as err:  # 404 until the user's first event is applied
            status = err.code
            time.sleep(0.5)
    return status


def _n_events(page_url: str, default: int = 0) -> int:
    """The user's event count from the page's data (``/ui/api/users/``); ``default`` while
    the user has no state yet (404)."""
    try:
        return json.loads(urllib.request.urlopen(page_url.replace("/ui/users/", "/ui/api/users/"),
                                                 timeout=10).read())["n_events"]
    except urllib.error.HTTPError:
        return default


def test_demo_shows_live_recommendations_rolls_its_topics_and_stops_cleanly(tmp_path):
    """The demo's tail prints lists; after ``--roll-s`` it moves to new topics, its worker restarting on them
    with every user's state (the printed user's event count goes on from where it was); Ctrl-C then leaves
    nothing running."""
    proc = subprocess.Popen([sys.executable, "-m", "stream_rec", "demo", "--data-dir", str(tmp_path / "demo"),
                             "--rate", "30", "--roll-s", "20"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
                            # Ctrl-C as a terminal delivers it: a test run started in the background by a
                            # non-interactive shell inherits SIGINT *ignored*, and so would the demo
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    lines, recs, rolled, page, before, after = [], [], [], None, 0, None
    deadline = time.monotonic() + 180
    try:
        while time.monotonic() < deadline and len(rolled) < 3:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            found = page or re.search(r"in a browser: (http://\S+/ui/users/\S+) ", "".join(lines))
            if found and page is None:
                page = found.group(1)
            if " seen [" in line and "->" in line:
                (rolled if any("rolling to topics" in seen for seen in lines) else recs).append(line)
                if not rolled and len(recs) % 20 == 3:  # the last count before the roll
                    before = _n_events(page, before)
        status = _page_status(page) if page else None  # the address printed beside the tail
        after = _n_events(page) if page and rolled else None
        # the restarted worker applies the new topic's events: none skipped as a redelivery although its
        # offsets start at 0 again (Settings.events_epoch; a fresh process, so its counter is the roll's)
        duplicates = scrape(page.split("/ui/")[0] + "/metrics").get("stream_rec_events_duplicate_total") if page else None
    finally:
        proc.send_signal(signal.SIGINT)  # what Ctrl-C does
        try:
            rest, _ = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired as exc:  # leave nothing running, and show where it was stuck
            proc.kill()
            rest = (exc.output or b"").decode(errors="replace") if isinstance(exc.output, bytes) else (exc.output or "")
            rest += proc.communicate()[0] or ""
            for found in re.finditer(r"worker pid (\d+)", "".join(lines)):
                os.kill(int(found.group(1)), signal.SIGKILL)
            pytest.fail("the demo did not stop within 60 s of Ctrl-C; its output ends:\n" + rest[-6000:])
    output = "".join(lines) + rest
    assert len(recs) >= 3 and len(rolled) >= 3, output[-3000:]  # lists before and after the roll
    assert status == 200, output[-3000:]  # the printed page of a user answers while the demo runs
    # the user's state went on across the worker's restart (a fresh state would count the few events since)
    assert after >= before >= 5, (before, after)
    assert duplicates == 0, duplicates
    assert "untrained-" not in recs[0]  # the demo serves a model trained on its synthetic world (issue 5)
    assert proc.returncode == 0, output[-3000:]
    worker_pids = [int(pid) for pid in re.findall(r"worker pid (\d+)", output)]
    broker_pid = int(re.search(r"broker pid (\d+)", output).group(1))
    bootstrap = re.search(r"on (127\.0\.0\.1):(\d+)", output)
    assert len(worker_pids) >= 2, worker_pids  # the first worker, and the one restarted on the new topics
    for pid in (*worker_pids, broker_pid):
        assert not os.path.exists(f"/proc/{pid}") or "Z" in open(f"/proc/{pid}/stat").read().split()[2], \
            f"process {pid} left running"
    assert not _port_open(bootstrap.group(1), int(bootstrap.group(2)))


@pytest.mark.slow
def test_bench_runs_its_baselines_and_writes_figures(tmp_path):
    """`stream-rec bench` without the model scenarios: bare Faust, the Faust floor and the spine each
    consume the whole backlog in their own process and report a rate (no timing is asserted). Slow-marked:
    a benchmark's smoke test (27 s), run with the benchmarks (`make test-slow`)."""
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, "-m", "stream_rec", "bench", "--synthetic-events", "2000", "--synthetic-users", "100",
                           "--skip-model", "--repeats", "1", "--timeout-s", "120", "--out", str(out)],
                          capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads(out.read_text())
    (run,) = results["runs"]
    for name in ("bare_faust", "faust_floor", "spine"):
        assert run[name]["count"] >= 2000, name
        assert run[name]["events_per_s"] > 0, name
    assert run["spine"]["recommendations"] > 0
