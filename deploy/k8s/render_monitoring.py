#!/usr/bin/env python3
"""Writes the Kubernetes copies of the alert rules and the Grafana dashboard from their one source.

    python deploy/k8s/render_monitoring.py           # rewrite deploy/k8s/monitoring/{prometheus-rule,grafana-dashboard}.yaml
    python deploy/k8s/render_monitoring.py --check   # exit 1 if they differ from their sources (tests/test_k8s.py)

Sources: deploy/prometheus/alerts.yml (the compose Prometheus loads it as it is) becomes the
PrometheusRule's spec.groups; deploy/grafana/dashboards/stream-rec.json (the compose Grafana provisions it)
becomes a ConfigMap labelled for the Grafana dashboard sidecar (kube-prometheus-stack's default label).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "stream-rec.json"
RULE_FILE = HERE / "monitoring" / "prometheus-rule.yaml"
DASHBOARD_FILE = HERE / "monitoring" / "grafana-dashboard.yaml"
LABELS = {"app.kubernetes.io/name": "stream-rec", "app.kubernetes.io/part-of": "stream-rec"}


class _BlockDumper(yaml.SafeDumper):
    """Multi-line strings (PromQL, the dashboard JSON) as literal blocks, so the files stay readable."""


def _str(dumper: yaml.SafeDumper, data: str):
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style="|" if "\n" in data else None)


_BlockDumper.add_representer(str, _str)


def prometheus_rule() -> dict:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return {"apiVersion": "monitoring.coreos.com/v1", "kind": "PrometheusRule",
            "metadata": {"name": "stream-rec", "labels": dict(LABELS)}, "spec": {"groups": groups}}


def dashboard_configmap() -> dict:
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "stream-rec-dashboard", "labels": {**LABELS, "grafana_dashboard": "1"}},
            "data": {DASHBOARD.name: DASHBOARD.read_text()}}


def render() -> dict[Path, str]:
    """File -> its content, generated from the sources."""
    out = {}
    for path, doc, source in ((RULE_FILE, prometheus_rule(), ALERTS), (DASHBOARD_FILE, dashboard_configmap(), DASHBOARD)):
        name = source.relative_to(ROOT) if source.is_relative_to(ROOT) else source
        header = f"# GENERATED from {name} by deploy/k8s/render_monitoring.py: edit the source and run it again.\n"
        out[path] = header + yaml.dump(doc, Dumper=_BlockDumper, sort_keys=False, width=120, allow_unicode=True)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--check", action="store_true", help="only compare; exit 1 when a generated file is stale")
    args = p.parse_args(argv)
    stale = [path for path, text in render().items() if not path.is_file() or path.read_text() != text]
    if args.check:
        for path in stale:
            print(f"{path.relative_to(ROOT)} differs from its source: run python deploy/k8s/render_monitoring.py",
                  file=sys.stderr)
        return 1 if stale else 0
    for path, text in render().items():
        path.write_text(text)
    print(f"wrote {len(stale)} file(s)" if stale else "up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
