"""Checks of the ops files that need no Docker engine (there is none on our machines or in CI).

What is validated, and how:
- docker-compose.yml: interpolated like Compose does (``${VAR:-default}``), then parsed by the strict
  compose-spec parser (PyPI ``compose-spec``, the Rust ``compose_spec`` crate: unknown keys, bad
  durations, bad device requests are errors); cross-references (depends_on, named volumes, bind-mount
  sources, build context, Dockerfile COPY sources) checked here; ``docker compose config`` too when a
  Compose CLI is present (it is not on our machines: the test then skips). The worker entrypoint's
  state-directory slots are run with /bin/sh and flock; the command lines parse with the real CLI.
- Prometheus: ``promtool check config`` / ``check rules`` / ``test rules`` (unit tests of every alert).
- Grafana: the dashboard JSON is well formed (unique ids, non-overlapping grid, the provisioned
  datasource uid); every PromQL expression of its panels is written into a rules file as a recording
  rule (Grafana's ``$__rate_interval`` / ``$instance`` replaced by what Grafana would send) and
  checked by promtool.
- Metric names: every ``stream_rec_*`` name and every ``by (...)`` label in the dashboard and the alerts
  exists in stream_rec/metrics.py's REGISTRY (histogram ``_bucket/_sum/_count``, counter ``_total``).
  That the worker really exports them is tests/test_prometheus_scrape.py's job.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
DEPLOY = ROOT / "deploy"
PROM_DIR = DEPLOY / "prometheus"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "stream-rec.json"
DATASOURCES = DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
DASHBOARD_PROVIDERS = DEPLOY / "grafana" / "provisioning" / "dashboards" / "stream-rec.yml"
WORKER_JOB = "stream-rec"

# Grafana variables -> what Grafana substitutes before sending the query to Prometheus.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "1h", "$instance": ".*"}
# Labels that Prometheus adds to every scraped series (not defined in metrics.py).
TARGET_LABELS = {"job", "instance", "le"}
# What the dashboard must show (issue 6): metric -> why.
REQUIRED_DASHBOARD_METRICS = {
    "stream_rec_events_consumed_total": "events/s",
    "stream_rec_recommendations_emitted_total": "recs/s",
    "stream_rec_events_dlq_total": "DLQ rate",
    "stream_rec_event_to_recommendation_seconds_bucket": "latency p50/p95/p99",
    "stream_rec_batch_size_events_sum": "batch size",
    "stream_rec_model_step_seconds_bucket": "model step time",
    "stream_rec_consumer_lag_messages": "consumer lag",
    "up": "workers up / per-worker breakdown",
}
REQUIRED_ALERTS = {"StreamRecWorkerDown", "StreamRecConsumerLagGrowing", "StreamRecDLQRate",
                   "StreamRecLatencyP99OverBudget"}


# --- helpers ----------------------------------------------------------------------------------------

_COMPOSE_VAR = re.compile(r"\$\$|\$\{(\w+)(?::?-([^}]*))?\}")


def interpolate(value, env: dict[str, str] | None = None):
    """Compose's variable interpolation (``${VAR}``, ``${VAR:-default}``, ``$$`` -> ``$``), defaults only."""
    env = env or {}
    if isinstance(value, str):
        return _COMPOSE_VAR.sub(lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(2) or ""), value)
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    return value


def load_compose() -> dict:
    return interpolate(yaml.safe_load(COMPOSE.read_text()))  # safe_load resolves the `<<` merge keys


def promtool() -> str:
    path = shutil.which("promtool")
    if not path:
        pytest.skip("promtool not installed (make test installs it: deploy/ensure-test-tools.sh)")
    return path


