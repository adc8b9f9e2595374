#!/usr/bin/env bash
# Portico beside nginx, HAProxy and a minimal Pingora proxy (benches/minimal-pingora), all proxying to one
# origin: what Portico's own work (routing, rate limit, credentials, header rewriting, logging) costs per
# request over the same Pingora doing nothing, and over the usual reverse proxies.
#
#   bash benches/proxies.sh                 # needs nginx, haproxy, wrk, curl, python3
#   ROUNDS=5 SLICES=4 DURATION=5s CONNECTIONS=128 bash benches/proxies.sh
#   SKIP_BUILD=1 bash benches/proxies.sh    # use the release binaries already built
#   PATHS="public 100k" PROXIES="minimal-pingora portico" bash benches/proxies.sh
#   PORTICOS="portico=target/release/portico,--access-log,off old=/tmp/portico-old,RUST_LOG=info" ...
#
# Every proxy gets one worker (thread or process) and no access log, unless a Portico variant asks for
# one; the origin is a one-worker nginx on 127.0.0.2 serving a 33-byte file and a 100 KB file. Paths:
#   public   a public sandbox preview                       GET /small.txt
#   header   a private one, `X-Portico-Preview-Token: <the sandbox's preview-auth token>`
#   cookie   a private one, `Cookie: preview_session=<an mp_ preview token>`
#   100k     the public preview, GET /big.bin (100 KB)
#   ws       the public preview, a WebSocket to /ws (the origin nginx passes it to an echo server): 32-byte
#            text messages, each connection sending the next when the echo of the last is back (benches/ws-echo)
# The other proxies forward the same requests (header and cookie included) without checking anything.
# Portico's tenant limits are raised so that the limiter runs on every request but never refuses.
# For ws, "req/s" is echo round trips per second and CPU is per round trip.
#
# On two cores or more the proxy under test runs alone on its own core (PROXY_CPU, default 1) and wrk, the
# origin and control share another (LOAD_CPU, default 0): without that the scheduler moves the three
# around and a proxy's CPU per request swings by a third from round to round. PIN=0 turns it off.
#
# Each round starts every proxy afresh (RESTART=0: one set of processes for the whole run) and runs every
# path through every proxy, the proxy order rotating from round to round: SLICES (5) runs of
# `wrk -t$THREADS -c$CONNECTIONS -d$DURATION --latency` (2 s) per proxy, the proxies taking turns slice by
# slice, so that a burst from a neighbour on a shared host costs every proxy a slice rather than one proxy
# its whole run (with one 5 s run each, per-round Portico ÷ minimal ratios spread over 0.93–1.37 here).
# A round's figures for a proxy and path: requests and CPU summed over its slices, the mean req/s, the
# median of the slices' p50 and p99. Per proxy and path, the table gives the median over rounds of req/s,
# p50 and p99 latency, and CPU per request: utime+stime of the proxy's processes (all threads; nginx's
# master and worker) over the runs, divided by the requests wrk counted. wrk, the origin and the proxy
# share the machine, so absolute numbers depend on it: compare rows of one run.
#
# The calibration row `minimal-pingora+<N>ns` (EXTRA_NS, default 2000) is the minimal proxy spinning N ns
# of CPU more per request: what N ns of a proxy's own work measures as here. It is not N ns: a saturated
# proxy that is slower leaves wrk and the origin idle more often, and waking them costs its sends more
# (here 2 µs spent measured as 4–7 µs). Judge Portico's ratio to the minimal proxy against that row's.
#
# PORTICOS: space-separated Portico variants `label=BINARY[,ARG|NAME=VALUE]...`: arguments for
# `portico edge`, or environment variables. Each runs as its own `portico edge --threads 1` following one
# `portico control` (a separate process, so that its CPU is not counted). Rows whose label starts with
# `portico` get the ratio columns. The default: Portico without and with an access log (to a file).
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-2s}
SLICES=${SLICES:-5}
CONNECTIONS=${CONNECTIONS:-64}
THREADS=${THREADS:-1}
PATHS=${PATHS:-public header cookie 100k ws}
OUT=${OUT:-}
MINIMAL=${MINIMAL:-target/release/minimal-pingora}
EXTRA_NS=${EXTRA_NS:-2000}
WS_ECHO=${WS_ECHO:-target/release/ws-echo}
PROXY_CPU=${PROXY_CPU:-1}
LOAD_CPU=${LOAD_CPU:-0}
if [ "${PIN:-1}" = 1 ] && [ "$(nproc)" -ge 2 ] && command -v taskset >/dev/null; then
  on_proxy_cpu=(taskset -c "$PROXY_CPU")
  on_load_cpu=(taskset -c "$LOAD_CPU")
