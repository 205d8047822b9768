#!/usr/bin/env bash
# A host at registry scale (issue 14): seeds a new data directory with ROWS synthetic machines
# (`tally bench --seed-registry`, which also times a registry page, search and count), starts a
# release --dev host on it and times its start (spawn to listening), then loads it with
# keep-alive clients (16 in flight, with the raw baseline) and prints the database's size.
# Usage: scripts/bench-registry.sh [rows] [seconds]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
rows="${1:-10000000}"; secs="${2:-5}"
cargo build --release -q -p tally-cli
dir="$(mktemp -d)"
pid=
trap '[ -n "$pid" ] && { kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; }; rm -rf "$dir"' EXIT
./target/release/tally bench --seed-registry "$rows" --data-dir "$dir/host" | tee "$dir/seed"
# The load asks for the seeded machines' edition, so its machines join the large registry (the
# bench edition would keep them in a small table of their own); this data dir is scratch.
sku="$(sed -n 's/.*--sku \([0-9a-f-]*\),.*/\1/p' "$dir/seed")"
start=$(date +%s%N)
./target/release/tally host run --dev --listen 127.0.0.1:0 --data-dir "$dir/host" >"$dir/out" 2>"$dir/log" &
pid=$!
for _ in $(seq 2000); do grep -q "tally host listening" "$dir/out" 2>/dev/null && break; sleep 0.005; done
echo "host start with $rows machines: $(( ($(date +%s%N) - start) / 1000000 )) ms (spawn to listening; the first start also creates the dev identity)"
addr="$(sed -n 's/tally host listening on //p' "$dir/out")"
./target/release/tally bench --host "$addr" --baseline --concurrency 16 --duration "$secs" \
  --host-pid "$pid" --keepalive --sku "$sku"
kill "$pid"; wait "$pid" 2>/dev/null || true; pid=
start=$(date +%s%N)
./target/release/tally host run --dev --listen 127.0.0.1:0 --data-dir "$dir/host" >"$dir/out" 2>"$dir/log" &
pid=$!
for _ in $(seq 2000); do grep -q "tally host listening" "$dir/out" 2>/dev/null && break; sleep 0.005; done
echo "host restart with $rows machines: $(( ($(date +%s%N) - start) / 1000000 )) ms (spawn to listening)"
du -sh --apparent-size "$dir/host/tally.db"* | sed 's/^/database: /'
