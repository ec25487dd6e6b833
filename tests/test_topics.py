"""The one topic spec (stream_rec.io.topics.TOPIC_LAYOUT): what ensure_topics creates on the embedded broker,
what Faust declares for its own topics, how refusals are reported, and `stream-rec topics`.

About the embedded Tansu broker: it answers DescribeConfigs with exactly the configs set at creation
(a real Kafka broker adds its defaults), so the configs of every created topic are compared with the spec
as they are. It also accepts any replication factor (it keeps one copy and reports N identical replicas)
and never refuses a CreateTopics entry except with TopicAlreadyExists, so an impossible replication factor
is refused by ensure_topics itself (it compares with the brokers in the cluster metadata), and the per-topic
error path of a real broker is checked on a CreateTopics response encoded in Kafka's wire format.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import subprocess
import sys
import types

import pytest

from conftest import REPO, make_settings
from stream_rec.io.kafka import describe_topics, ensure_topics
from stream_rec.io.topics import TOPIC_LAYOUT, TopicError, check_create_response, topic_spec, topic_specs
from stream_rec.settings import Settings


def test_settings_read_replication_from_the_environment():
    s = Settings.from_env({"STREAM_REC_REPLICATION_FACTOR": "3", "STREAM_REC_MIN_INSYNC_REPLICAS": "2"})
    assert (s.replication_factor, s.min_insync_replicas) == (3, 2)
    assert (Settings().replication_factor, Settings().min_insync_replicas) == (1, 0)


def test_spec_covers_every_topic_with_its_replication():
    s = Settings(partitions=6, topic_prefix="team-a.", app_id="team-a-rec", replication_factor=3, min_insync_replicas=2)
    specs = {spec.role: spec for spec in topic_specs(s)}
    assert set(specs) == set(TOPIC_LAYOUT)
    assert specs["events"].name == "team-a.events" and specs["events"].partitions == 6
    # Faust's own topics are named by the app id, not the topic prefix, and co-partitioned with events
    assert specs["changelog"].name == "team-a-rec-user-state-changelog"
    assert specs["changelog"].partitions == 6 and specs["changelog"].cleanup_policy == "compact"
    assert specs["catalog"].configs == {"cleanup.policy": "compact", "min.insync.replicas": "2"}
    assert specs["recommendations"].configs["retention.ms"] == str(6 * 3600 * 1000)
    assert all(spec.replication_factor == 3 for spec in specs.values())


@pytest.mark.parametrize("rf, min_isr, message", [(0, 0, "at least 1"), (1, 2, "min.insync.replicas 2"),
                                                  (2, -1, "min.insync.replicas -1")])
def test_spec_refuses_impossible_replication_settings(rf, min_isr, message):
    with pytest.raises(TopicError, match=message):
        topic_specs(Settings(replication_factor=rf, min_insync_replicas=min_isr))


def test_faust_declares_its_topics_as_the_spec_says(tmp_path):
    """The worker's Faust app gets the replication factor, and its changelog the spec's partitions and
    configs (min ISR included), under the spec's names."""
    from stream_rec.worker.app import build_app

    s = Settings(data_dir=tmp_path, app_id="spec-check", partitions=5, replication_factor=3, min_insync_replicas=2)
    ctx = build_app(s, services=types.SimpleNamespace())  # the model is not needed to declare topics
    app, changelog = ctx.app, ctx.table.changelog_topic
    spec = topic_spec(s, "changelog")
    assert app.conf.topic_replication_factor == 3
    assert changelog.get_topic_name() == spec.name and changelog.partitions == spec.partitions
    assert changelog.compacting and changelog.config == spec.configs
    assert app._leader_assignor._leader_topic_name == topic_spec(s, "leader").name


def test_ensure_topics_creates_every_topic_with_the_spec_configs(broker, tmp_path):
    settings = make_settings(broker, tmp_path, partitions=3, min_insync_replicas=1)
    created = asyncio.run(ensure_topics(settings))
    assert [s.name for s in created] == [s.name for s in topic_specs(settings)]
    live = asyncio.run(describe_topics(settings))
    assert len(live) == len(TOPIC_LAYOUT)
    for topic in live:
        spec = topic["spec"]
        assert topic["exists"], spec.name
        assert (topic["partitions"], topic["replication_factor"]) == (spec.partitions, 1), spec.name
        assert topic["configs"] == spec.configs, spec.name  # cleanup.policy, retention.ms, min.insync.replicas
    assert asyncio.run(ensure_topics(settings)) == []  # a second run creates nothing


def test_existing_topics_that_differ_from_the_spec_are_warned(broker, tmp_path, caplog):
    settings = make_settings(broker, tmp_path, partitions=2)
    asyncio.run(ensure_topics(settings))
    with caplog.at_level(logging.WARNING, logger="stream_rec.io.kafka"):
        assert asyncio.run(ensure_topics(settings.replace(partitions=3))) == []
    warned = [r.getMessage() for r in caplog.records]
    for role in ("events", "recommendations", "changelog"):
        name = topic_spec(settings, role).name
        assert any(f"topic {name} has 2 partitions, the spec says 3" in w for w in warned), (role, warned)
    assert not any(topic_spec(settings, "catalog").name in w for w in warned)


