#!/usr/bin/env bash
# Serving one 10 KB static file from a release: requests per second of `portico edge` against nginx serving
# the same file from disk, side by side in one run, both on loopback, measured with the same wrk settings.
# Beside them, benches/minimal-pingora answering with the same bytes from memory: the floor of any Pingora
# service that answers requests itself, so the gap to nginx splits into Pingora's part and the edge's.
#
#   bash benches/static_vs_nginx.sh            # needs nginx and wrk (apt-get install -y nginx wrk)
#   DURATION=20s CONNECTIONS=64 THREADS=2 WORKERS=2 bash benches/static_vs_nginx.sh
#   SKIP_BUILD=1 bash benches/static_vs_nginx.sh   # use the binaries already built in target/release
#   ROUNDS=5 bash benches/static_vs_nginx.sh        # alternating rounds (default 3); medians are reported
#
# Both servers get the same number of worker threads (WORKERS; default: all cores), no compression
# (wrk sends no Accept-Encoding) and no access log. wrk runs on the same machine, so absolute numbers
# depend on it; the ratio is the result.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-64}
THREADS=${THREADS:-2}
WORKERS=${WORKERS:-$(nproc)}
for tool in nginx wrk curl python3; do
  command -v "$tool" >/dev/null || { echo "needs $tool (apt-get install -y nginx wrk)" >&2; exit 1; }
done

[ -n "${SKIP_BUILD:-}" ] || cargo build --release --quiet -p portico -p minimal-pingora
BIN=${BIN:-target/release/portico}
MINIMAL=${MINIMAL:-target/release/minimal-pingora}
ROUNDS=${ROUNDS:-3}

WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  [ -f "$WORK/nginx.pid" ] && kill "$(cat "$WORK/nginx.pid")" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
[ -n "${KEEP:-}" ] && trap - EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
CONTROL_PORT=$(port); EDGE_PORT=$(port); METRICS_PORT=$(port); NGINX_PORT=$(port); MINIMAL_PORT=$(port)

# The file: 10 KB of HTML, once in a release archive and once in nginx's root.
mkdir -p "$WORK/site"
# nginx workers run as an unprivileged user: they must be able to read the file.
chmod 755 "$WORK" "$WORK/site"
python3 -c 'import sys; sys.stdout.write(("<p>" + "x" * 95 + "</p>\n") * 100)' > "$WORK/site/page.html"
tar -C "$WORK/site" -czf "$WORK/site.tar.gz" page.html
SHA=$(sha256sum "$WORK/site.tar.gz" | cut -d' ' -f1)

export PORTICO_ADMIN_KEY=bench_admin_key_0123456789 PORTICO_EDGE_TOKEN=bench_edge_token_0123456789 RUST_LOG=error
"$BIN" control --listen "127.0.0.1:$CONTROL_PORT" --data-dir "$WORK/control" >"$WORK/control.log" 2>&1 &
PIDS+=($!)
"$BIN" edge --control-url "http://127.0.0.1:$CONTROL_PORT" --http "127.0.0.1:$EDGE_PORT" \
  --metrics "127.0.0.1:$METRICS_PORT" --state-dir "$WORK/edge" --threads "$WORKERS" --access-log off \
  >"$WORK/edge.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$CONTROL_PORT/healthz" >/dev/null && break; sleep 0.1; done

api() { curl -sf -H "Authorization: Bearer $1" -H 'content-type: application/json' "${@:2}"; }
TENANT=$(api "$PORTICO_ADMIN_KEY" -X POST "http://127.0.0.1:$CONTROL_PORT/v1/tenants" -d '{"name":"bench"}' |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["api_key"])')
# Rate limits out of the way: this measures serving, not refusing.
api "$TENANT" -X PUT "http://127.0.0.1:$CONTROL_PORT/v1/tenant/rate-limits" -o /dev/null \
  -d '{"public_per_ip":{"rps":1000000,"burst":1000000},"private_per_token":{"rps":100,"burst":100},"auth_failures_per_ip":{"per_minute":30}}'