else
  on_proxy_cpu=()
  on_load_cpu=()
fi
for tool in nginx haproxy wrk curl python3; do
  command -v "$tool" >/dev/null || { echo "needs $tool (apt-get install -y nginx haproxy wrk curl)" >&2; exit 1; }
done
[ -n "${SKIP_BUILD:-}" ] || cargo build --release --quiet -p portico -p minimal-pingora -p ws-echo

WORK=$(mktemp -d)
chmod 755 "$WORK"
PORTICOS=${PORTICOS:-"portico=target/release/portico,--access-log,off portico+log=target/release/portico,--access-log,$WORK/access.log"}
PROXIES=${PROXIES:-nginx haproxy minimal-pingora minimal-pingora+${EXTRA_NS}ns $(for v in $PORTICOS; do printf '%s ' "${v%%=*}"; done)}

declare -A PID PORT
stop() { # SIGINT: Pingora and nginx stop at once (SIGTERM would make Pingora wait out its grace period).
  local p
  for p in "$@"; do
    # HAProxy and the echo server, started in the background of a script, inherit an ignored SIGINT.
    if [ "$p" = "${PID[haproxy]:-}" ] || [ "$p" = "${PID[ws-echo]:-}" ]; then
      kill -TERM "$p" 2>/dev/null || true
    else
      kill -INT "$p" 2>/dev/null || true
    fi
  done
  for p in "$@"; do
    for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null || true
  done
}
cleanup() {
  local pids=("${PID[@]}")
  [ -f "$WORK/origin.pid" ] && pids+=("$(cat "$WORK/origin.pid")")
  [ -f "$WORK/nginx.pid" ] && pids+=("$(cat "$WORK/nginx.pid")")
  stop "${pids[@]}"
  [ -n "${KEEP:-}" ] || rm -rf "$WORK"
}
trap cleanup EXIT

port() { python3 -c 'import socket,sys; s=socket.socket(); s.bind((sys.argv[1],0)); print(s.getsockname()[1])' "${1:-127.0.0.1}"; }
wait_http() { for _ in $(seq 100); do curl -sf -o /dev/null "$@" && return 0; sleep 0.1; done; curl -sf -o /dev/null "$@"; }

nginx_common() {
  cat <<EOF
worker_processes 1;
error_log $WORK/$1-error.log error;
pid $WORK/$1.pid;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  keepalive_timeout 300s;
  client_body_temp_path $WORK/$1-tmp;
  proxy_temp_path $WORK/$1-tmp;
  fastcgi_temp_path $WORK/$1-tmp;
  uwsgi_temp_path $WORK/$1-tmp;
  scgi_temp_path $WORK/$1-tmp;
EOF
  mkdir -p "$WORK/$1-tmp"
}