def test_impossible_replication_factor_fails_with_a_clear_message(broker, tmp_path):
    settings = make_settings(broker, tmp_path, replication_factor=3)
    with pytest.raises(TopicError, match=rf"cannot create topic {settings.topic('events')}: replication factor 3 "
                                         r"is larger than the 1 broker\(s\) of the cluster"):
        asyncio.run(ensure_topics(settings))
    assert not any(t["exists"] for t in asyncio.run(describe_topics(settings))), "nothing is half-created"
    # the same refusal from the CLI: one line, exit code 1, no traceback
    env = {**os.environ, "PYTHONPATH": str(REPO), "STREAM_REC_BROKER": broker}
    for argv in (["topics", "create"], ["worker"]):
        proc = subprocess.run([sys.executable, "-m", "stream_rec", *argv, "--replication-factor", "3",
                               "--topic-prefix", settings.topic_prefix, "--app-id", settings.app_id],
                              env=env, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 1, proc.stderr
        assert proc.stderr.strip().splitlines()[-1].startswith("error: cannot create topic ")
        assert "Traceback" not in proc.stderr


def test_broker_refusals_name_the_topic_and_the_error():
    """A CreateTopics answer as a real Kafka broker encodes it: one topic created, one that existed
    already (fine: another worker was first), one refused."""
    from aiokafka.protocol.admin import CreateTopicsResponse_v3

    def answer(*errors):
        wire = CreateTopicsResponse_v3(throttle_time_ms=0, topic_errors=list(errors)).encode()
        return CreateTopicsResponse_v3.decode(wire)

    ok = ("t-events", 0, None)
    exists = ("t-catalog", 36, "Topic 't-catalog' already exists.")
    refused = ("t-dlq", 38, "Replication factor: 3 larger than available brokers: 1.")
    assert check_create_response(answer(ok, exists)) == ["t-events"]
    with pytest.raises(TopicError) as err:
        check_create_response(answer(ok, exists, refused))
    text = str(err.value)
    assert "topic t-dlq: InvalidReplicationFactorError (error 38): Replication factor: 3 larger than" in text
    assert "t-catalog" not in text and "t-events" not in text


def test_topics_command_shows_the_spec_and_the_live_topics(broker, tmp_path, capsys):
    from stream_rec.cli import build_parser

    settings = make_settings(broker, tmp_path, partitions=2)
    common = ["--broker", broker, "--topic-prefix", settings.topic_prefix, "--app-id", settings.app_id]

    def run(*argv: str) -> tuple[int, list[list[str]]]:
        args = build_parser().parse_args(["topics", *argv, *common])
        rc = args.func(args)
        lines = capsys.readouterr().out.splitlines()
        return rc, [line.split() for line in lines if line.split()[0] in TOPIC_LAYOUT]

    rc, rows = run("show", "--partitions", "3")
    assert rc == 0 and {r[0]: r[2] for r in rows} == {s.role: str(s.partitions) for s in
                                                       topic_specs(settings.replace(partitions=3))}
    rc, rows = run("show", "--live")
    assert rc == 0 and all(r[2] == "missing" for r in rows)
    assert run("create", "--partitions", "2")[0] == 0
    rc, rows = run("show", "--live", "--partitions", "3")  # the spec now says 3: the 2-partition topics differ
    by_role = {r[0]: r for r in rows}
    assert by_role["events"][2] == "2*" and by_role["changelog"][2] == "2*" and by_role["catalog"][2] == "1"
    assert by_role["recommendations"][4:6] == ["delete", "21600000"]


def test_topic_contracts_page_states_the_spec():
    """topics/README.md's table says what TOPIC_LAYOUT does (partitions, compaction, retention)."""
    text = (REPO / "topics" / "README.md").read_text()
    units = {"hours": 3600 * 1000, "day": 24 * 3600 * 1000, "days": 24 * 3600 * 1000}
    for spec in topic_specs(Settings()):
        name = {"changelog": "<app id>-user-state-changelog", "leader": "<app id>-__assignor-__leader"}.get(
            spec.role, spec.name)
        row = next(line for line in text.splitlines() if line.startswith(f"| `{name}` |"))
        cells = [c.strip() for c in row.strip("|").split("|")]
        partitions, retention = cells[4], cells[5].replace("**", "")
        co_partitioned = TOPIC_LAYOUT[spec.role][1] == "partitions"
        assert partitions.startswith("`STREAM_REC_PARTITIONS`") if co_partitioned else partitions == "1", name
        assert retention.startswith("compacted" if spec.cleanup_policy == "compact" else "delete"), (name, retention)
        stated = re.match(r"delete, (\d+) (hours|days|day)\b", retention)
        if spec.retention_ms is None:
            assert not stated, (name, retention)
        else:
            assert stated and int(stated.group(1)) * units[stated.group(2)] == spec.retention_ms, (name, retention)


# --- tenants: a prefix needs an app id of its own (issue 23) --------------------------------------------------
def test_a_prefix_without_its_own_app_id_is_refused_with_one_line():
    """The consumer group and the state changelog are named from the app id: two deployments that set only
    a prefix would share them (each one's users' state restored into the other)."""
    with pytest.raises(TopicError, match=r"STREAM_REC_TOPIC_PREFIX='team-a\.' needs an app id of its own"):
        topic_specs(Settings(topic_prefix="team-a."))
    assert topic_spec(Settings(), "changelog").name == "stream-rec-user-state-changelog"  # no prefix: as before
    assert topic_spec(Settings(topic_prefix="team-a.", app_id="team-a.rec"), "changelog").name == \
        "team-a.rec-user-state-changelog"
    env = {**os.environ, "PYTHONPATH": str(REPO), "STREAM_REC_TOPIC_PREFIX": "team-a.",
           "STREAM_REC_BROKER": "127.0.0.1:1"}
    for command in (["topics", "show"], ["worker"], ["produce", "--synthetic-events", "1"]):
        out = subprocess.run([sys.executable, "-m", "stream_rec", *command], env=env, capture_output=True, text=True,
                             timeout=60)
        lines = out.stderr.strip().splitlines()
        assert out.returncode == 1 and len(lines) == 1 and lines[0].startswith("error: STREAM_REC_TOPIC_PREFIX"), \
            (command, out.stderr)
        assert "STREAM_REC_APP_ID" in lines[0] and "Traceback" not in out.stderr


def test_two_prefixed_deployments_on_one_broker_never_see_each_others_state(broker, tmp_path):
    """Same user ids, same broker, two deployments (a prefix and an app id each): each changelog holds only
    its own deployment's events, and each worker owns every partition of its own group."""
    import json
    import time
    import urllib.request

    from conftest import WorkerProcess, consume, produce, wait_until, write_items
    from stream_rec_devtools.synthetic import make_catalog
    from stream_rec_devtools.harness import read_changelog_states

    def ready(worker) -> dict:  # /readyz's body once it says 200: it may trail the first lists by a moment
        # (Faust signals the assignment after the flow resumed; the listener reads a 0.1 s snapshot)
        return json.loads(urllib.request.urlopen(worker.url("/readyz"), timeout=5).read())

    catalog = make_catalog(items_per_theme=4)
    items = write_items(tmp_path, catalog)
    ids = [r["item_id"] for r in catalog]
    tenants = {}
    for n, name in enumerate(("ta", "tb")):
        settings = make_settings(broker, tmp_path / name)
        settings = settings.replace(topic_prefix=f"{settings.app_id}.{name}.", app_id=f"{settings.app_id}.{name}")
        asyncio.run(ensure_topics(settings))
        tenants[name] = (settings, [ids[(n * 7 + k) % len(ids)] for k in range(3 + n)])  # 3 vs 4 events each
    now = time.time() - 60
    users = ["alice", "bob"]
    with WorkerProcess(tenants["ta"][0], tmp_path / "wa", items=items) as wa, \
            WorkerProcess(tenants["tb"][0], tmp_path / "wb", items=items) as wb:
        for settings, seq in tenants.values():
            produce(settings, settings.topic(settings.events_topic),
                    [{"user_id": u, "item_id": item, "event_type": "view", "timestamp": now + k}
                     for k, item in enumerate(seq) for u in users])
        for settings, seq in tenants.values():
            recs = consume(settings, settings.topic(settings.recommendations_topic), timeout_s=90,
                           until=lambda rs, n=len(seq): sum(isinstance(r["value"], dict) for r in rs) >= 2
                           and all(any(isinstance(r["value"], dict) and r["value"]["user_id"] == u
                                       and r["value"]["event_timestamp"] == now + n - 1 for r in rs) for u in users))
            assert recs, settings.topic_prefix
        readiness = {name: wait_until(lambda w=w: ready(w), timeout_s=20, message=f"{name}'s /readyz 200")
                     for name, w in (("ta", wa), ("tb", wb))}
    for name, (settings, seq) in tenants.items():
        states = asyncio.run(read_changelog_states(settings, items=ids))
        for user in users:
            assert states[user].n_events == len(seq) and states[user].seen_items() == seq, (name, states[user])
        assert readiness[name]["partitions"] == [0, 1], readiness  # one group each: no partition shared
    print(f"\n[figures] tenants: {[(s.topic_prefix, s.app_id) for s, _ in tenants.values()]}; "
          f"n_events {[len(seq) for _, seq in tenants.values()]} per user, each worker owns partitions [0, 1]")
