#!/usr/bin/env bash
# Fuzzes every decoder of outside bytes for a bounded time (docs/fuzzing.md):
#   scripts/fuzz.sh [seconds-per-target] [target...]
# Installs cargo-fuzz if missing, builds every target once on the stable toolchain (libFuzzer,
# coverage instrumentation, no sanitizer: Rust code needs none), runs each for the given time
# (default 45 s) starting from its committed seed corpus, prints the executions per target, and
# fails on the first crash, panic, hang or out-of-memory, printing the input that caused it.
# New corpus entries go to a scratch directory: the committed corpora are only read.
set -euo pipefail
cd "$(dirname "$0")/.."

secs=${1:-45}
shift || true
all=(mqtt_packet device_request http_request config_yaml pubsub_event quic_frame)
if (($#)); then targets=("$@"); else targets=("${all[@]}"); fi
fuzz_dir=gateway/fuzz
target_dir=target/fuzz
triple=$(rustc -vV | sed -n 's/^host: //p')
bin_dir=$target_dir/$triple/release
out=$target_dir/runs
cargo_fuzz_version=0.13.2

if ! cargo fuzz --version 2>/dev/null | grep -q "$cargo_fuzz_version"; then
  echo "installing cargo-fuzz $cargo_fuzz_version"
  cargo install --locked --quiet cargo-fuzz --version "$cargo_fuzz_version"
fi

# One build of every target. With `--sanitizer none` cargo-fuzz passes only stable codegen flags
# (coverage passes through -Cllvm-args), so no nightly toolchain is needed.
set +e
cargo fuzz build --fuzz-dir "$fuzz_dir" --target-dir "$target_dir" --sanitizer none 2>&1 |
  grep -v '^ *Compiling '
build=${PIPESTATUS[0]}
set -e
if [ "$build" -ne 0 ]; then
  echo "the fuzz targets did not build" >&2
  exit 1
fi

mkdir -p "$out"
failed=()
summary=()
for t in "${targets[@]}"; do
  scratch="$out/$t"
  rm -rf "$scratch"
  mkdir -p "$scratch/corpus" "$scratch/artifacts"
  log="$scratch/fuzz.log"
  printf '%-16s %3ss ... ' "$t" "$secs"
  set +e
  # Scratch corpus first: libFuzzer writes new inputs only to the first directory.
  "$bin_dir/$t" -max_total_time="$secs" -print_final_stats=1 -timeout=20 -rss_limit_mb=2048 \
    -max_len=65536 -artifact_prefix="$scratch/artifacts/" \
    "$scratch/corpus" "$fuzz_dir/corpus/$t" >"$log" 2>&1
  rc=$?
  set -e
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1 || true)
  cov=$(grep -Eo 'cov: [0-9]+' "$log" | tail -1 | tr -dc 0-9 || true)
  if [ "$rc" -eq 0 ]; then
    echo "ok: ${execs:-?} executions, coverage ${cov:-?}"
    summary+=("$t ${execs:-?}")
  else
    echo "FAILED (exit $rc)"
    tail -n 60 "$log"
    for a in "$scratch"/artifacts/*; do
      [ -e "$a" ] && echo "crash input: $a (reproduce: $bin_dir/$t $a)"
    done
    failed+=("$t")
  fi
done

echo "executions per target (${secs}s each): ${summary[*]:-none}"
if ((${#failed[@]})); then
  echo "fuzzing found a crash in: ${failed[*]}" >&2
  exit 1
fi
