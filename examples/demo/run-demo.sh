#!/usr/bin/env bash
# The qmp-sidecar demo: a mock QEMU with a two-device IOMMU group, qmp-sidecar in front of it, and a
# client that unplugs both devices and prints the timeline (DEVICE_DELETED x2, the group fd close seen
# with inotify, GROUP_RELEASED). Exits non-zero, saying what is missing, if an event does not come.
#
#   examples/demo/run-demo.sh [BIN_DIR] [--hotplug] [--finalize-delay SECONDS] [--event-order before-close|after-close]
#                             [--fault leak|second-holder]
#
# --fault leak: the mock never closes the group fd: GROUP_RELEASE_TIMEOUT names it, no GROUP_RELEASED.
# --fault second-holder: another process keeps the group 0.5 s longer: GROUP_RELEASED waits for it.
#
# Binaries come from BIN_DIR (e.g. .build/debug), $QMP_SIDECAR_BIN, or `swift build` in this package.
set -euo pipefail

finalize_delay=0.2
event_order=after-close
hotplug=""
fault=""
while [ $# -gt 0 ]; do
    case "$1" in
        --hotplug) hotplug="--hotplug" ;;
        --finalize-delay) finalize_delay="$2"; shift ;;
        --event-order) event_order="$2"; shift ;;
        --fault) fault="$2"; shift ;;
        -h|--help) sed -n '2,8p' "$0"; exit 0 ;;
        -*) echo "run-demo.sh: unknown option $1 (see --help)" >&2; exit 64 ;;
        *) QMP_SIDECAR_BIN="$1" ;;
    esac
    shift
done

here="$(cd "$(dirname "$0")" && pwd)"
package="$(cd "$here/../.." && pwd)"
if [ -n "${QMP_SIDECAR_BIN:-}" ]; then
    bin="$QMP_SIDECAR_BIN"
else
    (cd "$package" && swift build --product qmp-mock >/dev/null && swift build --product qmp-sidecar >/dev/null)
    bin="$(cd "$package" && swift build --show-bin-path)"
fi
for exe in qmp-mock qmp-sidecar; do
    [ -x "$bin/$exe" ] || { echo "run-demo.sh: $bin/$exe not found: run swift build" >&2; exit 1; }
done

work="$(mktemp -d /tmp/qs-demo-XXXXXX)"
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

wait_for() { # wait_for DESCRIPTION COMMAND...: bounded wait (10 s) for a start-up condition
    local what="$1"; shift
    for _ in $(seq 200); do "$@" && return 0; sleep 0.05; done
    echo "run-demo.sh: FAILED: $what" >&2
    echo "--- qmp-mock log"; cat "$work/mock.log" >&2 || true
    echo "--- qmp-sidecar log"; cat "$work/sidecar.log" >&2 || true
    exit 1
}

faults=()
client_flags=()
release_timeout=5
case "$fault" in
    "") ;;
    leak) faults=(--leak-group 7); client_flags=(--expect-timeout); release_timeout=1 ;;
    second-holder) faults=(--second-holder 7:0.5) ;;
    *) echo "run-demo.sh: --fault takes leak or second-holder" >&2; exit 64 ;;
esac
devices=()
if [ -z "$hotplug" ]; then
    devices=(--device vfio-pci,host=0000:01:00.0,id=hostdev0 --device vfio-pci,host=0000:01:00.1,id=hostdev1)
fi
echo "qmp-mock: group 7 = 0000:01:00.0 + 0000:01:00.1, finalize delay ${finalize_delay}s, DEVICE_DELETED $event_order${fault:+, fault $fault}"
"$bin/qmp-mock" --listen "unix:$work/qemu.qmp" \
    --fake-host 7=0000:01:00.0,0000:01:00.1 --fake-host-root "$work/host" \
    --finalize-delay "$finalize_delay" --event-order "$event_order" "${devices[@]}" "${faults[@]}" \
    >"$work/mock.out" 2>"$work/mock.log" &
pids+=($!)
wait_for "qmp-mock did not start listening" grep -q "listening on" "$work/mock.out"

"$bin/qmp-sidecar" --upstream "unix:$work/qemu.qmp" --listen "unix:$work/sidecar.qmp" \
    --sysfs-root "$work/host/sys" --dev-root "$work/host/dev" --release-timeout "$release_timeout" \
    >"$work/sidecar.out" 2>"$work/sidecar.log" &
pids+=($!)
wait_for "qmp-sidecar did not create its socket" test -S "$work/sidecar.qmp"

echo "qmp-sidecar: upstream $work/qemu.qmp, clients on $work/sidecar.qmp"
if ! python3 "$here/demo_client.py" "$work/sidecar.qmp" "$work/host/dev/vfio/7" $hotplug "${client_flags[@]}"; then
    echo "--- qmp-mock log" >&2; cat "$work/mock.log" >&2
    echo "--- qmp-sidecar log" >&2; cat "$work/sidecar.log" >&2
    exit 1
fi
