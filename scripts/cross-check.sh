#!/usr/bin/env bash
# The appliance guard: edgecar must build for the boards it ships to and run there.
#  - release builds for aarch64 and armv7 with Debian's cross gcc (linkers in .cargo/config.toml),
#  - `edgecar --version` of both under qemu-user, and a state save/get smoke test of the aarch64
#    binary serving real HTTP,
#  - no TLS stack but rustls+ring in the tree (no aws-lc-sys, no openssl-sys).
set -euo pipefail
cd "$(dirname "$0")/.."

for crate in aws-lc-sys openssl-sys; do
  if cargo tree --workspace --target all -e normal,build -i "$crate" >/dev/null 2>&1; then
    echo "FAIL: $crate is in the dependency tree:"; cargo tree --workspace --target all -i "$crate"; exit 1
  fi
  echo "ok: no $crate in the tree"
done

run_arm() { # target, qemu, sysroot, args...
  local target=$1 qemu=$2 sysroot=$3; shift 3
  "$qemu" -L "$sysroot" "target/$target/release/edgecar" "$@"
}

for spec in "aarch64-unknown-linux-gnu qemu-aarch64-static /usr/aarch64-linux-gnu" \
            "armv7-unknown-linux-gnueabihf qemu-arm-static /usr/arm-linux-gnueabihf"; do
  read -r target qemu sysroot <<<"$spec"
  cargo build --release --locked -p edgecar --target "$target"
  size=$(stat -c %s "target/$target/release/edgecar")
  echo "ok: $target release binary (stripped): $size bytes ($((size / 1024 / 1024)) MiB)"
  run_arm "$target" "$qemu" "$sysroot" --version
done

# aarch64 smoke test: the emulated daemon serves a state save and get.
work=$(mktemp -d)
log="$work/edgecar.log"
# Started directly (not through run_arm) so that $! is the emulated daemon itself.
qemu-aarch64-static -L /usr/aarch64-linux-gnu target/aarch64-unknown-linux-gnu/release/edgecar \
  run --dapr-http-port 0 --dapr-grpc-port 0 --mqtt-port 0 --metrics-port 0 --state-dir "$work/data" 2>"$log" &
pid=$!
trap 'kill -9 $pid 2>/dev/null || true; rm -rf "$work"' EXIT
port=""
for _ in $(seq 1 300); do
  port=$(sed -n 's/.*Dapr HTTP API listening addr=127\.0\.0\.1:\([0-9]*\).*/\1/p' "$log" | head -n1)
  [ -n "$port" ] && break
  sleep 0.1
done
[ -n "$port" ] || { echo "FAIL: aarch64 edgecar did not start under qemu:"; cat "$log"; exit 1; }
base="http://127.0.0.1:$port/v1.0"
code=$(curl -s -o /dev/null -w '%{http_code}' -X POST "$base/state/statestore" \
  -H 'content-type: application/json' -d '[{"key":"board","value":{"arch":"aarch64"}}]')
[ "$code" = 204 ] || { echo "FAIL: save answered $code"; cat "$log"; exit 1; }
got=$(curl -s "$base/state/statestore/board")
[ "$got" = '{"arch":"aarch64"}' ] || { echo "FAIL: get returned $got"; cat "$log"; exit 1; }
kill -TERM $pid
status=0; wait $pid || status=$?
[ "$status" = 0 ] || { echo "FAIL: aarch64 edgecar exited with $status after SIGTERM"; cat "$log"; exit 1; }
echo "ok: aarch64 edgecar under qemu saved and read back state, then exited cleanly on SIGTERM"
