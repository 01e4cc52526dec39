#!/usr/bin/env bash
# `make install DESTDIR=...` gives a self-contained qmp-sidecar: ldd lists no libswift* (the Swift
# standard library is linked statically, libstdc++ and libgcc's unwinder too), nothing beyond glibc
# and libjansson, and it runs with an empty environment (no LD_LIBRARY_PATH at a toolchain). Also
# checks the paths the installed wrapper, config and units point at. Run by `make test` (target
# test-install).
set -euo pipefail
repo=$(cd "$(dirname "$0")/../../.." && pwd)
dest=$(mktemp -d /tmp/qs-install.XXXXXX)
trap 'rm -rf "$dest"' EXIT
fail() { echo "test-install: FAIL: $*" >&2; exit 1; }

make -C "$repo" --no-print-directory install DESTDIR="$dest" PREFIX=/usr/local > "$dest.log" 2>&1 \
    || { cat "$dest.log" >&2; rm -f "$dest.log"; fail "make install DESTDIR=$dest failed"; }
rm -f "$dest.log"
bin=$dest/usr/local/bin/qmp-sidecar
for f in "$bin" "$dest/usr/local/libexec/qmp-sidecar/qmp-sidecar-qemu" "$dest/etc/qmp-sidecar/libvirt.conf" \
    "$dest/usr/local/lib/systemd/system/qmp-sidecar@.service" "$dest/usr/local/lib/systemd/system/qmp-sidecar@.socket" \
    "$dest/usr/local/share/doc/qmp-sidecar/libvirt.conf.example"; do
    [[ -e $f ]] || fail "make install did not install $f"
done

libs=$(ldd "$bin")
echo "$libs" | sed 's/^/  /'
if grep -q 'libswift\|libFoundation\|libdispatch\|libBlocksRuntime\|not found' <<< "$libs"; then
    fail "the installed qmp-sidecar needs Swift runtime libraries (or a library is missing)"
fi
allowed='linux-vdso|ld-linux-x86-64|libc|libm|libdl|libpthread|librt|libutil|libjansson'
unexpected=$(awk '{print $1}' <<< "$libs" | sed 's|.*/||' | grep -Ev "^($allowed)\.so" || true)
[[ -z $unexpected ]] || fail "unexpected run-time libraries: $unexpected"
env -i "$bin" --help > /dev/null || fail "the installed qmp-sidecar does not run with an empty environment"

# The installed wrapper and units name the installed paths, not the placeholders.
! grep -n '@[A-Z]*DIR@' -r "$dest" || fail "unsubstituted placeholders in the installed files"
grep -q '^sidecar=/usr/local/bin/qmp-sidecar$' "$dest/usr/local/libexec/qmp-sidecar/qmp-sidecar-qemu" \
    || fail "the wrapper does not point at /usr/local/bin/qmp-sidecar"
grep -q 'ExecStart=/usr/local/bin/qmp-sidecar ' "$dest/usr/local/lib/systemd/system/qmp-sidecar@.service" \
    || fail "the service unit does not start /usr/local/bin/qmp-sidecar"

# An existing config is kept.
echo "release_timeout = 7" > "$dest/etc/qmp-sidecar/libvirt.conf"
make -C "$repo" --no-print-directory install DESTDIR="$dest" PREFIX=/usr/local > /dev/null 2>&1 || fail "second make install failed"
grep -qx 'release_timeout = 7' "$dest/etc/qmp-sidecar/libvirt.conf" || fail "make install overwrote an existing libvirt.conf"
echo "test-install: PASS: self-contained qmp-sidecar ($(du -h "$bin" | cut -f1)), wrapper, config, units installed under DESTDIR"
