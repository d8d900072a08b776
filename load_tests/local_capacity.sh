#!/usr/bin/env bash
# What N workers sustain on this host: starts `hdr-service serve` (the API and one worker)
# plus N-1 more `hdr-service worker` processes, all on loopback against one Redis, runs
# the locust capacity profile (closed loop, jobs only) and prints the summary.
#
#   load_tests/local_capacity.sh WORKERS MODEL_REPO SIZE [RUN_TIME] [OUT_DIR]
#
#   load_tests/local_capacity.sh 1 model_repo 128x128 60s out/load-1w
#
# Environment: HDR_REDIS_URL (default redis://127.0.0.1:6379/0; keys go under a prefix of
# their own, removed at the end), HDR_DEFAULT_MODEL (default afunet: the repository's
# weights, else the classical model), HDR_STORAGE_URL (default: a temporary folder, removed
# at the end; every process must share the blob store), USERS (default 2 per worker), PORT
# (default 18080), and any other HDR_* setting (HDR_DEVICE, HDR_TILE_SIZE, ...), passed to
# every process.
set -euo pipefail

workers=${1:?usage: local_capacity.sh WORKERS MODEL_REPO SIZE [RUN_TIME] [OUT_DIR]}
repo=$(cd "${2:?model repository}" && pwd)
size=${3:?frame size HxW}
run_time=${4:-60s}
out=${5:-out/load-${workers}w-${size}}
users=${USERS:-$((2 * workers))}
port=${PORT:-18080}
here=$(cd "$(dirname "$0")" && pwd)
py=${PYTHON:-python3}

export HDR_REDIS_URL=${HDR_REDIS_URL:-redis://127.0.0.1:6379/0}
export HDR_KEY_PREFIX=load-$$
export HDR_MODEL_REPO=$repo
export HDR_DEFAULT_MODEL=${HDR_DEFAULT_MODEL:-afunet}
export HDR_WORKER_METRICS_PORT=0
export PYTHONUNBUFFERED=1
mkdir -p "$out"
blobs=""
if [ -z "${HDR_STORAGE_URL:-}" ]; then
    blobs=$(mktemp -d "${TMPDIR:-/tmp}/hdr-load-blobs-XXXXXX")
    export HDR_STORAGE_URL="file://$blobs"
fi

pids=()
# shellcheck disable=SC2317  # invoked by the EXIT trap
cleanup() {
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    "$py" - <<'PY' || true
import os, redis
from service.queue import Keys
client = redis.Redis.from_url(os.environ["HDR_REDIS_URL"])
keys = list(client.scan_iter(match=Keys(os.environ["HDR_KEY_PREFIX"]).all_keys_pattern()))
if keys:
    client.delete(*keys)
PY
    [ -z "$blobs" ] || rm -rf "$blobs"
}
trap cleanup EXIT

"$py" -m service serve --host 127.0.0.1 --port "$port" >"$out/serve.log" 2>&1 &
pids+=($!)
for i in $(seq 2 "$workers"); do
    "$py" -m service worker --id "load-$$-worker-$i" >"$out/worker-$i.log" 2>&1 &
    pids+=($!)
done

echo "waiting for $workers ready worker(s) on http://127.0.0.1:$port ..."
for _ in $(seq 1 300); do
    ready=$(curl -sf "http://127.0.0.1:$port/readyz" | "$py" -c \
        'import json,sys; print(json.load(sys.stdin)["checks"]["workers_ready"])' 2>/dev/null || true)
    [ "${ready:-0}" -ge "$workers" ] && break
    sleep 1
done
[ "${ready:-0}" -ge "$workers" ] || { echo "workers not ready; see $out/*.log" >&2; exit 1; }

echo "locust: $users users, ${size} frames, $run_time"
status=0
locust --config "$here/capacity.conf" --host "http://127.0.0.1:$port" \
    --users "$users" --spawn-rate "$users" --sizes "$size" --run-time "$run_time" \
    --csv "$out/capacity" --loglevel WARNING >"$out/locust.log" 2>&1 || status=$?
"$py" "$here/summary.py" "$out/capacity" | tee "$out/summary.txt"
exit "$status"
