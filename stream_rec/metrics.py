"""Prometheus metrics of the worker: the one list of what stream-rec exports.

Names follow prometheus_client conventions: ``stream_rec_<what>_<unit>``, counters end in ``_total``,
times in seconds, histogram buckets sized for a millisecond latency budget. Labels have bounded
cardinality (topic, reason, stage) and never carry a user id. The dashboard
(deploy/grafana/dashboards/stream-rec.json) and alert rules (deploy/prometheus/alerts.yml) use only
these names; tests/test_deploy.py checks that.
"""

from __future__ import annotations

import math

from prometheus_client import (CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, PlatformCollector,
                               ProcessCollector, generate_latest)

REGISTRY = CollectorRegistry(auto_describe=True)
# process_cpu_seconds_total, process_resident_memory_bytes, process_open_fds ... and python_info: the
# collectors prometheus_client registers on its global registry, here on ours
ProcessCollector(registry=REGISTRY)
PlatformCollector(registry=REGISTRY)

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
STEP_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
_REG = {"registry": REGISTRY}  # every metric lives in our registry, not prometheus_client's global one

EVENTS_CONSUMED = Counter("stream_rec_events_consumed_total", "Events read from the events topic", **_REG)
EVENTS_INVALID = Counter("stream_rec_events_invalid_total", "Events that failed validation, by reason", ["reason"],
                         **_REG)
EVENTS_DLQ = Counter("stream_rec_events_dlq_total", "Events written to the dead-letter topic", **_REG)
EVENTS_SKIPPED_DUPLICATE = Counter("stream_rec_events_duplicate_total",
                                   "Redelivered events skipped because their offset was already applied", **_REG)
EVENTS_REROUTED = Counter("stream_rec_events_rerouted_total",
                          "Events that arrived on another partition than their key's (a producer with another "
                          "partitioner) and were re-sent to it, not applied where they landed", **_REG)
RECOMMENDATIONS_EMITTED = Counter("stream_rec_recommendations_emitted_total", "Recommendation records published",
                                  **_REG)
RECOMMENDATIONS_REPLAYED = Counter("stream_rec_recommendations_replayed_total",
                                   "Lists sent again for a redelivered event that its user's state had applied last "
                                   "(its first recommendation may not have been delivered)", **_REG)
RECORDS_SKIPPED = Counter("stream_rec_records_skipped_total",
                          "catalog/control records the worker could not use (each one logged), by topic and reason",
                          ["topic", "reason"], **_REG)
CATALOG_ITEMS = Counter("stream_rec_catalog_items_total", "Catalog records applied to the live catalog", **_REG)
EVENT_TO_REC_LATENCY = Histogram("stream_rec_event_to_recommendation_seconds",
                                 "Time from the event's own timestamp to its recommendation being sent",
                                 buckets=LATENCY_BUCKETS, **_REG)
CONSUME_TO_REC_LATENCY = Histogram("stream_rec_consume_to_recommendation_seconds",
                                   "Time from the worker receiving the event to its recommendation being sent",
                                   buckets=LATENCY_BUCKETS, **_REG)
BATCH_SIZE = Histogram("stream_rec_batch_size_events", "Events per micro-batch", ["stage"], buckets=BATCH_BUCKETS,
                       **_REG)
MODEL_STEP_SECONDS = Histogram("stream_rec_model_step_seconds",
                               "Time of one batched model stage (stage=step|rank|encode)", ["stage"],
                               buckets=STEP_BUCKETS, **_REG)
CONSUMER_LAG = Gauge("stream_rec_consumer_lag_messages",
                     "High watermark minus position, summed over the worker's assigned events partitions", **_REG)
READY = Gauge("stream_rec_ready", "1 while the worker makes progress; 0 while stalled or restoring tables "
              "(stream_rec/worker/watchdog.py)", **_REG)
STALLED_SECONDS = Gauge("stream_rec_stalled_seconds",
                        "Seconds without a handled micro-batch while events wait (0 = not stalled)", **_REG)
EVENT_LOOP_LAG = Gauge("stream_rec_event_loop_lag_seconds",
                       "How late a 0.5 s timer fires on the worker's event loop (everything the worker does shares it)",
                       **_REG)
