"""A real Prometheus scrapes a real worker; the dashboard's queries return what the worker did.

Setup: the session's embedded broker (tests/conftest.py), one ``stream-rec worker`` subprocess, the
Debian ``prometheus`` binary (2.x, installed by deploy/ensure-test-tools.sh) scraping it every second
with the repository's own alert rules loaded. We publish a known number of events (some of them
invalid) and then ask Prometheus's HTTP API -- not the worker -- for the series the dashboard uses.

Skips (with the reason) when no ``prometheus`` binary is installed.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

from stream_rec.io.broker import free_port
from stream_rec_devtools.synthetic import make_world

from conftest import WorkerProcess, produce, scrape, wait_until, write_items
from test_deploy import PROM_DIR, WORKER_JOB, dashboard_targets, grafana_to_promql

N_INVALID = 3


class PrometheusProcess:
    """``prometheus`` on a free localhost port, scraping ``targets`` every second as job stream-rec,
    with deploy/prometheus/alerts.yml loaded (so a rule that cannot evaluate shows up as unhealthy)."""

    def __init__(self, workdir: Path, targets: list[str]):
        self.workdir = workdir
        self.targets = targets
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.log_path = workdir / "prometheus.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "PrometheusProcess":
        binary = shutil.which("prometheus")
        if not binary:
            pytest.skip("prometheus binary not installed (make test installs it: deploy/ensure-test-tools.sh)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        shutil.copy(PROM_DIR / "alerts.yml", self.workdir / "alerts.yml")
        config = {"global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                  "rule_files": ["alerts.yml"],
                  "scrape_configs": [{"job_name": WORKER_JOB, "static_configs": [{"targets": self.targets}]}]}
        (self.workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [binary, f"--config.file={self.workdir / 'prometheus.yml'}",
             f"--storage.tsdb.path={self.workdir / 'tsdb'}", f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        wait_until(lambda: urllib.request.urlopen(self.url + "/-/ready", timeout=2).status == 200,
                   timeout_s=30, message="prometheus /-/ready")
        return self

    def api(self, path: str, **params) -> dict:
        query = urllib.parse.urlencode(params)
        with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{query}", timeout=10) as resp:
            body = json.load(resp)
        assert body["status"] == "success", body
        return body["data"]

    def query(self, promql: str) -> list[dict]:
        return self.api("query", query=promql)["result"]

    def scalar(self, promql: str) -> float | None:
        """Value of a one-element instant vector (None when empty)."""
        result = self.query(promql)
        return float(result[0]["value"][1]) if result else None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc is not None:
            self._log.close()

    def __enter__(self) -> "PrometheusProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


WORLD = make_world(n_users=12, events_per_user=(6, 10), seed=3)


def fresh_events() -> list[dict]:
    """The synthetic events re-stamped to now (in order), so event->rec latency is a real latency."""
    now = time.time()
    return [dict(e, timestamp=round(now + i * 0.0001, 4)) for i, e in enumerate(WORLD.events)]


@pytest.mark.timeout(240)
def test_prometheus_scrapes_the_worker_and_dashboard_queries_answer(spine_settings, tmp_path):
    if not shutil.which("prometheus"):
        pytest.skip("prometheus binary not installed (make test installs it: deploy/ensure-test-tools.sh)")
    settings = spine_settings
    target = f"{settings.metrics_host}:{settings.metrics_port}"
    with WorkerProcess(settings, tmp_path / "worker", items=write_items(tmp_path, WORLD.items)) as worker, \
            PrometheusProcess(tmp_path / "prometheus", [target]) as prom:
        wait_until(lambda: prom.scalar(f'up{{job="{WORKER_JOB}"}}') == 1.0, timeout_s=90,
                   message=f"Prometheus to scrape the worker at {target} (worker log: {worker.log_tail(1500)})")
        events = fresh_events()
        produce(settings, settings.topic("events"), events, key_field="user_id")
        produce(settings, settings.topic("events"), [b"{not json"] * N_INVALID, keys=[b"someone"] * N_INVALID)
        total = len(events) + N_INVALID

        # The counter as Prometheus stored it equals what we produced.
        consumed = wait_until(
            lambda: prom.scalar(f'sum(stream_rec_events_consumed_total{{job="{WORKER_JOB}"}})') == total,
            timeout_s=90, message=f"stream_rec_events_consumed_total == {total} in Prometheus")
        assert consumed
        assert prom.scalar("sum(stream_rec_events_dlq_total)") == N_INVALID
        assert prom.scalar('sum(stream_rec_events_invalid_total{reason="bad_json"})') == N_INVALID

        # Recommendations are one per user per micro-batch (not per event): Prometheus must hold what the
        # worker itself exports, once both have settled.
        users = len({e["user_id"] for e in events})

        def worker_metrics_once_every_user_got_a_recommendation():
            own = scrape(worker.metrics_url())
            return own if own.get("stream_rec_recommendations_emitted_total", 0) >= users else None

        own = wait_until(worker_metrics_once_every_user_got_a_recommendation, timeout_s=30,
                         message=f">= {users} recommendations")
        for series in ("stream_rec_recommendations_emitted_total", "stream_rec_event_to_recommendation_seconds_count",
                       "stream_rec_consume_to_recommendation_seconds_count"):
            wait_until(lambda: prom.scalar(f"sum({series})") == scrape(worker.metrics_url())[series],
                       timeout_s=15, message=f"{series} in Prometheus == the worker's own value")
        assert users <= own["stream_rec_recommendations_emitted_total"] <= len(events)

        # deploy/render_dashboard.py (the PNG) computes quantiles exactly like Prometheus does.
        from test_deploy import _load_renderer

        renderer = _load_renderer()
        mine = renderer.histogram_quantile(0.99, renderer.buckets(scrape(worker.metrics_url()),
                                                                   "stream_rec_event_to_recommendation_seconds"))
        theirs = prom.scalar("histogram_quantile(0.99, sum by (le) (stream_rec_event_to_recommendation_seconds_bucket))")
        assert mine == pytest.approx(theirs, rel=1e-9)

        # Give rate() windows two samples after the last change, then evaluate every dashboard query.
        time.sleep(3)
        answers = {}
        for title, expr in dashboard_targets():
            promql = grafana_to_promql(expr)
            if promql.startswith("label_values("):
                continue
            answers[(title, promql)] = prom.query(promql)  # status "success" is asserted in api()
        by_expr = {promql: result for (_, promql), result in answers.items()}

        def value(promql_start: str) -> float:
            """Largest finite value of the dashboard query that starts like this (over its series)."""
            results = [r for q, r in by_expr.items() if q.startswith(promql_start)]
            assert results, f"no dashboard query starts with {promql_start!r}"
            values = [float(s["value"][1]) for s in results[0]]
            finite = [v for v in values if math.isfinite(v)]
            assert finite, f"{promql_start!r} returned no finite value: {results[0]}"
            return max(finite)

        assert value("sum(rate(stream_rec_events_consumed_total") > 0
        assert value("sum(rate(stream_rec_recommendations_emitted_total") > 0
        p99 = value("histogram_quantile(0.99, sum by (le) (rate(stream_rec_event_to_recommendation_seconds_bucket")
        assert math.isfinite(p99) and 0 < p99 < 10, p99
        assert value("histogram_quantile(0.5, sum by (le, stage) (rate(stream_rec_model_step_seconds_bucket") > 0
        assert value("sum(up{") == 1.0
        empty = [title for (title, _), result in answers.items() if not result]
        # Panels that may legitimately be empty on a 3-second test: nothing drifted, reloaded or was duplicated.
        assert len(empty) <= len(answers) // 2, f"too many empty dashboard queries: {empty}"

        # The repository's alert rules loaded and evaluate without errors against real series.
        groups = prom.api("rules")["groups"]
        rules = [r for g in groups for r in g["rules"]]
        assert {r["name"] for r in rules} >= {"StreamRecWorkerDown", "StreamRecLatencyP99OverBudget"}
        assert all(r["health"] in ("ok", "unknown") for r in rules), [(r["name"], r.get("lastError")) for r in rules]
        assert not [r for r in rules if r["name"] == "StreamRecWorkerDown" and r["state"] != "inactive"]
