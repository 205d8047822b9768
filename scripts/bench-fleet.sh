#!/usr/bin/env bash
# Fleet figures for the README and ARCHITECTURE: req/s and host CPU per request for
#   1 host on SQLite, 1 host on PostgreSQL, 3 hosts on PostgreSQL (one database),
# each with fresh connections and with keep-alive, against the raw baseline of the same run.
# Starts a throwaway PostgreSQL on a free loopback port (initdb as the `postgres` user when run
# as root), stops everything at the end. Usage: scripts/bench-fleet.sh [seconds] [concurrency]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
secs="${1:-5}"
conc="${2:-64}"
cargo build --release -q -p tally-cli
tally="$PWD/target/release/tally"

pgbin="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true)"
[ -x "$pgbin/initdb" ] || pgbin="$(dirname "$(command -v initdb)")"
work="$(mktemp -d)"
chmod 755 "$work"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  as_pg "$pgbin/pg_ctl" -D "$work/pg" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
mkdir -p "$work/pg"
[ "$(id -u)" = 0 ] && chown postgres "$work/pg"
as_pg "$pgbin/initdb" -D "$work/pg" -U postgres -A trust >/dev/null
cat >>"$work/pg/postgresql.conf" <<EOF
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$work/pg'
max_connections = 200
EOF
as_pg "$pgbin/pg_ctl" -D "$work/pg" -w -l "$work/pg/log" start >/dev/null
as_pg "$pgbin/psql" -h 127.0.0.1 -p "$port" -U postgres -qc "CREATE DATABASE fleet" >/dev/null
url="postgres://postgres@127.0.0.1:$port/fleet"

# start_host NAME [extra flags]: starts a dev host, sets $addr and $pid.
start_host() {
  local name="$1"; shift
  mkdir -p "$work/$name"
  "$tally" host run --dev --listen 127.0.0.1:0 --data-dir "$work/$name" --host-name "$name" "$@" \
    >"$work/$name.out" 2>"$work/$name.log" &
  pid=$!
  pids+=("$pid")
  for _ in $(seq 200); do grep -q "host listening" "$work/$name.out" 2>/dev/null && break; sleep 0.05; done
  addr="$(sed -n 's/tally host listening on //p' "$work/$name.out")"
  [ -n "$addr" ] || { cat "$work/$name.log"; exit 1; }
}

bench() { # label, hosts (comma list), pids (comma list)
  local label="$1" hosts="$2" hpids="$3"
  for mode in "" "--keepalive"; do
    echo "== $label ${mode:-(fresh connections)}"
    "$tally" bench --host "$hosts" --host-pid "$hpids" --baseline --concurrency "$conc" \
      --duration "$secs" $mode
    echo
  done
}

start_host sqlite
bench "1 host, SQLite" "$addr" "$pid"
kill "$pid"; wait "$pid" 2>/dev/null || true

start_host pg1 --database "$url"
bench "1 host, PostgreSQL" "$addr" "$pid"
kill "$pid"; wait "$pid" 2>/dev/null || true

hosts=(); hpids=()
for n in a b c; do start_host "fleet-$n" --database "$url"; hosts+=("$addr"); hpids+=("$pid"); done
bench "3 hosts, PostgreSQL" "$(IFS=,; echo "${hosts[*]}")" "$(IFS=,; echo "${hpids[*]}")"
