#!/usr/bin/env bash
# Debian packages (cargo-deb) from release builds that already exist, one per target given:
#   scripts/package.sh x86_64-unknown-linux-gnu aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf
# x86_64 packages target/release/edgecar (the host build), the others
# target/<triple>/release/edgecar (scripts/cross-check.sh builds them). Nothing is rebuilt.
# The man pages come from the host release binary (`edgecar man`; they do not depend on the
# architecture). Packages land in target/debian/: edgecar_<version>-1_{amd64,arm64,armhf}.deb.
set -euo pipefail
cd "$(dirname "$0")/.."

command -v cargo-deb >/dev/null || { echo "FAIL: cargo-deb is missing: cargo install --locked cargo-deb"; exit 1; }
[ -x target/release/edgecar ] || { echo "FAIL: target/release/edgecar is missing: cargo build --release -p edgecar"; exit 1; }
rm -rf target/man
target/release/edgecar man target/man
mkdir -p target/debian
for triple in "$@"; do
  if [ "$triple" = x86_64-unknown-linux-gnu ]; then
    cargo deb -p edgecar --no-build --no-strip --locked -o target/debian/
  else
    [ -x "target/$triple/release/edgecar" ] || { echo "FAIL: target/$triple/release/edgecar is missing (scripts/cross-check.sh builds it)"; exit 1; }
    cargo deb -p edgecar --no-build --no-strip --locked --target "$triple" -o target/debian/
  fi
done
ls -l target/debian/
