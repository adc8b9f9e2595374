#!/usr/bin/env bash
# Zero-downtime edge upgrade under systemd: the idle instance (blue/green) starts with --upgrade and, when
# the running one gets SIGQUIT, takes over its listening sockets; the old process drains and exits.
# Install the new binary at /usr/local/bin/portico first, then run this script as root.
set -euo pipefail
if systemctl is-active --quiet portico-edge@blue; then old=blue new=green; else old=green new=blue; fi
mkdir -p /run/portico
echo PORTICO_UPGRADE=true > "/run/portico/upgrade-$new.env"
trap 'rm -f "/run/portico/upgrade-$new.env"' EXIT
systemctl start --no-block "portico-edge@$new"
sleep 1                                 # the new process is waiting on the upgrade socket
systemctl kill -s QUIT "portico-edge@$old"
for _ in $(seq 1 30); do
  systemctl is-active --quiet "portico-edge@$old" || break
  sleep 1
done
systemctl disable --quiet "portico-edge@$old" || true
systemctl enable --quiet "portico-edge@$new"
echo "portico edge now runs as portico-edge@$new"
# Whether the new process follows control (it serves either way; see its /readyz).
metrics=$(sed -n 's/^PORTICO_METRICS=//p' /etc/portico/edge.env 2>/dev/null | tail -n 1)
curl -sS "http://${metrics:-127.0.0.1:9090}/readyz" || true
