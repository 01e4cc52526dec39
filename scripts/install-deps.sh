#!/usr/bin/env bash
# Installs what building and testing qmp-sidecar needs on Debian 12: jansson (the JSON we must
# understand), QEMU 7.2 (tests run against the real one), python qemu.qmp (the reference client),
# libvirt 9.0 (the end-to-end test of the emulator wrapper, contrib/libvirt).
# Idempotent: does nothing when everything is present.
set -euo pipefail

packages=(libjansson-dev pkg-config qemu-system-x86 python3-pip socat inotify-tools libvirt-daemon-system libvirt-clients)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    if [[ $(id -u) -ne 0 ]]; then
        echo "install-deps: missing Debian packages: ${missing[*]}" >&2
        echo "install-deps: run as root, or: sudo apt-get install -y ${missing[*]}" >&2
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q "${missing[@]}"
fi

if ! python3 -c 'import qemu.qmp' 2>/dev/null; then
    python3 -m pip install -q --root-user-action=ignore qemu.qmp 2>/dev/null \
        || python3 -m pip install -q --break-system-packages qemu.qmp
fi
