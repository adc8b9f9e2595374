#!/usr/bin/env bash
# TLS handshake rate of `portico edge` against nginx, both serving the same certificate (ECDSA P-256,
# what ACME issues by default) on loopback, measured one after the other with the same client:
# a full TLS 1.3 handshake per connection (no resumption), for DURATION seconds each.
#
#   bash benches/tls_handshakes.sh            # needs: cargo build --release, nginx, openssl
#   DURATION=10 CLIENTS=2 bash benches/tls_handshakes.sh
#
# Everything runs on 127.0.0.1 and stops by itself. Prints handshakes per second of each and the ratio.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10}
CLIENTS=${CLIENTS:-2}
BIN=${BIN:-target/release/portico}
command -v nginx >/dev/null || { echo "nginx is needed: apt-get install nginx-light" >&2; exit 1; }
command -v openssl >/dev/null || { echo "openssl is needed" >&2; exit 1; }
command -v python3 >/dev/null || { echo "python3 is needed (the client)" >&2; exit 1; }
[ -x "$BIN" ] || { echo "$BIN missing: cargo build --release" >&2; exit 1; }

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

host=bench.example.test
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 -subj "/CN=$host" \
  -addext "subjectAltName=DNS:$host" -keyout "$work/bench.key" -out "$work/bench.crt" 2>/dev/null
chmod 600 "$work/bench.key"
mkdir -p "$work/certs"
cp "$work/bench.crt" "$work/bench.key" "$work/certs/"

# Portico: control (for the edge to follow) and one edge with the certificate in --certs-dir.
control_port=$(free_port); http_port=$(free_port); https_port=$(free_port); metrics_port=$(free_port)
export PORTICO_ADMIN_KEY=bench_admin_key_0123456789 PORTICO_EDGE_TOKEN=bench_edge_token_0123456789 RUST_LOG=error
"$BIN" control --listen "127.0.0.1:$control_port" --data-dir "$work/control" >/dev/null 2>&1 & pids+=($!)
"$BIN" edge --control-url "http://127.0.0.1:$control_port" --http "127.0.0.1:$http_port" \
  --https "127.0.0.1:$https_port" --certs-dir "$work/certs" --metrics "127.0.0.1:$metrics_port" \
  --threads "$CLIENTS" >/dev/null 2>&1 & pids+=($!)

# nginx: the same certificate, the same number of workers, nothing but the handshake and a 404.
nginx_port=$(free_port)
cat >"$work/nginx.conf" <<EOF
worker_processes $CLIENTS;
pid $work/nginx.pid;
error_log $work/nginx.err;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $work/tmp; proxy_temp_path $work/tmp; fastcgi_temp_path $work/tmp;
  uwsgi_temp_path $work/tmp; scgi_temp_path $work/tmp;
  server {
    listen 127.0.0.1:$nginx_port ssl http2;
    server_name $host;
    ssl_certificate $work/bench.crt;
    ssl_certificate_key $work/bench.key;
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_session_cache off;
    ssl_session_tickets off;
    location / { return 404; }
  }
}
EOF
mkdir -p "$work/tmp"
nginx -c "$work/nginx.conf" -g 'daemon off;' & pids+=($!)

wait_tls() {
  for _ in $(seq 1 100); do
    if openssl s_client -connect "127.0.0.1:$1" -servername "$host" </dev/null >/dev/null 2>&1; then return 0; fi
    sleep 0.1
  done
  echo "nothing answered TLS on port $1" >&2; exit 1
}
wait_tls "$https_port"
wait_tls "$nginx_port"

# CLIENTS processes, each opening connections back to back for DURATION seconds and doing one full TLS 1.3
# handshake (with SNI, no session resumption) per connection; the rate is their sum. `openssl s_time`
# cannot send SNI, and portico has no default certificate, so the client is Python's ssl (OpenSSL).
cat >"$work/client.py" <<'EOF'
import multiprocessing, socket, ssl, sys, time
port, host, duration, clients, ca = int(sys.argv[1]), sys.argv[2], float(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
def loop(_):
    ctx = ssl.create_default_context(cafile=ca)
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    n, end = 0, time.monotonic() + duration
    while time.monotonic() < end:
        with socket.create_connection(("127.0.0.1", port)) as raw:
            with ctx.wrap_socket(raw, server_hostname=host):
                n += 1
    return n
with multiprocessing.Pool(clients) as pool:
    print(sum(pool.map(loop, range(clients))) / duration)
EOF
rate() { python3 "$work/client.py" "$1" "$host" "$DURATION" "$CLIENTS" "$work/bench.crt"; }

portico=$(rate "$https_port")
nginx_rate=$(rate "$nginx_port")
echo "full TLS handshakes per second, $CLIENTS clients, ${DURATION}s each, same ECDSA P-256 certificate:"
echo "  portico edge: $portico/s"
echo "  nginx:        $nginx_rate/s"
echo "  ratio portico/nginx: $(python3 -c "print(round($portico / $nginx_rate, 2))")"
