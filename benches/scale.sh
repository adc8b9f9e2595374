#!/usr/bin/env bash
# Edge at scale (issue 17): seeds N sandboxes through the control API, then measures an edge's
# - cold start from control (empty state dir) until it routes the last sandbox created,
# - cold start from its state dir with control down,
# - resident memory in both cases, and over an idle edge (no sandboxes),
# - the size of its state dir.
# Not run in CI: `benches/scale.sh` (100k), `benches/scale.sh 1000000`. Needs curl and a release build
# (`cargo build --release`, or set PORTICO=path/to/portico).
set -euo pipefail

N=${1:-100000}
PORTICO=${PORTICO:-$(cd "$(dirname "$0")/.." && pwd)/target/release/portico}
PARALLEL=${PARALLEL:-32}
BATCH=1000
[[ -x $PORTICO ]] || { echo "no $PORTICO: run cargo build --release first" >&2; exit 1; }

WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
CONTROL_PORT=$(port); EDGE_PORT=$(port); METRICS_PORT=$(port)
export PORTICO_ADMIN_KEY=scale-admin-key-0123456789
export PORTICO_EDGE_TOKEN=scale-edge-token-0123456789
CONTROL=http://127.0.0.1:$CONTROL_PORT

start_control() {
  "$PORTICO" control --listen "127.0.0.1:$CONTROL_PORT" --database "sqlite://$WORK/portico.db?mode=rwc" \
    --upstream-allow 127.0.0.0/8 >>"$WORK/control.log" 2>&1 &
  CONTROL_PID=$!; PIDS+=("$CONTROL_PID")
  for _ in $(seq 100); do curl -fs -o /dev/null "$CONTROL/v1/tenants" -H "authorization: Bearer $PORTICO_ADMIN_KEY" && return; sleep 0.1; done
  echo "control did not start; see $WORK/control.log" >&2; exit 1
}

start_edge() {
  "$PORTICO" edge --control-url "$CONTROL" --http "127.0.0.1:$EDGE_PORT" --metrics "127.0.0.1:$METRICS_PORT" \
    --state-dir "$WORK/edge" >>"$WORK/edge.log" 2>&1 &
  EDGE_PID=$!; PIDS+=("$EDGE_PID")
}

stop() { kill -TERM "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }

# Seconds until the edge routes `host` (anything but 404 and no answer: 502, nothing listens there).
until_routed() {
  local host=$1 start; start=$(date +%s.%N)
  for _ in $(seq 6000); do
    code=$(curl -s -o /dev/null -w '%{http_code}' -H "host: $host" "http://127.0.0.1:$EDGE_PORT/" || true)
    if [[ $code != 000 && $code != 404 ]]; then
      python3 -c "print(f'{$(date +%s.%N) - $start:.2f}')"; return
    fi
    sleep 0.05
  done
  echo "timeout"
}

rss_mib() { awk '/VmRSS/ {printf "%.0f", $2/1024}' "/proc/$1/status"; }

start_control
TENANT=$(curl -fsS "$CONTROL/v1/tenants" -H "authorization: Bearer $PORTICO_ADMIN_KEY" \
  -H 'content-type: application/json' -d '{"name":"scale"}')
KEY=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["api_key"])' "$TENANT")

# An idle edge: what memory it takes with nothing to route.
start_edge; sleep 3; IDLE_RSS=$(rss_mib "$EDGE_PID"); stop "$EDGE_PID"; rm -rf "$WORK/edge"

echo "seeding $N sandboxes ($PARALLEL requests at a time)..."
SEED_START=$(date +%s)
mkdir -p "$WORK/batches"
for ((b = 0; b < N; b += BATCH)); do
  f="$WORK/batches/$b.curl"
  for ((i = b; i < b + BATCH && i < N; i++)); do
    printf 'url = "%s/v1/sandboxes"\nheader = "authorization: Bearer %s"\nheader = "content-type: application/json"\ndata = "{\\"address\\":\\"127.0.0.1\\",\\"default_visibility\\":\\"public\\",\\"preview_auth\\":{\\"token\\":\\"auto\\"}}"\noutput = "/dev/null"\nnext\n' \
      "$CONTROL" "$KEY"
  done | sed '$d' >"$f" # no `next` after the last request
done
ls "$WORK"/batches/*.curl | xargs -P 4 -n 1 sh -c 'curl -sS --no-progress-meter --parallel --parallel-max "$0" -K "$1" >/dev/null' "$((PARALLEL / 4))"
PROBE=$(curl -fsS "$CONTROL/v1/sandboxes" -H "authorization: Bearer $KEY" -H 'content-type: application/json' \
  -d '{"address":"127.0.0.1","default_visibility":"public"}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
SEED_SECS=$(($(date +%s) - SEED_START))
HOST="1-$PROBE.sandbox.localhost"

start_edge
FROM_CONTROL=$(until_routed "$HOST"); sleep 2; CONTROL_RSS=$(rss_mib "$EDGE_PID")
# Let it write its state dir, then stop it and control.
for _ in $(seq 200); do [[ -s $WORK/edge/snapshot.json ]] && break; sleep 0.1; done
sleep 2
stop "$EDGE_PID"; stop "$CONTROL_PID"
STATE_MIB=$(du -sm "$WORK/edge" | cut -f1)

start_edge
FROM_DIR=$(until_routed "$HOST"); sleep 2; DIR_RSS=$(rss_mib "$EDGE_PID")
stop "$EDGE_PID"

per() { python3 -c "print(f'{($1 - $IDLE_RSS) * 1048576 / $N:.0f}')"; }
printf '\n%-44s %s\n' "sandboxes seeded" "$N (in ${SEED_SECS}s)"
printf '%-44s %s\n' "edge idle, resident" "${IDLE_RSS} MiB"
printf '%-44s %s\n' "cold start from control, until routed" "${FROM_CONTROL} s"
printf '%-44s %s\n' "  resident / over idle per sandbox" "${CONTROL_RSS} MiB / $(per "$CONTROL_RSS") B"
printf '%-44s %s\n' "cold start from state dir (control down)" "${FROM_DIR} s"
printf '%-44s %s\n' "  resident / over idle per sandbox" "${DIR_RSS} MiB / $(per "$DIR_RSS") B"
printf '%-44s %s\n' "state dir size" "${STATE_MIB} MiB"