def run_promtool(*args: str, cwd: Path | None = None) -> str:
    proc = subprocess.run([promtool(), *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, f"promtool {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def dashboard_targets() -> list[tuple[str, str]]:
    """(panel title, PromQL expression) of every query in the dashboard, rows included."""
    dash = json.loads(DASHBOARD.read_text())
    out = []

    def walk(panels):
        for p in panels:
            for t in p.get("targets", []):
                out.append((p.get("title", "?"), t["expr"]))
            walk(p.get("panels", []))

    walk(dash["panels"])
    for var in dash.get("templating", {}).get("list", []):
        q = var.get("query")
        if var.get("type") == "query" and isinstance(q, dict):
            out.append((f"variable {var['name']}", q["query"]))
    return out


def grafana_to_promql(expr: str) -> str:
    for var, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(var, value)
    assert "$" not in expr, f"unknown Grafana variable left in {expr!r}"
    return expr


def alert_rules() -> list[dict]:
    return [r for g in yaml.safe_load((PROM_DIR / "alerts.yml").read_text())["groups"] for r in g["rules"]]


def exported_metrics() -> dict[str, set[str]]:
    """Series name -> label names, for every metric in stream_rec.metrics.REGISTRY.

    prometheus_client strips ``_total`` from a counter's family name and exposes histograms as
    ``_bucket`` (+ ``le``), ``_sum`` and ``_count``; a labelled metric with no children yet has no
    samples, so the names come from the definitions, not from a scrape."""
    from prometheus_client.metrics import MetricWrapperBase

    from stream_rec import metrics

    out: dict[str, set[str]] = {}
    for obj in vars(metrics).values():
        if not isinstance(obj, MetricWrapperBase):
            continue
        labels = set(obj._labelnames)
        name, kind = obj._name, obj._type
        if kind == "counter":
            out[name + "_total"] = labels
            out[name + "_created"] = labels
        elif kind == "histogram":
            out[name + "_bucket"] = labels | {"le"}
            out[name + "_sum"] = labels
            out[name + "_count"] = labels
            out[name + "_created"] = labels
        elif kind == "summary":
            out[name] = labels | {"quantile"}
            out[name + "_sum"] = labels
            out[name + "_count"] = labels
        else:  # gauge, info, enum
            out[name] = labels
    return out


_METRIC_NAME = re.compile(r"\bstream_rec_[a-zA-Z0-9_]+")
_BY_CLAUSE = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")
_LABEL_MATCHER = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)\s*\"")


def metric_names_in(expr: str) -> set[str]:
    return set(_METRIC_NAME.findall(expr))


# --- docker-compose.yml -------------------------------------------------------------------------------

def test_compose_file_is_valid_compose_spec():
    compose_spec = pytest.importorskip("compose_spec", reason="pip install compose-spec (test extra)")
    parsed = compose_spec.PyCompose.from_json(json.dumps(load_compose()))
    assert {"kafka", "kafka-init", "worker", "worker-gpu", "producer", "prometheus", "grafana"} <= set(
        parsed.service_names())


def test_compose_spec_parser_rejects_mistakes():
    """The parser above is strict enough to be worth running: a typo'd key and a bad duration fail."""
    compose_spec = pytest.importorskip("compose_spec", reason="pip install compose-spec (test extra)")
    for broken in ({"image": "x", "restrat": "always"},
                   {"image": "x", "healthcheck": {"test": ["CMD", "true"], "interval": "soon"}}):
        doc = load_compose()
        doc["services"]["broken"] = broken
        with pytest.raises(ValueError):
            compose_spec.PyCompose.from_json(json.dumps(doc))


