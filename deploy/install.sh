#!/usr/bin/env bash
# Installs jobworker: binaries, systemd units, sysusers/tmpfiles entries and
# sample configurations, as a package would.
#
#   cargo build --release --workspace --bins
#   sudo deploy/install.sh                    # into /
#   DESTDIR=/tmp/stage deploy/install.sh      # into a staging root (packaging)
#
# Variables: DESTDIR (staging root, default empty), PREFIX (default /usr),
# BIN_DIR (where the built binaries are, default target/release),
# UNIT_DIR (default /lib/systemd/system). Existing configuration files in
# /etc/jobworker are never overwritten. After a real install (no DESTDIR) it
# runs systemd-sysusers and systemd-tmpfiles and reloads systemd; enable with
#   systemctl enable --now jobworker-supervisor.socket jobworker-gateway.service
set -euo pipefail
cd "$(dirname "$0")/.."

DESTDIR=${DESTDIR:-}
PREFIX=${PREFIX:-/usr}
BIN_DIR=${BIN_DIR:-target/release}
UNIT_DIR=${UNIT_DIR:-/lib/systemd/system}
BINARIES=(jobworker-supervisor jobworker-init jobworker-gateway jobctl jobworker-debug jobworker-certs)

for bin in "${BINARIES[@]}"; do
  if [ ! -x "$BIN_DIR/$bin" ]; then
    echo "install.sh: $BIN_DIR/$bin is missing; run: cargo build --release --workspace --bins" >&2
    exit 1
  fi
done

# Binaries.
for bin in "${BINARIES[@]}"; do
  install -D -m 0755 "$BIN_DIR/$bin" "$DESTDIR$PREFIX/bin/$bin"
done

# Units, with ExecStart pointing at the installed binaries.
for unit in deploy/jobworker-supervisor.socket deploy/jobworker-supervisor.service \
            deploy/jobworker-jobs.service deploy/jobworker-gateway.service; do
  install -D -m 0644 "$unit" "$DESTDIR$UNIT_DIR/$(basename "$unit")"
  sed -i "s|/usr/bin/|$PREFIX/bin/|g" "$DESTDIR$UNIT_DIR/$(basename "$unit")"
done

# Accounts and directories.
install -D -m 0644 deploy/sysusers.d/jobworker.conf "$DESTDIR$PREFIX/lib/sysusers.d/jobworker.conf"
install -D -m 0644 deploy/tmpfiles.d/jobworker.conf "$DESTDIR$PREFIX/lib/tmpfiles.d/jobworker.conf"

# Sample configurations (never overwriting the operator's).
install -d -m 0755 "$DESTDIR/etc/jobworker"
for config in supervisor.toml gateway.toml; do
  target="$DESTDIR/etc/jobworker/$config"
  if [ -e "$target" ]; then
    echo "keeping existing $target"
  else
    install -m 0644 "deploy/$config" "$target"
  fi
done

# Documentation.
install -D -m 0644 README.md "$DESTDIR$PREFIX/share/doc/jobworker/README.md"
install -D -m 0644 ARCHITECTURE.md "$DESTDIR$PREFIX/share/doc/jobworker/ARCHITECTURE.md"

if [ -z "$DESTDIR" ]; then
  systemd-sysusers "$PREFIX/lib/sysusers.d/jobworker.conf"
  systemd-tmpfiles --create "$PREFIX/lib/tmpfiles.d/jobworker.conf"
  if [ -d /run/systemd/system ]; then
    systemctl daemon-reload
  fi
fi
echo "installed jobworker into ${DESTDIR:-/}"
