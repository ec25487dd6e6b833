#!/usr/bin/env bash
# Creates the stream-rec topics on a Kafka cluster (the compose stack's `kafka-init` service runs it).
#
# Why an init step instead of broker auto-creation: auto-created topics get the broker's default
# partition count, and `events` must have exactly as many partitions as the worker's state tables
# (co-partitioning by user_id). The layout below mirrors stream_rec/kafka.py TOPIC_LAYOUT;
# tests/test_deploy.py checks that the two agree.
#
# Environment:
#   BOOTSTRAP_SERVERS        host:port list of the cluster                (default kafka:19092)
#   STREAM_REC_PARTITIONS    partitions of events / recommendations        (default 4)
#   STREAM_REC_TOPIC_PREFIX  prefix of every topic name                    (default empty)
#   REPLICATION_FACTOR       replication factor of new topics             (default 1: single-node compose)
#   KAFKA_BIN                directory of the Kafka CLI scripts           (default /opt/kafka/bin)
#   COMMAND_CONFIG           optional client properties file (SASL/TLS) for an existing cluster
# Existing topics are left as they are (--if-not-exists): re-running is safe.
set -euo pipefail

BOOTSTRAP_SERVERS="${BOOTSTRAP_SERVERS:-kafka:19092}"
PARTITIONS="${STREAM_REC_PARTITIONS:-4}"
PREFIX="${STREAM_REC_TOPIC_PREFIX:-}"
REPLICATION_FACTOR="${REPLICATION_FACTOR:-1}"
KAFKA_BIN="${KAFKA_BIN:-/opt/kafka/bin}"
EXTRA=()
if [[ -n "${COMMAND_CONFIG:-}" ]]; then
  EXTRA=(--command-config "$COMMAND_CONFIG")
fi

# Retention follows topics/README.md: recommendations are short-lived (consumers keep the newest per
# user), dead letters are evidence (weeks); "-" keeps the broker default (7 days for events).
# name                partitions      cleanup.policy  retention.ms
TOPICS="
events                ${PARTITIONS}   delete          -
catalog               1               compact         -
recommendations       ${PARTITIONS}   delete          21600000
events-dlq            1               delete          2419200000
control               1               delete          86400000
"

echo "waiting for Kafka at ${BOOTSTRAP_SERVERS} ..."
for _ in $(seq 1 60); do
  if "$KAFKA_BIN/kafka-broker-api-versions.sh" --bootstrap-server "$BOOTSTRAP_SERVERS" "${EXTRA[@]}" >/dev/null 2>&1; then
    break
  fi
  sleep 2
done

while read -r name partitions policy retention; do
  [[ -z "$name" ]] && continue
  configs=(--config "cleanup.policy=${policy}")
  if [[ "$retention" != "-" ]]; then
    configs+=(--config "retention.ms=${retention}")
  fi
  echo "topic ${PREFIX}${name}: ${partitions} partitions, cleanup.policy=${policy}, retention.ms=${retention}"
  "$KAFKA_BIN/kafka-topics.sh" --bootstrap-server "$BOOTSTRAP_SERVERS" "${EXTRA[@]}" --create --if-not-exists \
    --topic "${PREFIX}${name}" --partitions "$partitions" --replication-factor "$REPLICATION_FACTOR" \
    "${configs[@]}"
done <<< "$TOPICS"

"$KAFKA_BIN/kafka-topics.sh" --bootstrap-server "$BOOTSTRAP_SERVERS" "${EXTRA[@]}" --describe \
  --topic "^${PREFIX}(events|catalog|recommendations|events-dlq|control)\$" 2>/dev/null || true
echo "topics ready"
