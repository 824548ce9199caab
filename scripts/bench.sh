#!/usr/bin/env bash
# Benchmarks (not tests): builds the release edgecar and runs each benchmark, which prints its
# figures next to a reference measured in the same run. Record results in docs/benchmarks.md.
# Usage: scripts/bench.sh [bench-name ...]   (default: all)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked -p edgecar
export EDGECAR_BIN="$PWD/target/release/edgecar"
# mqtt_telemetry holds 10,000 device connections open (edgecar and mosquitto inherit the limit).
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
for bench in "${@:-state_http grpc capabilities pubsub mqtt_requests mqtt_telemetry login_restart quic_requests idle_rss}"; do
  for b in $bench; do
    printf '\n==> %s\n' "$b"
    cargo bench --locked -p edgecar-tests --bench "$b"
  done
done