api "$TENANT" -X PUT "http://127.0.0.1:$CONTROL_PORT/v1/releases/$SHA" --data-binary "@$WORK/site.tar.gz" -o /dev/null
DEP=$(api "$TENANT" -X POST "http://127.0.0.1:$CONTROL_PORT/v1/deployments" -d '{"name":"bench","workspace":"static"}' |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
VER=$(api "$TENANT" -X POST "http://127.0.0.1:$CONTROL_PORT/v1/deployments/$DEP/versions" -d "{\"release\":\"$SHA\"}" |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
api "$TENANT" -X POST "http://127.0.0.1:$CONTROL_PORT/v1/deployments/$DEP/promote" -d "{\"version_id\":\"$VER\"}" -o /dev/null

HOST=bench.static.apps.localhost
EDGE_URL="http://127.0.0.1:$EDGE_PORT/page.html"
for _ in $(seq 100); do
  [ "$(curl -s -o /dev/null -w '%{http_code}' -H "Host: $HOST" "$EDGE_URL")" = 200 ] && break
  sleep 0.1
done
curl -s -H "Host: $HOST" "$EDGE_URL" -o "$WORK/got.html"; cmp "$WORK/got.html" "$WORK/site/page.html"

cat >"$WORK/nginx.conf" <<EOF
worker_processes $WORKERS;
pid $WORK/nginx.pid;
error_log $WORK/nginx-error.log error;
events { worker_connections 4096; }
http {
  access_log off;
  sendfile on;
  tcp_nopush on;
  keepalive_requests 1000000;
  types { text/html html; }
  client_body_temp_path $WORK/nginx-tmp;
  proxy_temp_path $WORK/nginx-tmp;
  fastcgi_temp_path $WORK/nginx-tmp;
  uwsgi_temp_path $WORK/nginx-tmp;
  scgi_temp_path $WORK/nginx-tmp;
  server {
    listen 127.0.0.1:$NGINX_PORT;
    root $WORK/site;
    etag on;
  }
}
EOF
mkdir -p "$WORK/nginx-tmp"
nginx -c "$WORK/nginx.conf" -e "$WORK/nginx-error.log"
NGINX_URL="http://127.0.0.1:$NGINX_PORT/page.html"
for _ in $(seq 50); do curl -sf "$NGINX_URL" >/dev/null && break; sleep 0.1; done
curl -sf "$NGINX_URL" | cmp - "$WORK/site/page.html"

"$MINIMAL" "127.0.0.1:$MINIMAL_PORT" "file=$WORK/site/page.html" "$WORKERS" >"$WORK/minimal.log" 2>&1 &
PIDS+=($!)
MINIMAL_URL="http://127.0.0.1:$MINIMAL_PORT/page.html"
for _ in $(seq 50); do curl -sf "$MINIMAL_URL" >/dev/null && break; sleep 0.1; done
curl -sf "$MINIMAL_URL" | cmp - "$WORK/site/page.html"

rps() { wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" "$@" | awk '/Requests\/sec/ {print $2}'; }
# Warm all three, then alternate rounds so that a change in the machine's speed touches each alike.
wrk -t1 -c4 -d1s -H "Host: $HOST" "$EDGE_URL" >/dev/null
wrk -t1 -c4 -d1s "$NGINX_URL" >/dev/null
wrk -t1 -c4 -d1s "$MINIMAL_URL" >/dev/null
EDGE=(); NGINX=(); MIN=()
for _ in $(seq "$ROUNDS"); do
  EDGE+=("$(rps -H "Host: $HOST" "$EDGE_URL")")
  NGINX+=("$(rps "$NGINX_URL")")
  MIN+=("$(rps "$MINIMAL_URL")")
done

echo "10 KB static file, $CONNECTIONS connections, $THREADS wrk threads, $WORKERS server workers, $ROUNDS rounds of $DURATION"
python3 - "${EDGE[*]}" "${NGINX[*]}" "${MIN[*]}" <<'PY'
import statistics, sys
edge, nginx, minimal = (statistics.median(map(float, a.split())) for a in sys.argv[1:4])
for name, v, runs in (("portico edge", edge, sys.argv[1]), ("nginx", nginx, sys.argv[2]),
                      ("minimal pingora", minimal, sys.argv[3])):
    print(f"{name:16} {v:12.0f} req/s (median of {runs})")
print(f"ratio portico/nginx: {edge / nginx:.2f}")
print(f"ratio minimal pingora/nginx: {minimal / nginx:.2f}   portico/minimal pingora: {edge / minimal:.2f}")
PY
