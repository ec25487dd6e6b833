"""Checks of the Kubernetes manifests (deploy/k8s/) that need no cluster.

What is validated, and how:
- Kustomize structure: every resource a kustomization lists exists and parses, no manifest is left out,
  no two objects share a kind/namespace/name. ``read_layout`` is this test's reading of the layout (the
  layout uses only ``resources``, ``namespace`` and ``images``: checked); where ``kubectl`` exists,
  ``kubectl kustomize`` renders the layout and the overlay of docs/DEPLOY.md and must agree with it.
- Core objects: the Kubernetes OpenAPI schemas (PyPI ``kubernetes-validate``, strict: unknown fields fail)
  of the oldest and newest versions below.
- Prometheus Operator objects (ServiceMonitor, PrometheusRule): no CRD schema is reachable offline except
  through PyPI ``cloudcoil-models-prometheus-operator``, models generated from the operator's CRD schemas
  (types, required fields, patterns); a manifest must load into them and dump back unchanged, so unknown
  fields fail too. The rules also go through ``promtool check rules``.
- One source: the PrometheusRule and the dashboard ConfigMap are generated from deploy/prometheus/alerts.yml
  and deploy/grafana/dashboards/stream-rec.json (deploy/k8s/render_monitoring.py); stale copies fail.
- Wiring: selectors, ports, probes, volumes, settings names, security context, grace period, the Job's
  command line (parsed by the real CLI).
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import re
import shutil
import subprocess
from dataclasses import fields
from pathlib import Path

import pytest
import yaml

from test_deploy import WORKER_JOB, alert_rules, load_compose, run_promtool

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "k8s"
CRD_KINDS = {"ServiceMonitor", "PrometheusRule"}
CLUSTER_SCOPED = {"Namespace"}
K8S_VERSIONS = ("1.29.0", "1.37.0")
POD_OWNERS = {"StatefulSet", "Job"}


# --- reading the layout ---------------------------------------------------------------------------------

def read_layout(directory: Path = K8S) -> list[dict]:
    """The objects a kustomize layout produces: ``resources`` (files or sub-layouts) in order, with the
    layout's ``namespace`` set on namespaced objects and its ``images`` applied to containers."""
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unknown = set(kustomization) - {"apiVersion", "kind", "namespace", "resources", "images"}
    assert not unknown, f"{directory}: read_layout does not know {unknown}: teach it, or test with kubectl only"
    docs: list[dict] = []
    for entry in kustomization["resources"]:
        path = directory / entry
        assert path.exists(), f"{directory.relative_to(ROOT)}/kustomization.yaml lists {entry}, which does not exist"
        docs += read_layout(path) if path.is_dir() else [d for d in yaml.safe_load_all(path.read_text()) if d]
    for doc in docs:
        if kustomization.get("namespace") and doc["kind"] not in CLUSTER_SCOPED:
            doc["metadata"]["namespace"] = kustomization["namespace"]
        for container in containers(doc):
            for image in kustomization.get("images", []):
                name, _, tag = container["image"].partition(":")
                if name == image["name"]:
                    container["image"] = f"{image.get('newName', name)}:{image.get('newTag', tag)}"
    return docs


def containers(doc: dict) -> list[dict]:
    return doc["spec"]["template"]["spec"]["containers"] if doc["kind"] in POD_OWNERS else []


def by_kind(docs: list[dict]) -> dict[tuple[str, str], dict]:
    return {(d["kind"], d["metadata"]["name"]): d for d in docs}


@pytest.fixture(scope="module")
def objects() -> dict[tuple[str, str], dict]:
    return by_kind(read_layout())