# The origin: one nginx worker on 127.0.0.2, passing /ws to the WebSocket echo server.
ORIGIN_PORT=$(port 127.0.0.2)
WS_PORT=$(port 127.0.0.2)
"${on_load_cpu[@]}" "$WS_ECHO" serve "127.0.0.2:$WS_PORT" >"$WORK/ws-echo.log" 2>&1 &
PID[ws-echo]=$!
mkdir -p "$WORK/site"
chmod 755 "$WORK/site"
echo 'hello from the origin: 33 bytes.' >"$WORK/site/small.txt"
head -c 102400 /dev/urandom >"$WORK/site/big.bin"
chmod 644 "$WORK/site/"*
{ nginx_common origin; cat <<EOF
  sendfile on;
  types { text/plain txt; application/octet-stream bin; }
  server {
    listen 127.0.0.2:$ORIGIN_PORT default_server;
    root $WORK/site;
    location /ws {
      proxy_pass http://127.0.0.2:$WS_PORT;
      proxy_http_version 1.1;
      proxy_set_header Upgrade \$http_upgrade;
      proxy_set_header Connection upgrade;
    }
  }
}
EOF
} >"$WORK/origin.conf"
"${on_load_cpu[@]}" nginx -c "$WORK/origin.conf" -e "$WORK/origin-error.log"
wait_http "http://127.0.0.2:$ORIGIN_PORT/small.txt"
[ "$(curl -s "http://127.0.0.2:$ORIGIN_PORT/small.txt" | wc -c)" = 33 ]

start_nginx() {
  PORT[nginx]=$(port)
  { nginx_common nginx; cat <<EOF
  # A WebSocket's Upgrade goes on; any other request keeps the upstream connection alive.
  map \$http_upgrade \$connection_upgrade { default upgrade; '' ''; }
  upstream origin { server 127.0.0.2:$ORIGIN_PORT; keepalive 64; keepalive_requests 1000000; }
  server {
    listen 127.0.0.1:${PORT[nginx]};
    location / {
      proxy_pass http://origin;
      proxy_http_version 1.1;
      proxy_set_header Upgrade \$http_upgrade;
      proxy_set_header Connection \$connection_upgrade;
      proxy_set_header Host \$host;
      # The 100 KB answer fits in memory: no temporary file.
      proxy_buffers 8 16k;
      add_header X-Proxy nginx always;
    }
  }
}
EOF
  } >"$WORK/nginx.conf"
  "${on_proxy_cpu[@]}" nginx -c "$WORK/nginx.conf" -e "$WORK/nginx-error.log"
  for _ in $(seq 50); do [ -s "$WORK/nginx.pid" ] && break; sleep 0.1; done
  PID[nginx]=$(cat "$WORK/nginx.pid")
}

start_haproxy() {
  PORT[haproxy]=$(port)
  cat >"$WORK/haproxy.cfg" <<EOF
global
  nbthread 1
  maxconn 4096
defaults
  mode http
  option http-keep-alive
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  timeout tunnel 60s
frontend bench
  bind 127.0.0.1:${PORT[haproxy]}
  http-response set-header X-Proxy haproxy
  default_backend origin
backend origin
  http-reuse always
  server origin 127.0.0.2:$ORIGIN_PORT
EOF
  "${on_proxy_cpu[@]}" haproxy -db -f "$WORK/haproxy.cfg" >"$WORK/haproxy.log" 2>&1 &
  PID[haproxy]=$!
}

start_minimal() { # $1 label, $2 extra ns of CPU per request (0: the baseline)
  PORT[$1]=$(port)
  "${on_proxy_cpu[@]}" env MINIMAL_EXTRA_NS="$2" "$MINIMAL" "127.0.0.1:${PORT[$1]}" "127.0.0.2:$ORIGIN_PORT" 1 \
    >"$WORK/$1.log" 2>&1 &
  PID[$1]=$!
}