def test_docker_compose_config_when_a_compose_cli_exists():
    """`docker compose config` validates without an engine, but needs the Compose plugin."""
    docker = shutil.which("docker")
    if not docker or subprocess.run([docker, "compose", "version"], capture_output=True).returncode != 0:
        pytest.skip("no `docker compose` CLI on this machine (validated with compose-spec instead)")
    proc = subprocess.run([docker, "compose", "-f", str(COMPOSE), "--profile", "gpu", "--profile", "producer",
                           "config", "--quiet"], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_compose_cross_references_resolve():
    doc = load_compose()
    services, volumes = doc["services"], set(doc.get("volumes") or {})
    for name, svc in services.items():
        for dep in svc.get("depends_on", {}):
            assert dep in services, f"{name} depends on unknown service {dep}"
        for mount in svc.get("volumes", []):
            source = mount.split(":")[0]
            if source.startswith((".", "/")):
                assert (ROOT / source).exists(), f"{name}: bind-mount source {source} does not exist"
            else:
                assert source in volumes, f"{name}: named volume {source} is not declared under volumes:"
        build = svc.get("build")
        if build:
            context = ROOT / build["context"]
            assert (context / build["dockerfile"]).is_file(), f"{name}: Dockerfile missing"


def test_compose_operational_settings():
    services = load_compose()["services"]
    for name in ("kafka", "worker", "worker-gpu", "prometheus", "grafana"):
        assert "healthcheck" in services[name], f"{name} has no healthcheck"
        assert services[name].get("restart") in {"unless-stopped", "always"}, f"{name} has no restart policy"
    assert services["kafka-init"]["restart"] == "on-failure"

    kafka = services["kafka"]["environment"]
    assert kafka["KAFKA_PROCESS_ROLES"] == "broker,controller"  # KRaft, single node
    assert kafka["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false", "topics come from the topic spec only"
    assert str(kafka["KAFKA_NODE_ID"]) in kafka["KAFKA_CONTROLLER_QUORUM_VOTERS"]
    assert services["kafka"]["image"].startswith("apache/kafka:")

    worker = services["worker"]
    assert worker["environment"]["STREAM_REC_METRICS_HOST"] == "0.0.0.0", "Prometheus scrapes from another container"
    assert worker["environment"]["STREAM_REC_BROKER"] == "kafka:19092"
    assert any(m.endswith(":/var/lib/stream-rec") for m in worker["volumes"]), "RocksDB state must be on a volume"
    assert worker["depends_on"]["kafka-init"]["condition"] == "service_completed_successfully"
    assert "/readyz" in " ".join(worker["healthcheck"]["test"]), "healthy = ready, not just /metrics answering"
    assert "/readyz" in (DEPLOY / "Dockerfile").read_text().split("HEALTHCHECK", 1)[1]

    gpu = services["worker-gpu"]
    assert gpu["profiles"] == ["gpu"] and gpu["environment"]["STREAM_REC_DEVICE"] == "cuda"
    device = gpu["deploy"]["resources"]["reservations"]["devices"][0]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    assert services["producer"]["profiles"] == ["producer"]
    for name in ("kafka-init", "producer", "worker", "worker-gpu"):  # `up` never tries to pull stream-rec:latest
        assert services[name]["image"].startswith("stream-rec:") and services[name]["build"]["dockerfile"]


def test_disabled_faust_web_server_is_not_configured_or_exposed():
    """Faust's web server is off (app.py): no port, host or EXPOSE for it in the deploy files."""
    texts = {path: path.read_text() for path in [COMPOSE, DEPLOY / "Dockerfile", ROOT / "docs" / "DEPLOY.md",
                                                 *sorted((DEPLOY / "k8s").rglob("*.yaml"))]}
    for path, text in texts.items():
        for needle in ("STREAM_REC_WEB_", "web-port", "6066"):
            assert needle not in text, f"{path.relative_to(ROOT)} mentions {needle}"
    assert re.search(r"^EXPOSE 9108$", texts[DEPLOY / "Dockerfile"], flags=re.M)


def test_every_stream_rec_container_shares_the_kafka_settings():
    """The init job creates the topics that workers and producer use: same broker, app id (the changelog's
    name), prefix, partitions and replication (one anchor in docker-compose.yml)."""
    services = load_compose()["services"]
    keys = ("STREAM_REC_BROKER", "STREAM_REC_APP_ID", "STREAM_REC_TOPIC_PREFIX", "STREAM_REC_PARTITIONS",
            "STREAM_REC_REPLICATION_FACTOR", "STREAM_REC_MIN_INSYNC_REPLICAS")
    expected = {k: services["worker"]["environment"][k] for k in keys}
    for name in ("kafka-init", "worker-gpu", "producer"):
        assert {k: services[name]["environment"].get(k) for k in keys} == expected, name
    assert services["grafana"]["ports"] == ["3000:3000"]


def test_compose_worker_environment_names_real_settings():
    """A misspelt STREAM_REC_* variable would be silently ignored by the worker."""
    from dataclasses import fields

    from stream_rec.settings import ENV_PREFIX, Settings

    known = {ENV_PREFIX + f.name.upper() for f in fields(Settings)}
    for name, svc in load_compose()["services"].items():
        env = svc.get("environment") or {}
        used = {k for k in env if k.startswith(ENV_PREFIX)}
        assert used <= known, f"{name}: unknown settings {sorted(used - known)}"
    dockerfile_env = set(re.findall(r"\b(STREAM_REC_[A-Z_]+)=", (DEPLOY / "Dockerfile").read_text()))
    assert dockerfile_env <= known, sorted(dockerfile_env - known)


def test_compose_commands_are_valid_stream_rec_command_lines():
    """The `command:` lists are argv of `stream-rec` (the image's entrypoint, or the workers' entrypoint
    script that execs it): parse them with the real CLI parser, so a renamed or removed flag breaks this
    test, not a deployment."""
    from stream_rec.cli import build_parser

    services = load_compose()["services"]
    script = services["worker"]["entrypoint"][-1]
    mount = next(m for m in services["worker"]["volumes"] if m.split(":")[1] == script)
    assert 'exec stream-rec "$@"' in (ROOT / mount.split(":")[0]).read_text()
    assert services["kafka-init"]["command"][:2] == ["topics", "create"]
    parser = build_parser()
    for name in ("worker", "worker-gpu", "producer", "kafka-init"):
        argv = services[name]["command"]
        try:
            args = parser.parse_args(argv)
        except SystemExit:
            pytest.fail(f"{name}: `stream-rec {' '.join(argv)}` is not a valid command line")
        assert args.command == argv[0]


def test_worker_entrypoint_gives_each_running_container_a_stable_state_dir(tmp_path):
    """Run the compose entrypoint with /bin/sh and a stand-in `stream-rec` that prints its state dir, then
    sleeps (a running worker). Two running workers get two slots; when one stops, a new (re-created)
    container gets its slot back instead of a new directory named after its hostname."""
    if not shutil.which("flock"):
        pytest.skip("no flock (util-linux) on this machine; the image has it")
    stub = tmp_path / "bin" / "stream-rec"
    stub.parent.mkdir()
    stub.write_text('#!/bin/sh\necho "$STREAM_REC_DATA_DIR|$*"\nexec sleep 60\n')
    stub.chmod(0o755)
    worker = load_compose()["services"]["worker"]
    script = next(m.split(":")[0] for m in worker["volumes"] if m.split(":")[1] == worker["entrypoint"][-1])
    env = {"PATH": f"{stub.parent}:/usr/bin:/bin", "STATE_ROOT": str(tmp_path / "state"), "HOSTNAME": "3f2a9c1b7d4e"}

    def start() -> tuple[subprocess.Popen, str]:
        proc = subprocess.Popen([worker["entrypoint"][0], str(ROOT / script), *worker["command"]], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        return proc, proc.stdout.readline().strip()

    first, out1 = start()
    second, out2 = start()
    try:
        assert out1 == f"{tmp_path}/state/slot-0|worker --items-file /catalog/items.jsonl"
        assert out2.startswith(f"{tmp_path}/state/slot-1|")
        first.kill()
        first.wait(timeout=10)
        third, out3 = start()  # the re-created container
        third.kill()
        assert out3.startswith(f"{tmp_path}/state/slot-0|")
    finally:
        for proc in (first, second):
            proc.kill()
            proc.wait(timeout=10)
    assert sorted(p.name for p in (tmp_path / "state").iterdir()) == ["slot-0", "slot-1"]


def test_dockerfile_copies_files_that_exist():
    text = (DEPLOY / "Dockerfile").read_text()
    for line in re.findall(r"^COPY\s+(?!--from)(.+)$", text, flags=re.M):
        sources = [s for s in line.split()[:-1] if not s.startswith("--")]
        for src in sources:
            assert (ROOT / src).exists(), f"Dockerfile copies {src}, which is not in the repository"


def test_shell_scripts_parse():
    for shell, script in (("bash", DEPLOY / "ensure-test-tools.sh"), ("sh", DEPLOY / "compose" / "worker-entrypoint.sh")):
        subprocess.run([shell, "-n", str(script)], check=True)
        assert os.access(script, os.X_OK), f"{script} is not executable"


# --- Prometheus ---------------------------------------------------------------------------------------

def test_prometheus_config_and_rules_are_valid():
    run_promtool("check", "config", str(PROM_DIR / "prometheus.yml"))  # also checks rule_files
    run_promtool("check", "rules", str(PROM_DIR / "alerts.yml"))


def test_alerts_fire_on_their_conditions():
    """promtool unit tests (deploy/prometheus/alerts.test.yml): each alert fires on a bad series with the
    expected labels and annotations, and stays quiet on a healthy one."""
    out = run_promtool("test", "rules", "alerts.test.yml", cwd=PROM_DIR)
    assert "SUCCESS" in out


def test_required_alerts_exist():
    rules = alert_rules()
    assert REQUIRED_ALERTS <= {r["alert"] for r in rules}
    for r in rules:
        assert r["labels"]["severity"] in {"warning", "critical"}
        assert r["annotations"]["summary"] and r["annotations"]["description"]


def latency_budget_s() -> float:
    """The p99 threshold of StreamRecLatencyP99OverBudget (the one latency budget)."""
    p99 = next(r for r in alert_rules() if r["alert"] == "StreamRecLatencyP99OverBudget")
    return float(re.search(r"\)\s*>\s*([0-9.]+)\s*$", p99["expr"].strip()).group(1))


def test_latency_budget_is_one_number_above_the_measured_p99():
    """The alert, the dashboard's red thresholds and the PNG renderer use the same budget, and it sits above
    the p99 that docs/DEPLOY.md measures for a healthy worker (else the alert fires in steady state)."""
    budget = latency_budget_s()
    dash = json.loads(DASHBOARD.read_text())
    latency_panels = [p for p in dash["panels"] if any("event_to_recommendation" in t.get("expr", "")
                                                       for t in p.get("targets", []))]
    steps = [s["value"] for p in latency_panels for s in p["fieldConfig"]["defaults"]["thresholds"]["steps"]
             if s["value"] is not None]
    assert steps and set(steps) == {budget}
    assert _load_renderer().LATENCY_BUDGET_S == budget
    assert f"{budget * 1000:.0f} ms" in next(r for r in alert_rules()
                                             if r["alert"] == "StreamRecLatencyP99OverBudget")["annotations"]["summary"]
    deploy_md = (ROOT / "docs" / "DEPLOY.md").read_text()
    measured = re.search(r"p50/p99 event→recommendation \*\*(\d+)/(\d+)–(\d+) ms\*\*", deploy_md)
    assert measured, "docs/DEPLOY.md no longer states the measured p99"
    assert budget * 1000 > int(measured.group(3))
    assert f"> {budget * 1000:.0f} ms" in deploy_md, "the alert table of docs/DEPLOY.md states the budget"


def test_prometheus_scrapes_every_worker_container_by_a_stable_name():
    """Compose names replicas <project>-<service>-<n>; the scrape job asks DNS for those names, and the
    relabelling turns the name (not the container's IP) into `instance`."""
    config = yaml.safe_load((PROM_DIR / "prometheus.yml").read_text())
    job = next(j for j in config["scrape_configs"] if j["job_name"] == WORKER_JOB)
    compose = load_compose()
    port = int(compose["services"]["worker"]["environment"]["STREAM_REC_METRICS_PORT"])
    names = [n for sd in job["dns_sd_configs"] for n in sd["names"]]
    assert all(sd["port"] == port and sd["type"] == "A" for sd in job["dns_sd_configs"])
    for service, replicas in (("worker", 16), ("worker-gpu", 4)):
        assert [n for n in names if re.fullmatch(rf"{compose['name']}-{service}-\d+", n)] == [
            f"{compose['name']}-{service}-{i}" for i in range(1, replicas + 1)]
    (relabel,) = job["relabel_configs"]
    assert relabel["source_labels"] == ["__meta_dns_name"] and relabel["target_label"] == "instance"
    instances = [re.sub(rf"^(?:{relabel['regex']})$", relabel.get("replacement", "$1").replace("$1", r"\1"), n)
                 for n in names]
    assert instances[:2] == ["worker-1", "worker-2"] and len(set(instances)) == len(names)
    for svc in compose["services"].values():  # nobody relies on the old shared DNS alias any more
        assert "networks" not in svc or "workers" not in str(svc["networks"])


# --- Grafana ------------------------------------------------------------------------------------------

def test_dashboard_is_well_formed():
    dash = json.loads(DASHBOARD.read_text())
    assert dash["uid"] == "stream-rec" and dash["title"] == "stream-rec"
    datasource_uid = yaml.safe_load(DATASOURCES.read_text())["datasources"][0]["uid"]
    ids, cells = set(), set()
    for p in dash["panels"]:
        assert p["id"] not in ids, f"duplicate panel id {p['id']}"
        ids.add(p["id"])
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24, f"panel {p['title']} outside the 24-column grid"
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"panel {p['title']!r} overlaps another one"
                cells.add((x, y))
        if p["type"] != "row":
            assert p["datasource"]["uid"] == datasource_uid, p["title"]
            assert p["targets"], f"panel {p['title']} has no query"
            for t in p["targets"]:
                assert t["datasource"]["uid"] == datasource_uid and t["expr"].strip()


def test_dashboard_promql_is_valid(tmp_path):
    """Every panel query, as Grafana would send it, parses as PromQL (promtool check rules)."""
    rules = [{"record": f"dashboard:query_{i}", "expr": grafana_to_promql(expr)}
             for i, (_, expr) in enumerate(dashboard_targets())]
    # label_values() is a Grafana function, not PromQL: check its inner selector instead.
    for r in rules:
        m = re.fullmatch(r"label_values\((.*),\s*\w+\)", r["expr"])
        if m:
            r["expr"] = m.group(1)
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    out = run_promtool("check", "rules", str(path))
    assert f"{len(rules)} rules found" in out


def test_dashboard_shows_what_operators_need():
    used = set()
    for _, expr in dashboard_targets():
        used |= metric_names_in(expr) | ({"up"} if re.search(r"\bup\{", expr) else set())
    missing = {m: why for m, why in REQUIRED_DASHBOARD_METRICS.items() if m not in used}
    assert not missing, f"dashboard lacks {missing}"
    exprs = " ".join(e for _, e in dashboard_targets())
    for q in ("0.5", "0.95", "0.99"):
        assert f"histogram_quantile({q}, sum by (le) (rate(stream_rec_event_to_recommendation_seconds_bucket" in exprs
    assert "by (instance)" in exprs, "per-worker breakdown"


def test_grafana_provisioning_points_at_the_dashboard():
    providers = yaml.safe_load(DASHBOARD_PROVIDERS.read_text())["providers"]
    path = providers[0]["options"]["path"]
    mounts = load_compose()["services"]["grafana"]["volumes"]
    assert f"./deploy/grafana/dashboards:{path}:ro" in mounts
    datasource = yaml.safe_load(DATASOURCES.read_text())["datasources"][0]
    assert datasource["type"] == "prometheus" and datasource["url"] == "http://prometheus:9090"


# --- metric names -------------------------------------------------------------------------------------

def all_expressions() -> list[tuple[str, str]]:
    return [(f"dashboard panel {t!r}", e) for t, e in dashboard_targets()] + [
        (f"alert {r['alert']}", r["expr"]) for r in alert_rules()]


def test_every_metric_used_is_exported_by_the_worker():
    exported = exported_metrics()
    assert "stream_rec_events_consumed_total" in exported and "stream_rec_model_step_seconds_bucket" in exported
    for where, expr in all_expressions():
        unknown = metric_names_in(expr) - set(exported)
        assert not unknown, f"{where} uses {sorted(unknown)}, which stream_rec/metrics.py does not define"


def test_every_label_used_is_defined():
    exported = exported_metrics()
    for where, expr in all_expressions():
        names = metric_names_in(expr)
        allowed = TARGET_LABELS.union(*(exported[n] for n in names)) if names else TARGET_LABELS
        used = {lbl.strip() for clause in _BY_CLAUSE.findall(expr) for lbl in clause.split(",") if lbl.strip()}
        used |= set(_LABEL_MATCHER.findall(expr))
        assert used <= allowed, f"{where} uses labels {sorted(used - allowed)} that its metrics do not have"


def test_metric_name_check_catches_a_typo():
    assert metric_names_in('rate(stream_rec_events_consumd_total[1m])') - set(exported_metrics())


# --- examples -----------------------------------------------------------------------------------------

def _load_example(name: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"example_{name}", ROOT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_example_producer_events_follow_the_contract():
    from stream_rec.validation import Event, validate_event

    producer = _load_example("producer")
    event = producer.make_event("user-1", "space-01", "click", value=1.0, context={"text": "from the app"})
    key, value = producer.encode_event(event)
    assert key == b"user-1"
    assert isinstance(validate_event(value, key=key), Event)
    with pytest.raises(ValueError):
        producer.make_event("user-1", "space-01", "teleport")
    from stream_rec.validation import EVENT_TYPES

    assert set(producer.EVENT_TYPES) == EVENT_TYPES  # every interaction type the worker accepts
    for negative in ("dislike", "skip"):  # negative feedback (topics/README.md)
        assert isinstance(validate_event(producer.encode_event(producer.make_event("u", "i", negative))[1], key=b"u"),
                          Event)
    validate = producer.schema_validator()
    if validate is None:
        pytest.skip("topics/events.schema.json not there yet")
    validate(event)
    for line in (ROOT / "examples" / "sample-events.jsonl").read_text().splitlines():
        validate(json.loads(line))


def test_example_consumer_parses_recommendations():
    consumer = _load_example("consumer")
    rec = consumer.parse_recommendation(b"u1", json.dumps(
        {"user_id": "u1", "items": [{"item_id": "a", "score": 0.5}], "latency_ms": 3.0}).encode())
    assert consumer.format_recommendation(rec) == "u1: a (0.500)  [3.0 ms in worker]"
    assert consumer.parse_recommendation(b"u1", b"not json") is None


# --- deploy/render_dashboard.py -----------------------------------------------------------------------

def _load_renderer():
    import importlib.util

    spec = importlib.util.spec_from_file_location("render_dashboard", DEPLOY / "render_dashboard.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_renderer_quantile_matches_prometheus_semantics():
    """Same buckets as the p99 case of alerts.test.yml, where promtool computes 99 ms."""
    r = _load_renderer()
    cumulative = [(0.02, 50.0), (0.05, 50.0), (0.1, 100.0), (float("inf"), 100.0)]
    assert r.histogram_quantile(0.99, cumulative) == pytest.approx(0.099)
    assert r.histogram_quantile(0.5, cumulative) == pytest.approx(0.02)  # rank on a bucket bound
    assert r.histogram_quantile(0.25, cumulative) == pytest.approx(0.01)  # first bucket starts at 0
    assert r.histogram_quantile(0.99, [(0.1, 0.0), (float("inf"), 5.0)]) == 0.1  # +Inf bucket -> last bound
    assert r.histogram_quantile(0.5, [(0.1, 0.0), (float("inf"), 0.0)]) != r.histogram_quantile(0.5, [])  # NaN


def test_renderer_draws_a_png_from_samples(tmp_path):
    """Synthetic scrapes (100 events/s, latencies in the 10-20 ms bucket) -> the panels and a PNG."""
    r = _load_renderer()
    times, samples = [], []
    for s in range(12):
        n = 100.0 * s
        samples.append({
            "stream_rec_events_consumed_total": n, "stream_rec_recommendations_emitted_total": n / 2,
            'stream_rec_event_to_recommendation_seconds_bucket{le="0.01"}': 0.0,
            'stream_rec_event_to_recommendation_seconds_bucket{le="0.02"}': n,
            'stream_rec_event_to_recommendation_seconds_bucket{le="+Inf"}': n,
            'stream_rec_batch_size_events_sum{stage="events"}': n,
            'stream_rec_batch_size_events_count{stage="events"}': n / 10,
            "stream_rec_consumer_lag_messages": 3.0})
        times.append(1000.0 + s)
    p = r.panels(times, samples, window_s=5)
    assert p["events_per_s"][-1] == pytest.approx(100.0) and p["recs_per_s"][-1] == pytest.approx(50.0)
    assert 0.01 < p["p50"][-1] < 0.02 and p["batch_mean"][-1] == pytest.approx(10.0)
    out = tmp_path / "dash.png"
    summary = r.render(times, samples, out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and summary["events"] == 1100.0
