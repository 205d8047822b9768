#!/usr/bin/env bash
# Reproduces the README's performance table: starts a release --dev host on loopback and runs
# `tally bench` against it in the issue-14 conditions (fresh connections with 64 in flight,
# keep-alive with 16 in flight), each with --baseline (the raw 250-byte echo limit measured in
# the same run) and --host-pid (the host's CPU time per request, from /proc), three interleaved
# rounds. The bench asks for the bench edition: nothing reaches a real pool or report.
# Usage: scripts/bench.sh [seconds per run] [rounds] [extra host flags…]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
secs="${1:-5}"; rounds="${2:-3}"; shift 2 || shift $# || true
cargo build --release -q -p tally-cli
dir="$(mktemp -d)"
trap 'kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; rm -rf "$dir"' EXIT
./target/release/tally host run --dev --listen 127.0.0.1:0 --data-dir "$dir" "$@" >"$dir/out" 2>"$dir/log" &
pid=$!
for _ in $(seq 200); do grep -q listening "$dir/out" 2>/dev/null && break; sleep 0.05; done
addr="$(sed -n 's/tally host listening on //p' "$dir/out")"
for round in $(seq "$rounds"); do
  echo "== round $round of $rounds"
  ./target/release/tally bench --host "$addr" --baseline --concurrency 64 --duration "$secs" \
    --host-pid "$pid"
  echo
  ./target/release/tally bench --host "$addr" --baseline --concurrency 16 --duration "$secs" \
    --host-pid "$pid" --keepalive
  echo
done
