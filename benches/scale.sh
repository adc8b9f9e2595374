#!/usr/bin/env bash
# Edges at scale (issue 17). Seeds N sandboxes through the control API, then measures
# - one edge: cold start from control (empty state dir) until it routes the last sandbox created, its
#   resident memory, propagation of 100 changes while 100 changes/s flow; then a cold start from its state
#   dir with control down;
# - ten edges on one control (EDGES=10): all cold-starting at once (time until every one routes, control's
#   peak resident memory while serving them), their resident memory, propagation at every edge.
# Propagation: from control's answer creating a sandbox until the edge answers its host with anything but
# 404 (benches/scale/probe.py polls each edge about once a millisecond over a kept-alive connection; for
# cold starts every 10 ms, so that polling ten starting edges does not take the CPU they are timed on).
# Targets: cold start <= 5 s from control, <= 2 s from the state dir; propagation p50 <= 20 ms, max <= 200 ms
# at every edge; <= 300 bytes resident per sandbox over an idle edge.
#
# Not run in CI: `benches/scale.sh` (100k), `benches/scale.sh 1000000`; `nice -n 19` on a shared machine.
# Needs curl, python3 and a release build (`cargo build --release`, or set PORTICO=path/to/portico).
# Everything listens on loopback; each edge on its own 127.0.0.x address. Processes are stopped by PID
# (SIGINT: Pingora stops at once) and waited for, also when the script fails or is interrupted.
#
# Seeding goes through `POST /v1/sandboxes`, the same path as any client, 1,000 sandboxes per tenant (the
# default quota; the quota check counts the tenant's sandboxes, so one huge tenant would make seeding
# quadratic). 1M takes a while (about 20 minutes on two cores): SEEDED=dir keeps the seeded database there
# and reuses it on the next run with the same dir (N must match). A create that finds the database busy
# (503, nothing written) is retried.
set -euo pipefail

N=${1:-100000}
EDGES=${EDGES:-10}
CHANGES=${CHANGES:-100}
RATE=${RATE:-100}
PER_TENANT=1000
PORTICO=${PORTICO:-$(cd "$(dirname "$0")/.." && pwd)/target/release/portico}
PROBE_PY="$(cd "$(dirname "$0")" && pwd)/scale/probe.py"
PARALLEL=${PARALLEL:-32}
[[ -x $PORTICO ]] || { echo "no $PORTICO: run cargo build --release first" >&2; exit 1; }

