#!/usr/bin/env bash
# The packages as an operator gets them (scripts/package.sh builds them into target/debian/):
#  - every .deb has the right architecture, the binary for it, the unit, the config and
#    components as conffiles, the man page and the README;
#  - the amd64 one is installed with dpkg into a scratch root (dpkg --root, maintainer scripts
#    run chrootless against that root), which must then hold the edgecar system user, a
#    /var/lib/edgecar it owns, a config that passes check-config, and a unit that
#    `systemd-analyze verify` accepts with its binary and man page in place;
#  - `dpkg -r` keeps the data and the conffiles, `dpkg --purge` deletes both.
# The scratch root has no libc6/passwd packages registered, hence --force-depends; the
# maintainer scripts use the host's useradd (--root) on the scratch root's /etc/passwd.
set -euo pipefail
cd "$(dirname "$0")/.."

fail() { echo "FAIL: $*"; exit 1; }
shopt -s nullglob

declare -A machine=([amd64]="X86-64" [arm64]="AArch64" [armhf]="ARM")
debs=(target/debian/edgecar_*.deb)
((${#debs[@]})) || fail "no packages in target/debian (scripts/package.sh builds them)"
for deb in "${debs[@]}"; do
  arch=$(dpkg-deb --field "$deb" Architecture)
  [ -n "${machine[$arch]:-}" ] || fail "$deb: unexpected architecture $arch"
  listing=$(dpkg-deb --contents "$deb")
  for f in ./usr/bin/edgecar ./usr/lib/systemd/system/edgecar.service ./etc/edgecar/edgecar.yaml \
           ./etc/edgecar/components/statestore.yaml ./etc/edgecar/components/pubsub.yaml \
           ./usr/share/man/man1/edgecar.1.gz ./usr/share/man/man1/edgecar-run.1.gz \
           ./usr/share/doc/edgecar/README.md; do
    grep -q " $f\$" <<<"$listing" || fail "$deb lacks $f"
  done
  x=$(mktemp -d)
  dpkg-deb --control "$deb" "$x/control"
  for c in /etc/edgecar/edgecar.yaml /etc/edgecar/components/statestore.yaml /etc/edgecar/components/pubsub.yaml; do
    grep -qx "$c" "$x/control/conffiles" || fail "$deb: $c is not a conffile"
  done
  dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$x" ./usr/bin/edgecar
  readelf -h "$x/usr/bin/edgecar" | grep -q "Machine:.*${machine[$arch]}" || fail "$deb: usr/bin/edgecar is not a ${machine[$arch]} binary"
  echo "ok: $deb ($arch, $(stat -c %s "$deb") bytes): binary, unit, conffiles, man pages, README"
  rm -rf "$x"
done

deb=$(ls target/debian/edgecar_*_amd64.deb | head -n1)
[ -n "$deb" ] || fail "no amd64 package to install"
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root/var/lib/dpkg/info" "$root/var/lib/dpkg/updates" "$root/var/log" "$root/etc" "$root/usr/sbin"
: >"$root/var/lib/dpkg/status"
: >"$root/var/lib/dpkg/available"
echo 'root:x:0:0:root:/root:/bin/sh' >"$root/etc/passwd"
echo 'root:x:0:' >"$root/etc/group"
echo 'root:*:19000:0:99999:7:::' >"$root/etc/shadow"
echo 'root:*::' >"$root/etc/gshadow"
chmod 0640 "$root/etc/shadow" "$root/etc/gshadow"
install -m 0755 /dev/null "$root/usr/sbin/nologin"
# dpkg's complaints about the unregistered dependencies go to a file, shown if a step fails.
dpkg_root() {
  dpkg --root="$root" --force-script-chrootless --force-depends --log=/dev/null "$@" 2>"$root/dpkg.err" \
    || { cat "$root/dpkg.err"; fail "dpkg $*"; }
}

dpkg_root -i "$deb" >/dev/null
status=$(dpkg-query --admindir="$root/var/lib/dpkg" -W -f '${Status}' edgecar)
[ "$status" = "install ok installed" ] || fail "after dpkg -i, status is $status"
line=$(grep '^edgecar:' "$root/etc/passwd") || fail "postinst did not create the edgecar user"
uid=$(cut -d: -f3 <<<"$line")
[ "$uid" -lt 1000 ] || fail "edgecar is not a system user (uid $uid)"
[ "$(stat -c '%u %a' "$root/var/lib/edgecar")" = "$uid 700" ] || fail "/var/lib/edgecar is $(stat -c '%u %a' "$root/var/lib/edgecar"), want $uid 700"
"$root/usr/bin/edgecar" --version | grep -q '^edgecar ' || fail "the installed binary does not run"
# The unit's own arguments, at the installed files.
"$root/usr/bin/edgecar" check-config --config "$root/etc/edgecar/edgecar.yaml" \
  --state-dir "$root/var/lib/edgecar" --resources-path "$root/etc/edgecar/components" >/dev/null \
  || fail "check-config rejects the installed config"
# verify resolves the unit's dependencies (sysinit.target, ...) inside the root: give it the
# host's systemd units, as a real system has them.
cp -a /usr/lib/systemd/system/. "$root/usr/lib/systemd/system/"
MANPATH="$root/usr/share/man" systemd-analyze verify --root="$root" \
  "$root/usr/lib/systemd/system/edgecar.service" || fail "systemd-analyze verify rejects the installed unit"
echo "ok: dpkg -i into a scratch root: user $uid, /var/lib/edgecar 700, check-config and systemd-analyze verify pass"

# Data written while installed (a device registry) survives dpkg -r; purge deletes it.
"$root/usr/bin/edgecar" device add --state-dir "$root/var/lib/edgecar" sensor-1 >/dev/null 2>&1 \
  || fail "edgecar device add into the installed state directory"
dpkg_root -r edgecar >/dev/null
[ ! -e "$root/usr/bin/edgecar" ] || fail "dpkg -r left the binary"
[ -f "$root/var/lib/edgecar/devices.yaml" ] || fail "dpkg -r deleted the data"
[ -f "$root/etc/edgecar/edgecar.yaml" ] || fail "dpkg -r deleted the conffiles"
status=$(dpkg-query --admindir="$root/var/lib/dpkg" -W -f '${Status}' edgecar)
[ "$status" = "deinstall ok config-files" ] || fail "after dpkg -r, status is $status"
echo "ok: dpkg -r removed the program and kept /var/lib/edgecar and /etc/edgecar"
dpkg_root --purge edgecar >/dev/null
[ ! -e "$root/var/lib/edgecar" ] || fail "dpkg --purge left /var/lib/edgecar"
[ ! -e "$root/etc/edgecar/edgecar.yaml" ] || fail "dpkg --purge left the config"
if dpkg-query --admindir="$root/var/lib/dpkg" -W edgecar >/dev/null 2>&1; then
  fail "dpkg still knows edgecar after --purge"
fi
echo "ok: dpkg --purge deleted /var/lib/edgecar and /etc/edgecar"