# Portico: one control, and one `edge --threads 1` per variant following it.
export PORTICO_ADMIN_KEY=bench_admin_key_0123456789 PORTICO_EDGE_TOKEN=bench_edge_token_0123456789
CONTROL_PORT=$(port)
first_bin=${PORTICOS%% *}; first_bin=${first_bin#*=}; first_bin=${first_bin%%,*}
RUST_LOG=error "${on_load_cpu[@]}" "$first_bin" control --listen "127.0.0.1:$CONTROL_PORT" --data-dir "$WORK/control" \
  --upstream-allow 127.0.0.0/8 >"$WORK/control.log" 2>&1 &
PID[control]=$!
wait_http "http://127.0.0.1:$CONTROL_PORT/healthz"

start_portico() { # label=BINARY[,ARG|NAME=VALUE]...
  local label=${1%%=*} spec=${1#*=} bin args=() env=(RUST_LOG=error) a
  IFS=, read -r -a parts <<<"$spec"
  bin=${parts[0]}
  for a in "${parts[@]:1}"; do
    if [[ $a == -* || $a != *=* ]]; then args+=("$a"); else env+=("$a"); fi
  done
  PORT[$label]=$(port)
  "${on_proxy_cpu[@]}" env "${env[@]}" "$bin" edge --control-url "http://127.0.0.1:$CONTROL_PORT" --http "127.0.0.1:${PORT[$label]}" \
    --metrics "127.0.0.1:$(port)" --state-dir "$WORK/edge-$label" --threads 1 "${args[@]}" \
    >"$WORK/edge-$label.log" 2>&1 &
  PID[$label]=$!
}

api() { curl -sf -H "Authorization: Bearer $1" -H 'content-type: application/json' "${@:2}"; }
json() { python3 -c "import json,sys; print(json.load(sys.stdin)$1)"; }
C="http://127.0.0.1:$CONTROL_PORT"
TENANT=$(api "$PORTICO_ADMIN_KEY" -X POST "$C/v1/tenants" -d '{"name":"bench"}' | json '["api_key"]')
# High enough never to refuse, so the limiter still runs its check on every request.
api "$TENANT" -X PUT "$C/v1/tenant/rate-limits" -o /dev/null -d '{"public_per_ip":{"rps":1000000,"burst":1000000},
  "private_per_token":{"rps":1000000,"burst":1000000},"auth_failures_per_ip":{"per_minute":100000}}'
api "$TENANT" -X POST "$C/v1/sandboxes" -o /dev/null \
  -d '{"id":"benchpub","address":"127.0.0.2","default_visibility":"public"}'
AUTH_TOKEN=$(api "$TENANT" -X POST "$C/v1/sandboxes" \
  -d '{"id":"benchpriv","address":"127.0.0.2","default_visibility":"private","preview_auth":{"token":"auto"}}' |
  json '["preview_auth_token"]')
MP_TOKEN=$(api "$TENANT" -X POST "$C/v1/preview-tokens" \
  -d "{\"sandbox_id\":\"benchpriv\",\"port\":$ORIGIN_PORT,\"ttl_seconds\":86400}" | json '["token"]')
PUBLIC_HOST="$ORIGIN_PORT-benchpub.sandbox.localhost"
PRIVATE_HOST="$ORIGIN_PORT-benchpriv.sandbox.localhost"

start_proxies() {
  local proxy v
  for proxy in $PROXIES; do
    unset "PORT[$proxy]"
    case $proxy in
      nginx) rm -f "$WORK/nginx.pid"; start_nginx ;;
      haproxy) start_haproxy ;;
      minimal-pingora) start_minimal "$proxy" 0 ;;
      minimal-pingora+*ns) start_minimal "$proxy" "${proxy//[^0-9]/}" ;;
      *) for v in $PORTICOS; do [ "${v%%=*}" = "$proxy" ] && start_portico "$v"; done ;;
    esac
    [ -n "${PORT[$proxy]:-}" ] || { echo "unknown proxy $proxy" >&2; exit 1; }
  done
}
stop_proxies() {
  local proxy pids=()
  for proxy in $PROXIES; do pids+=("${PID[$proxy]}"); done
  stop "${pids[@]}"
  for proxy in $PROXIES; do unset "PID[$proxy]"; done
}
start_proxies