WORK=$(mktemp -d)
PIDS=()
stop() { kill -INT "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }
cleanup() {
  for p in "${PIDS[@]}"; do stop "$p"; done
  rm -rf "$WORK"
}
trap cleanup EXIT

# A free port on the given loopback address.
port() { python3 -c 'import socket,sys; s=socket.socket(); s.bind((sys.argv[1],0)); print(s.getsockname()[1])' "$1"; }
CONTROL_PORT=$(port 127.0.0.1)
export PORTICO_ADMIN_KEY=scale-admin-key-0123456789
export PORTICO_EDGE_TOKEN=scale-edge-token-0123456789
export PORTICO_QUOTA_SANDBOXES=$((PER_TENANT + CHANGES * 20 + 1000))
CONTROL=http://127.0.0.1:$CONTROL_PORT

start_control() {
  "$PORTICO" control --listen "127.0.0.1:$CONTROL_PORT" --database "sqlite://$WORK/portico.db?mode=rwc" \
    --upstream-allow 127.0.0.0/8 >>"$WORK/control.log" 2>&1 &
  CONTROL_PID=$!; PIDS+=("$CONTROL_PID")
  for _ in $(seq 300); do curl -fs -o /dev/null "$CONTROL/v1/tenants" -H "authorization: Bearer $PORTICO_ADMIN_KEY" && return; sleep 0.1; done
  echo "control did not start; see $WORK/control.log" >&2; exit 1
}

# Control builds a snapshot as it starts; cold starts are measured against a control that has one, and the
# build's own time is reported apart (it is what a starting edge waits for right after a control restart).
await_snapshot() {
  local before=$1
  for _ in $(seq 1200); do
    (($(grep -c 'feed snapshot built' "$WORK/control.log") > before)) && break; sleep 0.1
  done
  # (The log may carry colour codes.)
  grep 'feed snapshot built' "$WORK/control.log" | tail -1 | sed 's/\x1b\[[0-9;]*m//g' | grep -o ' ms=[0-9]*' | cut -d= -f2
}

# Edge i (1..10) listens on 127.0.0.(10+i) with its own state dir.
EDGE_ADDR=(); EDGE_PID=()
for ((i = 1; i <= EDGES; i++)); do
  EDGE_ADDR[i]="127.0.0.$((10 + i)):$(port "127.0.0.$((10 + i))")"
done
start_edge() {
  local i=$1 ip=127.0.0.$((10 + $1))
  "$PORTICO" edge --control-url "$CONTROL" --http "${EDGE_ADDR[i]}" --metrics "$ip:$(port "$ip")" \
    --state-dir "$WORK/edge$i" >>"$WORK/edge$i.log" 2>&1 &
  EDGE_PID[i]=$!; PIDS+=("$!")
}
edges_list() { local IFS=,; echo "${EDGE_ADDR[*]:1:$1}"; }

rss_mib() { awk '/VmRSS/ {printf "%.0f", $2/1024}' "/proc/$1/status"; }
hwm_mib() { awk '/VmHWM/ {printf "%.0f", $2/1024}' "/proc/$1/status"; }
per_sandbox() { python3 -c "print(f'{($1 - $IDLE_RSS) * 1048576 / $N:.0f}')"; }
REPORT=()
report() { REPORT+=("$(printf '%-52s %s' "$1" "$2")"); printf '%-52s %s\n' "$1" "$2"; }

start_control

# An idle edge: what memory it takes with nothing to route.
start_edge 1; sleep 3; IDLE_RSS=$(rss_mib "${EDGE_PID[1]}"); stop "${EDGE_PID[1]}"; rm -rf "$WORK/edge1"
report "edge idle, resident" "${IDLE_RSS} MiB"

if [[ -n ${SEEDED:-} && -s $SEEDED/portico.db ]]; then
  # A database seeded by an earlier run: the same state, without the wait.
  stop "$CONTROL_PID"
  # The idle control's WAL must not be replayed over the copy.
  rm -f "$WORK"/portico.db-wal "$WORK"/portico.db-shm
  cp "$SEEDED"/portico.db "$WORK/"; read -r KEY PROBE <"$SEEDED/probe"
  BUILDS=$(grep -c 'feed snapshot built' "$WORK/control.log" || true)
  start_control
  report "sandboxes seeded" "$N (reused from $SEEDED)"
  report "control's snapshot build at start" "$(await_snapshot "$BUILDS") ms"
else
  echo "seeding $N sandboxes, $PER_TENANT per tenant ($PARALLEL requests at a time)..."
  SEED_START=$(date +%s)
  mkdir -p "$WORK/batches"
  for ((b = 0; b < N; b += PER_TENANT)); do
    key=$(curl -fsS "$CONTROL/v1/tenants" -H "authorization: Bearer $PORTICO_ADMIN_KEY" \
      -H 'content-type: application/json' -d "{\"name\":\"scale-$b\"}" |
      python3 -c 'import json,sys; print(json.load(sys.stdin)["api_key"])')
    for ((i = b; i < b + PER_TENANT && i < N; i++)); do
      printf 'url = "%s/v1/sandboxes"\nheader = "authorization: Bearer %s"\nheader = "content-type: application/json"\ndata = "{\\"address\\":\\"127.0.0.1\\",\\"default_visibility\\":\\"public\\",\\"preview_auth\\":{\\"token\\":\\"auto\\"}}"\noutput = "/dev/null"\nwrite-out = "%%{http_code}\\n"\nnext\n' \
        "$CONTROL" "$key"
    done | sed '$d' >"$WORK/batches/$b.curl" # no `next` after the last request
    KEY=$key
  done
  ls "$WORK"/batches/*.curl | xargs -P 4 -n 1 sh -c 'curl -sS --no-progress-meter --retry 5 --parallel --parallel-max "$0" -K "$1"' "$((PARALLEL / 4))" |
    sort | uniq -c >"$WORK/seed-status"
  # Creates that still found the database busy after curl's retries (503: nothing written) are made
  # again one at a time, under the last tenant, until each is created: N sandboxes exactly.
  MISSING=$(awk '$2 != 201 {n += $1} END {print n + 0}' "$WORK/seed-status")
  if ((MISSING > 0)); then echo "seeding: $MISSING creates to make again:"; cat "$WORK/seed-status"; fi
  for ((m = 0; m < MISSING; m++)); do
    for attempt in $(seq 20); do
      code=$(curl -sS -o /dev/null -w '%{http_code}' "$CONTROL/v1/sandboxes" -H "authorization: Bearer $KEY" \
        -H 'content-type: application/json' -d '{"address":"127.0.0.1","default_visibility":"public"}')
      [[ $code == 201 ]] && break
      [[ $code == 503 ]] || { echo "seeding: a create answered $code" >&2; exit 1; }
      sleep 1
    done
    [[ $code == 201 ]] || { echo "seeding: the database stayed busy" >&2; exit 1; }
  done
  PROBE=$(curl -fsS "$CONTROL/v1/sandboxes" -H "authorization: Bearer $KEY" -H 'content-type: application/json' \
    -d '{"address":"127.0.0.1","default_visibility":"public"}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
  report "sandboxes seeded" "$N (in $(($(date +%s) - SEED_START)) s)"
  if [[ -n ${SEEDED:-} ]]; then
    mkdir -p "$SEEDED"; curl -fsS -o /dev/null "$CONTROL/v1/tenants" -H "authorization: Bearer $PORTICO_ADMIN_KEY"
    sqlite3 "$WORK/portico.db" ".backup '$SEEDED/portico.db'" 2>/dev/null || cp "$WORK/portico.db" "$SEEDED/"
    echo "$KEY $PROBE" >"$SEEDED/probe"
  fi
fi
HOST="1-$PROBE.sandbox.localhost"

echo "--- one edge"
# Seeded through this control: its snapshot is far behind; a starting edge would wait for a new build
# (of the packed form, which edges ask for).
curl -fsS -o /dev/null "$CONTROL/v1/edge/feed?since=0" -H "authorization: Bearer $PORTICO_EDGE_TOKEN" \
  -H 'accept-encoding: gzip' -H 'accept: application/vnd.portico.snapshot.v1' && report "control's snapshot, current (last build)" "$(await_snapshot 0) ms"
start_edge 1
FROM_CONTROL=$(python3 "$PROBE_PY" routed --edges "$(edges_list 1)" --host "$HOST" | cut -d' ' -f2)
report "cold start from control, until routed" "${FROM_CONTROL} s"
sleep 2; RSS=$(rss_mib "${EDGE_PID[1]}")
report "  resident / over idle per sandbox" "${RSS} MiB / $(per_sandbox "$RSS") B"
python3 "$PROBE_PY" propagation --control "$CONTROL" --key "$KEY" --edges "$(edges_list 1)" \
  --changes "$CHANGES" --rate "$RATE" | tee "$WORK/prop1"
report "propagation, 1 edge (p50 / max)" "$(awk '/^all edges/ {print $5 " / " $9 " ms"}' "$WORK/prop1")"
# Let it write its state dir, then stop it and control.
for _ in $(seq 600); do [[ -s $WORK/edge1/snapshot.bin ]] && break; sleep 0.1; done
sleep 2
stop "${EDGE_PID[1]}"; stop "$CONTROL_PID"
report "state dir size" "$(du -sm "$WORK/edge1" | cut -f1) MiB"

start_edge 1
FROM_DIR=$(python3 "$PROBE_PY" routed --edges "$(edges_list 1)" --host "$HOST" | cut -d' ' -f2)
report "cold start from state dir (control down)" "${FROM_DIR} s"
sleep 2; RSS=$(rss_mib "${EDGE_PID[1]}")
report "  resident / over idle per sandbox" "${RSS} MiB / $(per_sandbox "$RSS") B"
stop "${EDGE_PID[1]}"

if ((EDGES > 1)); then
  echo "--- $EDGES edges on one control"
  BUILDS=$(grep -c 'feed snapshot built' "$WORK/control.log" || true)
  start_control
  report "control's snapshot build at start" "$(await_snapshot "$BUILDS") ms"
  echo 5 >"/proc/$CONTROL_PID/clear_refs" # restart control's peak resident memory from here
  CONTROL_BEFORE=$(rss_mib "$CONTROL_PID")
  rm -rf "$WORK"/edge*/
  for ((i = 1; i <= EDGES; i++)); do start_edge "$i"; done
  python3 "$PROBE_PY" routed --edges "$(edges_list "$EDGES")" --host "$HOST" | tee "$WORK/cold10"
  report "$EDGES cold starts at once from control, until all route" "$(sort -k2 -n "$WORK/cold10" | tail -1 | cut -d' ' -f2) s"
  report "  control resident before / peak while serving" "${CONTROL_BEFORE} MiB / $(hwm_mib "$CONTROL_PID") MiB"
  sleep 2
  MAX_RSS=0
  for ((i = 1; i <= EDGES; i++)); do r=$(rss_mib "${EDGE_PID[i]}"); ((r > MAX_RSS)) && MAX_RSS=$r; done
  report "  largest edge resident / over idle per sandbox" "${MAX_RSS} MiB / $(per_sandbox "$MAX_RSS") B"
  python3 "$PROBE_PY" propagation --control "$CONTROL" --key "$KEY" --edges "$(edges_list "$EDGES")" \
    --changes "$CHANGES" --rate "$RATE" | tee "$WORK/prop10"
  report "propagation, $EDGES edges (worst p50 / worst max)" "$(awk '/^all edges/ {print $5 " / " $9 " ms"}' "$WORK/prop10")"
fi

echo
printf '%s\n' "${REPORT[@]}"
