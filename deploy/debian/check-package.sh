#!/usr/bin/env bash
# Checks a built shardmq .deb without installing it on this machine: lists it
# (dpkg-deb -c), unpacks it into an empty folder (dpkg -x), and checks what an
# IPC gets: the binary runs and accepts the shipped config, the unit is the
# repository's and `systemd-analyze verify` accepts it, the config is a
# conffile, the maintainer scripts enable the unit.
# usage: deploy/debian/check-package.sh target/debian/shardmq_*.deb
set -euo pipefail
deb="$1"
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
here="$(cd "$(dirname "$0")/../.." && pwd)"

dpkg-deb -c "$deb" > "$root/listing"
dpkg -x "$deb" "$root/tree"
dpkg-deb -e "$deb" "$root/control"

fail() { echo "check-package: $*" >&2; exit 1; }
for f in usr/bin/shardmq etc/shardmq/config.json usr/lib/systemd/system/shardmq.service \
         usr/share/doc/shardmq/README.md usr/share/doc/shardmq/DEPLOYMENT.md \
         usr/share/doc/shardmq/METRICS.md usr/share/doc/shardmq/grafana/shardmq.json; do
  [ -e "$root/tree/$f" ] || fail "missing /$f; the package holds:\n$(cat "$root/listing")"
  grep -q " \./$f\$" "$root/listing" || fail "dpkg-deb -c does not list ./$f"
done
[ -x "$root/tree/usr/bin/shardmq" ] || fail "/usr/bin/shardmq is not executable"
cmp -s "$root/tree/usr/lib/systemd/system/shardmq.service" "$here/deploy/systemd/shardmq.service" \
  || fail "the packaged unit differs from deploy/systemd/shardmq.service"
cmp -s "$root/tree/etc/shardmq/config.json" "$here/deploy/debian/config.json" \
  || fail "the packaged config differs from deploy/debian/config.json"
grep -qx /etc/shardmq/config.json "$root/control/conffiles" \
  || fail "/etc/shardmq/config.json is not a conffile"
grep -q "deb-systemd-helper" "$root/control/postinst" \
  || fail "postinst does not enable the unit"
grep -q "^Package: shardmq$" "$root/control/control" || fail "package name"

# The unpacked binary accepts the unpacked config, as it would at start-up.
STATE_DIRECTORY="$root/state" "$root/tree/usr/bin/shardmq" --check-config \
  --config "$root/tree/etc/shardmq/config.json" \
  || fail "the shipped config does not validate"
"$root/tree/usr/bin/shardmq" --version | grep -q "^shardmq " || fail "--version"

if command -v systemd-analyze >/dev/null 2>&1; then
  unit="$root/verify/shardmq.service"
  mkdir -p "$root/verify"
  sed "s|/usr/bin/shardmq|$root/tree/usr/bin/shardmq|" \
    "$root/tree/usr/lib/systemd/system/shardmq.service" > "$unit"
  out=$(systemd-analyze verify "$unit" 2>&1) || fail "systemd-analyze verify: $out"
  if echo "$out" | grep -q "shardmq"; then fail "systemd-analyze verify: $out"; fi
else
  echo "check-package: systemd-analyze not installed, unit not verified"
fi
echo "check-package: $deb ok ($(grep -c . "$root/listing") entries)"