def kubectl_kustomize(directory: Path) -> list[dict]:
    kubectl = shutil.which("kubectl")
    if not kubectl or subprocess.run([kubectl, "kustomize", "--help"], capture_output=True).returncode != 0:
        pytest.skip("no kubectl with kustomize on this machine (the layout is read by read_layout instead)")
    proc = subprocess.run([kubectl, "kustomize", str(directory)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


# --- structure ------------------------------------------------------------------------------------------

def test_every_manifest_is_listed_once_and_parses():
    for layout in (K8S / "base", K8S / "monitoring"):
        listed = yaml.safe_load((layout / "kustomization.yaml").read_text())["resources"]
        on_disk = sorted(p.name for p in layout.glob("*.yaml") if p.name != "kustomization.yaml")
        assert sorted(listed) == on_disk, f"{layout.relative_to(ROOT)}: listed {listed}, on disk {on_disk}"
    assert yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"] == ["base", "monitoring"]
    docs = read_layout()
    keys = [(d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"]) for d in docs]
    assert len(keys) == len(set(keys)), "two objects with the same kind, namespace and name"
    assert {d["kind"] for d in docs} == {"Namespace", "ConfigMap", "Secret", "Job", "Service", "StatefulSet",
                                         "PodDisruptionBudget", "ServiceMonitor", "PrometheusRule", "NetworkPolicy"}
    namespace = next(d for d in docs if d["kind"] == "Namespace")["metadata"]["name"]
    assert all(d["metadata"].get("namespace") == namespace for d in docs if d["kind"] != "Namespace")


def test_kubectl_kustomize_renders_what_the_layout_says():
    rendered = by_kind(kubectl_kustomize(K8S))
    assert rendered == by_kind(read_layout())


def test_overlay_from_the_docs_renders(tmp_path):
    """The overlay example of docs/DEPLOY.md: image, merged settings and a replaced Secret reach the pods."""
    deploy_md = (ROOT / "docs" / "DEPLOY.md").read_text()
    block = re.search(r"```yaml\n\s*# my-stream-rec/kustomization.yaml\n(.*?)```", deploy_md, flags=re.S).group(1)
    overlay = yaml.safe_load(block)
    overlay["resources"] = [os.path.relpath(K8S, tmp_path)]  # kustomize takes relative paths only
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump(overlay))
    (tmp_path / "secrets.env").write_text("STREAM_REC_SASL_PASSWORD=s3cret\n")
    rendered = kubectl_kustomize(tmp_path)
    pods = [c for d in rendered for c in containers(d)]
    assert pods and all(c["image"] == "REGISTRY/stream-rec:TAG" for c in pods)
    settings = next(d for d in rendered if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith(
        "stream-rec-settings"))
    assert settings["data"]["STREAM_REC_SECURITY_PROTOCOL"] == "SASL_SSL"
    assert settings["data"]["STREAM_REC_REPLICATION_FACTOR"] == "3"  # merged, not replaced
    secret = next(d for d in rendered if d["kind"] == "Secret")
    assert secret.get("data", {}).get("STREAM_REC_SASL_PASSWORD") == "czNjcmV0"  # base64("s3cret")
    assert "stringData" not in secret, "the base's empty placeholders would override the real password"
    for container in pods:  # the pods refer to the generated names (kustomize may add a hash suffix)
        refs = {next(iter(e.values()))["name"] for e in container["envFrom"]}
        assert refs == {settings["metadata"]["name"], secret["metadata"]["name"]}


# --- schemas --------------------------------------------------------------------------------------------

def test_core_objects_validate_against_the_kubernetes_schemas():
    kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate")
    docs = [d for d in read_layout() if d["kind"] not in CRD_KINDS]
    for version in K8S_VERSIONS:
        for doc in docs:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(f"{doc['kind']}/{doc['metadata']['name']} is not a valid Kubernetes {version} object: "
                            f"{exc.message} at {list(exc.path)}")
    # strict enough to be worth running: a typo'd field and a wrong type fail
    sts = copy.deepcopy(next(d for d in docs if d["kind"] == "StatefulSet"))
    sts["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(sts, K8S_VERSIONS[-1], strict=True)
    pdb = copy.deepcopy(next(d for d in docs if d["kind"] == "PodDisruptionBudget"))
    pdb["spec"]["selector"] = "app=stream-rec"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(pdb, K8S_VERSIONS[-1], strict=True)


def _operator_model(doc: dict):
    models = pytest.importorskip("cloudcoil.models.prometheus_operator.v1",
                                 reason="pip install cloudcoil-models-prometheus-operator")
    model = getattr(models, doc["kind"]).model_validate(doc)
    return model.model_dump(by_alias=True, exclude_unset=True, mode="json")


def test_operator_objects_validate_against_the_crd_models(objects):
    for kind in sorted(CRD_KINDS):
        doc = objects[(kind, "stream-rec")]
        assert doc["apiVersion"] == "monitoring.coreos.com/v1"
        assert _operator_model(doc) == doc, f"{kind}: a field the CRD does not know was dropped"
    from pydantic import ValidationError

    monitor = copy.deepcopy(objects[("ServiceMonitor", "stream-rec")])
    monitor["spec"]["endpoints"][0]["intervall"] = "15s"
    assert _operator_model(monitor) != monitor  # unknown field: dropped by the model, caught by the comparison
    monitor = copy.deepcopy(objects[("ServiceMonitor", "stream-rec")])
    monitor["spec"]["endpoints"][0]["interval"] = "15 seconds"
    with pytest.raises(ValidationError):
        _operator_model(monitor)


# --- one source for rules and dashboard -----------------------------------------------------------------

def _renderer():
    spec = importlib.util.spec_from_file_location("render_monitoring", K8S / "render_monitoring.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_rules_and_dashboard_are_generated_from_the_compose_sources(objects, tmp_path, monkeypatch):
    renderer = _renderer()
    assert renderer.main(["--check"]) == 0, "run python deploy/k8s/render_monitoring.py"
    rule = objects[("PrometheusRule", "stream-rec")]
    assert rule["spec"]["groups"] == yaml.safe_load((ROOT / "deploy/prometheus/alerts.yml").read_text())["groups"]
    dashboard = objects[("ConfigMap", "stream-rec-dashboard")]
    assert dashboard["data"]["stream-rec.json"] == (ROOT / "deploy/grafana/dashboards/stream-rec.json").read_text()
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    json.loads(dashboard["data"]["stream-rec.json"])
    rules_file = tmp_path / "rule-spec.yml"
    rules_file.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    assert f"{len(alert_rules())} rules found" in run_promtool("check", "rules", str(rules_file))
    # a changed source makes the check fail
    changed = tmp_path / "alerts.yml"
    changed.write_text((ROOT / "deploy/prometheus/alerts.yml").read_text().replace("for: 1m", "for: 2m", 1))
    monkeypatch.setattr(renderer, "ALERTS", changed)
    assert renderer.main(["--check"]) == 1


# --- wiring ---------------------------------------------------------------------------------------------

def _pod_env(doc: dict, settings: dict[str, str]) -> dict[str, str]:
    container = containers(doc)[0]
    return {**settings, **{e["name"]: e["value"] for e in container.get("env", []) if "value" in e}}


def test_worker_statefulset_wiring(objects):
    sts, svc = objects[("StatefulSet", "stream-rec")], objects[("Service", "stream-rec")]
    settings = objects[("ConfigMap", "stream-rec-settings")]["data"]
    pod = sts["spec"]["template"]
    labels = pod["metadata"]["labels"]
    # headless Service, selectors
    assert sts["spec"]["serviceName"] == svc["metadata"]["name"] and svc["spec"]["clusterIP"] == "None"
    for selector in (sts["spec"]["selector"]["matchLabels"], svc["spec"]["selector"],
                     objects[("PodDisruptionBudget", "stream-rec")]["spec"]["selector"]["matchLabels"]):
        assert selector.items() <= labels.items()
    assert objects[("PodDisruptionBudget", "stream-rec")]["spec"]["maxUnavailable"] == 1
    monitor = objects[("ServiceMonitor", "stream-rec")]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert {e["port"] for e in monitor["spec"]["endpoints"]} <= {p["name"] for p in svc["spec"]["ports"]}
    # the Service's name is the job label of the ServiceMonitor's targets: what the alerts select
    assert svc["metadata"]["name"] == WORKER_JOB and all(f'job="{WORKER_JOB}"' in r["expr"] for r in alert_rules()
                                                          if "stream_rec_" in r["expr"] or "up{" in r["expr"])
    # one HTTP listener: metrics, probes and Service on STREAM_REC_METRICS_PORT
    (container,) = pod["spec"]["containers"]
    env = _pod_env(sts, settings)
    port = int(env["STREAM_REC_METRICS_PORT"])
    assert env["STREAM_REC_METRICS_HOST"] == "0.0.0.0"
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {"http": port}
    assert svc["spec"]["ports"][0]["port"] == port
    # lookups are redirected to the owner's pod DNS name under this headless Service, on the listener's port
    downward = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in container["env"] if "valueFrom" in e}
    assert downward == {"POD_NAME": "metadata.name", "POD_NAMESPACE": "metadata.namespace"}
    names = [e["name"] for e in container["env"]]
    assert names.index("STREAM_REC_ADVERTISED_URL") > max(names.index("POD_NAME"), names.index("POD_NAMESPACE"))
    assert env["STREAM_REC_ADVERTISED_URL"] == f"http://$(POD_NAME).{svc['metadata']['name']}.$(POD_NAMESPACE).svc:{port}"
    assert svc["spec"]["publishNotReadyAddresses"] is True  # not-ready pods are still scraped and reachable
    probes = {k: (container[k]["httpGet"]["path"], container[k]["httpGet"]["port"])
              for k in ("startupProbe", "livenessProbe", "readinessProbe")}
    assert probes == {"startupProbe": ("/healthz", "http"), "livenessProbe": ("/healthz", "http"),
                      "readinessProbe": ("/readyz", "http")}
    compose_health = " ".join(load_compose()["services"]["worker"]["healthcheck"]["test"])
    assert "/readyz" in compose_health  # compose's healthcheck and the readiness probe ask the same question
    # state and caches on writable volumes; the root filesystem read-only
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]

    def volume_of(path: str) -> str:
        return next(name for mount, name in sorted(mounts.items(), reverse=True) if path.startswith(mount + "/"))

    assert volume_of(env["STREAM_REC_DATA_DIR"]) == claim["metadata"]["name"]
    assert volume_of(env["STREAM_REC_CACHE_DIR"]) == claim["metadata"]["name"]  # encoder extraction survives restarts
    emptydirs = {v["name"] for v in pod["spec"]["volumes"] if "emptyDir" in v}
    assert mounts["/tmp"] in emptydirs and env["HOME"] == "/tmp"
    security, pod_security = container["securityContext"], pod["spec"]["securityContext"]
    assert security["readOnlyRootFilesystem"] and not security["allowPrivilegeEscalation"]
    assert security["capabilities"]["drop"] == ["ALL"]
    image_uid = int(re.search(r"--uid (\d+)", (ROOT / "deploy" / "Dockerfile").read_text()).group(1))
    assert pod_security["runAsNonRoot"] and pod_security["runAsUser"] == image_uid
    assert pod_security["fsGroup"] == pod_security["runAsGroup"]
    # a clean Faust shutdown fits in the grace period (mode stops each service within shutdown_timeout)
    from mode.services import Service

    assert pod["spec"]["terminationGracePeriodSeconds"] > Service.shutdown_timeout
    # sizing: requests within limits, at most one worker per partition
    res = container["resources"]
    assert _cpu(res["requests"]["cpu"]) >= 1 and _cpu(res["requests"]["cpu"]) <= _cpu(res["limits"]["cpu"])
    assert _bytes(res["requests"]["memory"]) <= _bytes(res["limits"]["memory"])
    assert sts["spec"]["replicas"] <= int(settings["STREAM_REC_PARTITIONS"])
    assert pod["spec"]["enableServiceLinks"] is False  # Kubernetes would inject STREAM_REC_* service variables


def _cpu(quantity: str) -> float:
    return float(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


def _bytes(quantity: str) -> int:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30}
    return int(quantity[:-2]) * units[quantity[-2:]] if quantity[-2:] in units else int(quantity)


def test_settings_are_real_settings_and_secrets_stay_secret(objects):
    from stream_rec.settings import ENV_PREFIX, Settings

    known = {ENV_PREFIX + f.name.upper() for f in fields(Settings)}
    settings = objects[("ConfigMap", "stream-rec-settings")]["data"]
    secret = objects[("Secret", "stream-rec-secrets")]["stringData"]
    pod_env = {e["name"] for d in objects.values() for c in containers(d) for e in c.get("env", [])}
    for source, names in (("ConfigMap", set(settings)), ("Secret", set(secret)),
                          ("env", {n for n in pod_env if n.startswith(ENV_PREFIX)})):
        assert names <= known, f"{source}: unknown settings {sorted(names - known)}"
    assert {"STREAM_REC_SASL_PASSWORD", "STREAM_REC_PSEUDONYMIZE_KEY"} <= set(secret)
    assert not set(settings) & {"STREAM_REC_SASL_PASSWORD", "STREAM_REC_PSEUDONYMIZE_KEY"}
    assert all(value == "" for value in secret.values()), "placeholders only: real secrets go in an overlay"
    s = Settings.from_env({**settings, **secret})  # the ConfigMap parses as settings
    assert s.replication_factor >= 2 and 1 <= s.min_insync_replicas < s.replication_factor


def test_lookups_need_the_token_and_only_admitted_namespaces_reach_the_listener(objects):
    """Issue 23: the lookup answers any user's list to whoever reaches a pod. In Kubernetes the token is
    required (the worker refuses to start without one) and comes from the Secret; a NetworkPolicy admits
    only Prometheus's namespace and the namespaces labelled to ask, on the listener's port only."""
    from stream_rec.settings import Settings
    from stream_rec.worker.access import TokenMissing, check_token_setting

    settings = objects[("ConfigMap", "stream-rec-settings")]["data"]
    secret = objects[("Secret", "stream-rec-secrets")]["stringData"]
    sts = objects[("StatefulSet", "stream-rec")]
    assert "STREAM_REC_HTTP_TOKEN" in secret and "STREAM_REC_HTTP_TOKEN" not in settings
    assert {"secretRef": {"name": "stream-rec-secrets"}} in containers(sts)[0]["envFrom"]
    s = Settings.from_env({**settings, **secret})
    assert s.http_token_required and s.metrics_host == "0.0.0.0"
    with pytest.raises(TokenMissing):  # the base's empty placeholder: the pods refuse to serve lookups openly
        check_token_setting(s.http_token, s.http_token_required)
    policy = objects[("NetworkPolicy", "stream-rec-listener")]
    pod_labels = sts["spec"]["template"]["metadata"]["labels"]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= pod_labels.items()
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    (rule,) = policy["spec"]["ingress"]
    assert rule["ports"] == [{"port": "http", "protocol": "TCP"}]  # the container port named http: the listener
    assert all(set(peer) == {"namespaceSelector"} and peer["namespaceSelector"]["matchLabels"] for peer in rule["from"])
    admitted = [peer["namespaceSelector"]["matchLabels"] for peer in rule["from"]]
    assert admitted == [{"kubernetes.io/metadata.name": "monitoring"}, {"stream-rec.io/listener": "allowed"}]


def test_topics_job_runs_the_topic_spec_with_the_workers_settings(objects):
    from stream_rec.cli import build_parser

    job, sts = objects[("Job", "stream-rec-topics")], objects[("StatefulSet", "stream-rec")]
    (container,) = containers(job)
    args = build_parser().parse_args(container["args"])
    assert (args.command, args.action) == ("topics", "create") and args.wait_s > 0
    assert container["envFrom"] == containers(sts)[0]["envFrom"]
    assert container["image"] == containers(sts)[0]["image"]
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "OnFailure"
    assert job["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"]
    assert container["securityContext"]["readOnlyRootFilesystem"]


# --- read-only root filesystem ----------------------------------------------------------------------------

_WRITE = re.compile(r'\b(openat|open|creat|mkdir|mkdirat|rename|renameat2?|unlink|unlinkat)\((?:AT_FDCWD, |\d+, )?'
                    r'"([^"]+)"(.*)$')


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_worker_writes_only_where_the_pod_has_writable_volumes(broker, tmp_path):
    """readOnlyRootFilesystem: a worker serving a trained model (text encoder on: catalog vectors, context
    queries) under strace, handling events and stopping on SIGTERM, creates or opens for writing only
    paths under STREAM_REC_DATA_DIR and STREAM_REC_CACHE_DIR (the pod's volume), the temp dir and HOME
    (the pod's /tmp emptyDir), /dev/shm (a tmpfs in every pod) and its own thread names in /proc."""
    import asyncio
    import os
    import signal
    import sys
    import time

    from conftest import make_settings, produce, scrape, wait_until
    from stream_rec.io.kafka import ensure_topics
    from stream_rec_devtools.demo_model import demo_model_dir

    strace = shutil.which("strace")
    if not strace:
        pytest.skip("no strace on this machine")
    model = demo_model_dir(progress=False)
    volume, tmp = tmp_path / "state", tmp_path / "tmp"  # the pod's mount points exist before the worker starts
    volume.mkdir()
    tmp.mkdir()
    settings = make_settings(broker, volume / "tables", cache_dir=volume / "cache")
    asyncio.run(ensure_topics(settings))
    env = {**os.environ, **settings.to_env(), "HOME": str(tmp), "TMPDIR": str(tmp), "STREAM_REC_MODEL": str(model)}
    env.pop("XDG_CACHE_HOME", None)
    trace = tmp_path / "strace.log"
    proc = subprocess.Popen([strace, "-f", "-qq", "-o", str(trace), "-e",
                             "trace=open,openat,creat,mkdir,mkdirat,rename,renameat,renameat2,unlink,unlinkat",
                             sys.executable, "-m", "stream_rec", "worker"], env=env, cwd=tmp,
                            stdout=subprocess.DEVNULL, stderr=(tmp_path / "worker.log").open("w"))
    try:
        url = f"http://{settings.metrics_host}:{settings.metrics_port}/metrics"

        def consumed() -> float:
            try:
                return scrape(url).get("stream_rec_events_consumed_total", -1.0)
            except OSError:
                return -1.0

        wait_until(lambda: consumed() >= 0, timeout_s=240, message="the worker's metrics")
        items = json.loads((model / "items.json").read_text())["item_ids"][:20]
        events = [{"user_id": f"u{k % 5}", "item_id": items[k % 20], "event_type": "view", "timestamp": time.time(),
                   **({"context": {"text": "something calm for tonight"}} if k % 7 == 0 else {})} for k in range(50)]
        produce(settings, settings.topic("events"), events)
        wait_until(lambda: consumed() >= 50, timeout_s=120, message="the worker to consume 50 events")
    finally:
        worker_pid = int(Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()[0])
        os.kill(worker_pid, signal.SIGTERM)
        try:
            proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            os.kill(worker_pid, signal.SIGKILL)
            proc.wait(timeout=30)
    writable = (str(volume) + "/", str(tmp) + "/", "/dev/shm/", "/dev/null", "/proc/self/")  # procfs: thread names
    written = set()
    for line in trace.read_text().splitlines():
        m = _WRITE.search(line)
        if not m or (m.group(1).startswith("open") and not re.search(r"O_WRONLY|O_RDWR|O_CREAT", m.group(3))):
            continue
        if not m.group(2).startswith(writable):
            written.add(f"{m.group(1)} {m.group(2)}")
    assert (volume / "cache" / "encoders").is_dir(), "the encoder was not used: the check proves less than it says"
    assert not written, sorted(written)
