#!/usr/bin/env bash
# Benchmarks (not tests): builds the release edgecar and runs each benchmark, which prints its
# figures next to a reference measured in the same run. Record results in docs/benchmarks.md.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked -p edgecar
EDGECAR_BIN="$PWD/target/release/edgecar" cargo bench --locked -p edgecar-tests --bench state_http
EDGECAR_BIN="$PWD/target/release/edgecar" cargo bench --locked -p edgecar-tests --bench mqtt_requests