# path → URL path, expected size, and the request's headers.
declare -A URLPATH SIZE HDRS
URLPATH=([public]=/small.txt [header]=/small.txt [cookie]=/small.txt [100k]=/big.bin [ws]=/ws)
SIZE=([public]=33 [header]=33 [cookie]=33 [100k]=102400)
HDRS=([public]="Host: $PUBLIC_HOST" [100k]="Host: $PUBLIC_HOST" [ws]="Host: $PUBLIC_HOST"
  [header]="Host: $PRIVATE_HOST|X-Portico-Preview-Token: $AUTH_TOKEN"
  [cookie]="Host: $PRIVATE_HOST|Cookie: preview_session=$MP_TOKEN")
headers() { # $1 path, $2 the option (-H): one per header
  local h
  IFS='|' read -r -a hs <<<"${HDRS[$1]}"
  for h in "${hs[@]}"; do printf '%s\0%s\0' "$2" "$h"; done
}

# Every proxy answers every path with the origin's bytes before anything is measured.
check_proxies() {
  for proxy in $PROXIES; do
    for path in $PATHS; do
      if [ "$path" = ws ]; then
        out=$("$WS_ECHO" load "127.0.0.1:${PORT[$proxy]}" "$PUBLIC_HOST" /ws 4 1 32) ||
          { echo "$proxy ws: $out" >&2; tail -20 "$WORK"/*"$proxy"*.log >&2 || true; exit 1; }
        [ "$(awk '/^errors/ {print $2}' <<<"$out")" = 0 ] && [ "$(awk '/^messages/ {print $2}' <<<"$out")" -gt 0 ] ||
          { echo "$proxy ws: no echo: $out" >&2; tail -20 "$WORK"/*"$proxy"*.log >&2 || true; exit 1; }
        continue
      fi
      mapfile -d '' hs < <(headers "$path" -H)
      url="http://127.0.0.1:${PORT[$proxy]}${URLPATH[$path]}"
      for _ in $(seq 100); do [ "$(curl -s -o /dev/null -w '%{http_code}' "${hs[@]}" "$url")" = 200 ] && break; sleep 0.1; done
      got=$(curl -s "${hs[@]}" "$url" | wc -c) || true
      if [ "$got" != "${SIZE[$path]}" ]; then
        echo "$proxy $path: got $got bytes, want ${SIZE[$path]}; its log:" >&2
        tail -20 "$WORK"/*"$proxy"*.log >&2 || true
        exit 1
      fi
      wrk -t1 -c4 -d1s "${hs[@]}" "$url" >/dev/null
    done
  done
}
check_proxies

pids_of() { # the proxy's processes: nginx's master and its workers, else the one process
  if [ "$1" = nginx ]; then echo "${PID[nginx]}" $(pgrep -P "${PID[nginx]}"); else echo "${PID[$1]}"; fi
}
ticks() { # utime+stime, in clock ticks, of all threads of these processes
  local total=0 p s
  for p in "$@"; do
    s=$(cat "/proc/$p/stat")
    read -r -a f <<<"${s##*) }"
    total=$((total + f[11] + f[12]))
  done
  echo "$total"
}
to_ms() { # wrk's latency (e.g. 812.00us, 1.20ms, 1.01s) in ms
  python3 -c 'import re,sys; v,u=re.fullmatch(r"([\d.]+)(us|ms|s)",sys.argv[1]).groups(); print(float(v)*{"us":1e-3,"ms":1,"s":1e3}[u])' "$1"
}

RESULTS=$WORK/results.tsv
: >"$RESULTS"
# One run of one path through one proxy: "requests rps p50_ms p99_ms cpu_ticks non2xx errors".
measure() { # $1 proxy, $2 path; the path's headers in hs
  local proxy=$1 path=$2 url out before after requests rps p50 p99 non2xx errors
  local -a pids
  url="http://127.0.0.1:${PORT[$proxy]}${URLPATH[$path]}"
  read -r -a pids <<<"$(pids_of "$proxy")"
  before=$(ticks "${pids[@]}")
  if [ "$path" = ws ]; then
    out=$("${on_load_cpu[@]}" "$WS_ECHO" load "127.0.0.1:${PORT[$proxy]}" "$PUBLIC_HOST" /ws \
      "$CONNECTIONS" "${DURATION%s}" 32)
    after=$(ticks "${pids[@]}")
    requests=$(awk '/^messages/ {print $2}' <<<"$out")
    rps=$(awk '/^rate/ {print $2}' <<<"$out")
    p50=$(awk '/^p50_us/ {print $2 / 1000}' <<<"$out")
    p99=$(awk '/^p99_us/ {print $2 / 1000}' <<<"$out")
    non2xx=0
    errors=$(awk '/^errors/ {print $2}' <<<"$out")
  else
    out=$("${on_load_cpu[@]}" wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency "${hs[@]}" "$url")
    after=$(ticks "${pids[@]}")
    requests=$(awk '/requests in/ {print $1}' <<<"$out")
    rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
    p50=$(to_ms "$(awk '$1 == "50%" {print $2}' <<<"$out")")
    p99=$(to_ms "$(awk '$1 == "99%" {print $2}' <<<"$out")")
    non2xx=$(awk '/Non-2xx/ {print $NF}' <<<"$out")
    errors=$(awk '/Socket errors/ {gsub(",", ""); print $4 + $6 + $8 + $10}' <<<"$out")
  fi
  if ! [[ "$requests" =~ ^[0-9]+$ ]] || [ "$requests" = 0 ]; then
    echo "$proxy $path: no requests measured; the load generator said:" >&2
    echo "$out" >&2
    return 1
  fi
  echo "$requests $rps $p50 $p99 $((after - before)) ${non2xx:-0} ${errors:-0}"
}
# Slices of one path, each proxy's runs taken in turn: requests and CPU summed, req/s the mean, latencies
# the median of the slices'.
combine() {
  python3 -c '
import statistics, sys
s = [l.split() for l in sys.stdin if l.strip()]
col = lambda i, f=float: [f(r[i]) for r in s]
print(sum(col(0, int)), round(statistics.mean(col(1)), 2), round(statistics.median(col(2)), 3),
      round(statistics.median(col(3)), 3), sum(col(4, int)), sum(col(5, int)), sum(col(6, int)), sep="\t")'
}
read -r -a order <<<"$PROXIES"
echo "$ROUNDS rounds × paths ($PATHS) × proxies (${order[*]}), $SLICES slices of" \
  "wrk -t$THREADS -c$CONNECTIONS -d$DURATION each" >&2
for round in $(seq "$ROUNDS"); do
  # Fresh processes every round: where ASLR puts a process's stack and heap moves its CPU per request by
  # up to 5 % for its whole life (same binary, one process against another), so one set of processes would
  # compare layouts as much as proxies. Medians over rounds are over layouts too.
  if [ "$round" -gt 1 ] && [ "${RESTART:-1}" = 1 ]; then
    stop_proxies
    start_proxies
    check_proxies
  fi
  for path in $PATHS; do
    mapfile -d '' hs < <(headers "$path" -H)
    # The proxies take turns slice by slice: a neighbour's burst on a shared host lands on one slice of
    # each, not on one proxy's whole run.
    declare -A slices=()
    for _ in $(seq "$SLICES"); do
      for proxy in "${order[@]}"; do
        slices[$proxy]+="$(measure "$proxy" "$path")"$'\n'
      done
    done
    for proxy in "${order[@]}"; do
      printf '%s\t%s\t%s\t%s\n' "$round" "$path" "$proxy" "$(combine <<<"${slices[$proxy]}")" |
        tee -a "$RESULTS" >&2
    done
    unset slices
  done
  order=("${order[@]:1}" "${order[0]}") # the next round starts with the next proxy
done

[ -z "$OUT" ] || cp "$RESULTS" "$OUT"
echo "$SLICES × wrk -t$THREADS -c$CONNECTIONS -d$DURATION per round, $(nproc) cores, $(git rev-parse --short HEAD 2>/dev/null || echo '?'), $(date -u +%FT%TZ)"
python3 benches/proxies/table.py "$RESULTS"
