#!/bin/sh
# Entrypoint of the compose workers: `worker-entrypoint.sh ARGS...` runs `stream-rec ARGS...` with
# STREAM_REC_DATA_DIR set to a state directory of its own inside the shared state volume.
#
# Why slots instead of the container's hostname: a re-created container (`up --build`, a changed
# setting, `--scale` down and up) gets a new hostname, so per-hostname directories piled up and the
# new container started from an empty RocksDB. Here each container takes the first directory slot-N
# whose lock no running container holds, and keeps the lock (an open file descriptor, inherited by
# `exec`) for its whole life; the kernel drops it when the process ends. So N workers use slot-0 ..
# slot-(N-1) whatever their history, and a re-created worker finds a previous worker's tables (Faust
# then replays only the changelog records after their offsets, or all of a partition it did not have).
#
# Environment: STATE_ROOT (default /var/lib/stream-rec), STATE_SLOTS (default 64).
set -eu
root="${STATE_ROOT:-/var/lib/stream-rec}"
slots="${STATE_SLOTS:-64}"
i=0
while [ "$i" -lt "$slots" ]; do
  dir="$root/slot-$i"
  mkdir -p "$dir"
  exec 9>>"$dir/.lock"
  if flock -n 9; then
    export STREAM_REC_DATA_DIR="$dir"
    echo "worker-entrypoint: state directory $dir" >&2
    exec stream-rec "$@"
  fi
  exec 9>&-
  i=$((i + 1))
done
echo "worker-entrypoint: all $slots state directories under $root are in use" >&2
exit 1