USERS_IN_STATE = Gauge("stream_rec_users_in_state", "Users with state touched by this worker since start", **_REG)
MODEL_INFO = Gauge("stream_rec_model_info", "1 for the model version being served", ["version", "trained"], **_REG)
FRESH_SLOTS = Counter("stream_rec_fresh_slots_total",
                      "List slots the freshness policy gave to items that joined the catalogue after training",
                      **_REG)
# The exploration bandit (stream_rec/recsys/explore.py; wired into the worker in phase 2 of issue 21).
EXPLORE_IMPRESSIONS = Counter("stream_rec_explore_impressions_total",
                              "New items (exploration arms) in emitted lists, one per item and list", **_REG)
EXPLORE_HITS = Counter("stream_rec_explore_hits_total",
                       "Next events on a new item that was in the user's previous list, within the hit window "
                       "(at most one per impression)", **_REG)
EXPLORE_SLOTS = Counter("stream_rec_explore_slots_total",
                        "List positions the exploration policy gave to new items the plain ranking left out, by "
                        "the item's state (exploring: a Thompson sample; graduated: its learnt appeal)", ["state"],
                        **_REG)
EXPLORE_GRADUATED = Counter("stream_rec_explore_items_graduated_total",
                            "New items that graduated to ordinary ranking (each counted once per worker)", **_REG)
EXPLORE_RETIRED = Counter("stream_rec_explore_items_retired_total",
                          "New items retired from exploration because users do not take them (once per worker)",
                          **_REG)
EXPLORE_ARMS = Gauge("stream_rec_explore_arms", "New items the exploration policy tracks, by state", ["state"],
                     **_REG)
MODEL_RELOADS = Counter("stream_rec_model_reloads_total", "Model hot reloads", **_REG)
ONLINE_HIT = Counter("stream_rec_online_hits_total", "Next events that were in the user's previous top-k list",
                     **_REG)
ONLINE_SCORED = Counter("stream_rec_online_scored_total", "Next events scored against the user's previous top-k list",
                        **_REG)
DRIFT_DETECTED = Counter("stream_rec_drift_detected_total", "Drift alarms from the online quality monitor", **_REG)
USERS_DELETED = Counter("stream_rec_users_deleted_total",
                        "Users whose state was erased by a delete_user control event (stream-rec forget)", **_REG)
HTTP_CONNECTIONS_REFUSED = Counter("stream_rec_http_connections_refused_total",
                                   "Connections to the HTTP listener closed on arrival: STREAM_REC_HTTP_MAX_CONNECTIONS "
                                   "were open", **_REG)
LOOKUPS = Counter("stream_rec_lookups_total", "Lookups of a user's list (GET /recommendations), by answer",
                  ["answer"], **_REG)

# Label children of the stages every worker runs exist from the start (at 0), not from their first
# observation: Prometheus's rate() ignores the first sample of a new series, so a series born at the
# first batch would hide that batch from the dashboard's rate/quantile panels.
for _stage in ("step", "rank"):  # the pipeline's TIMED_PHASES (stream_rec/pipeline.py)
    MODEL_STEP_SECONDS.labels(stage=_stage)
BATCH_SIZE.labels(stage="events")
for _state in ("exploring", "graduated"):
    EXPLORE_SLOTS.labels(state=_state)
for _state in ("exploring", "graduated", "retired"):
    EXPLORE_ARMS.labels(state=_state)


def exposition() -> tuple[bytes, str]:
    """The text exposition of every metric and its content type (served at ``/metrics`` by stream_rec/worker/http.py)."""
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


def histogram_quantile(q: float, cumulative: list[tuple[float, float]]) -> float:
    """Prometheus's ``histogram_quantile`` on cumulative (le, count) buckets: NaN without observations; the
    bucket holding rank q*total is interpolated linearly (lower bound 0 for the first bucket); a rank in
    the +Inf bucket returns the largest finite bound. (The worker's /ui/system charts and
    deploy/render_dashboard.py read the histograms above with it, as the dashboard's PromQL does.)"""
    if not cumulative or cumulative[-1][1] <= 0:
        return math.nan
    rank = q * cumulative[-1][1]
    prev_le, prev_count = 0.0, 0.0
    for le, count in cumulative:
        if count >= rank:
            if math.isinf(le):
                return prev_le
            if count == prev_count:
                return le
            return prev_le + (le - prev_le) * (rank - prev_count) / (count - prev_count)
        prev_le, prev_count = le, count
    return prev_le
