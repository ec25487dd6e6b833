#!/usr/bin/env python3
"""Screenshots of the worker's pages and the dashboard preview, from a real demo run (``make screenshots``).

    python deploy/screenshots.py                      # docs/img/ui-*.png and docs/img/dashboard-preview.png
    python deploy/screenshots.py --rate 100 --duration 90 --out docs/img

Runs ``stream-rec demo`` (embedded broker, a worker serving the demo's trained model, the synthetic producer
at ``--rate``) as a child process and, while it runs:

* once the worker has caught up with what waited for it at start, scrapes its ``/metrics`` once a second
  for ``--duration`` seconds, then draws the dashboard's key panels from those scrapes
  (deploy/render_dashboard.py) into ``dashboard-preview.png``;
* then opens the pages in a headless Chromium (Debian's ``chromium`` + ``chromedriver``, stream_rec_devtools/
  browser.py) and saves ``ui-find.png`` (a search), ``ui-user.png`` (the user the demo prints, right after a
  live update), ``ui-item.png`` (the item this worker showed most) and ``ui-system.png`` (after the charts
  filled), each as tall as its page.

Then the demo is stopped (Ctrl-C, as a terminal would) and the figures of the run are printed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import render_dashboard  # noqa: E402  (the script beside this one)

from stream_rec.io.broker import free_port  # noqa: E402
from stream_rec_devtools import browser  # noqa: E402


def start_demo(rate: float, port: int, workdir: Path) -> tuple[subprocess.Popen, Path]:
    log = workdir / "demo.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "STREAM_REC_LOG_LEVEL": "warning"}
    proc = subprocess.Popen([sys.executable, "-m", "stream_rec", "demo", "--rate", str(rate), "--metrics-port",
                             str(port), "--data-dir", str(workdir / "demo")], stdout=open(log, "w"),
                            stderr=subprocess.STDOUT, env=env, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    return proc, log


def wait_for(predicate, timeout_s: float, what: str, proc: subprocess.Popen, log: Path):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the demo exited while waiting for {what}; see {log}")
        try:
            value = predicate()
            if value:
                return value
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"timed out waiting for {what}; see {log}")


def drained(series: dict) -> bool:
    """The worker has caught up with the events that waited for it to start (the model, the encoder)."""
    p99, lag = series["p99_ms"][-5:], series["lag"][-5:]
    return len(p99) == 5 and all(v is not None and v < 1000 for v in p99) and all(v == 0 for v in lag)


def get_json(url: str) -> dict:
    return json.loads(urllib.request.urlopen(url, timeout=10).read())


def shoot(driver, out: Path, width: int = 1280) -> None:
    """Save the page as tall as it is (at least 760 px)."""
    height = driver.execute_script("return Math.ceil(document.documentElement.scrollHeight)")
    driver.set_window_size(width, max(760, height) + 90)  # + the headless window's frame
    time.sleep(0.4)
    driver.save_screenshot(str(out))
    print(f"wrote {out}")


def pages(base: str, user_url: str, out: Path) -> None:
    with browser.chromium(width=1280, height=900) as driver:
        driver.get(base + "/ui/")
        box = driver.find_element("id", "q")
        box.send_keys("space")
        box.submit()
        time.sleep(2.0)
        shoot(driver, out / "ui-find.png")

        driver.get(user_url)
        before = time.monotonic()
        while time.monotonic() - before < 60:  # right after a live update, its marks still on screen
            if driver.execute_script("return document.querySelectorAll('#list li.is-new, #list .tag').length > 0"):
                break
            time.sleep(0.1)
        time.sleep(0.3)
        shoot(driver, out / "ui-user.png")

        top = get_json(base + "/ui/api/home")["top_items"]
        driver.get(base + "/ui/items/" + urllib.request.quote(top[0]["item_id"], safe=""))
        time.sleep(2.0)
        shoot(driver, out / "ui-item.png")

        driver.get(base + "/ui/system")
        time.sleep(3.0)
        shoot(driver, out / "ui-system.png")


def stop_demo(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C: the demo stops its worker and broker itself
        try:
            proc.wait(90)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Screenshots of the worker's pages and the dashboard preview, from a "
                                             "real `stream-rec demo` run.")
    ap.add_argument("--out", type=Path, default=Path("docs/img"), help="directory of the PNGs")
    ap.add_argument("--rate", type=float, default=50.0, help="the demo's events per second")
    ap.add_argument("--duration", type=float, default=90.0, help="seconds of /metrics scrapes for the dashboard")
    args = ap.parse_args(argv)
    if browser.unavailable():
        print(f"screenshots: {browser.unavailable()}", file=sys.stderr)
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="stream-rec-screenshots-"))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc, log = start_demo(args.rate, port, workdir)
    try:
        user_url = wait_for(lambda: (m := re.search(r"in a browser: (http://\S+/ui/users/\S+) ", log.read_text()))
                            and m.group(1), 600, "the demo's worker", proc, log)
        wait_for(lambda: urllib.request.urlopen(base + "/readyz", timeout=5).status == 200, 120, "readiness", proc, log)
        wait_for(lambda: get_json(base + "/ui/api/home")["top_items"], 60, "the first lists", proc, log)
        wait_for(lambda: drained(get_json(base + "/ui/api/system")["series"]), 180,
                 "the start-up backlog to drain (p99 under 1 s, lag 0)", proc, log)
        # the scrapes first, alone: a browser starting on the same cores would show in the latency panels
        times, samples = render_dashboard.scrape_loop(base + "/metrics", args.duration, 1.0)
        pages(base, user_url, args.out)
        summary = render_dashboard.render(times, samples, args.out / "dashboard-preview.png",
                                          title=f"stream-rec demo at {args.rate:g} events/s")
        print(f"wrote {args.out / 'dashboard-preview.png'}: " + ", ".join(f"{k}={v:.1f}" for k, v in summary.items()))
    finally:
        stop_demo(proc)
    print(f"demo log: {log}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
