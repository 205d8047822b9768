#!/usr/bin/env bash
# Reproduces the numbers in the README: starts a release --dev host on loopback, runs
# `tally bench` against it with fresh connections and with keep-alive (each with --baseline),
# then stops the host. Usage: scripts/bench.sh [seconds] [extra host flags…]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
secs="${1:-5}"; shift || true
cargo build --release -q -p tally-cli
dir="$(mktemp -d)"
trap 'kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; rm -rf "$dir"' EXIT
./target/release/tally host run --dev --listen 127.0.0.1:0 --data-dir "$dir" "$@" >"$dir/out" 2>"$dir/log" &
pid=$!
for _ in $(seq 100); do grep -q listening "$dir/out" 2>/dev/null && break; sleep 0.05; done
addr="$(sed -n 's/tally host listening on //p' "$dir/out")"
for mode in "" "--keepalive"; do
  ./target/release/tally bench --host "$addr" --baseline --concurrency 64 --duration "$secs" \
    --host-pid "$pid" $mode
  echo
done
