#!/bin/sh
# PID 1 of the lab's L1 after switch_root (the host's root, read-only, over 9p). Prepares what udev
# would (kvm, /dev/fd), binds the lab devices to vfio-pci, runs the scenario runner, powers off.
# Settings come from /run/lab-out/lab.env, written by lab/run.sh on the host.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root
out=/run/lab-out
here=$(dirname "$0")
log() { echo "LAB-L1: $*"; }
finish() { sync; log "powering off"; echo o > /proc/sysrq-trigger; while :; do read -r _ < /dev/console; done; }
fail() { log "FAILED: $*"; echo "$*" > "$out/l1-failed"; finish; }
t0=$(cut -d' ' -f1 /proc/uptime)
[ -f "$out/lab.env" ] || fail "no $out/lab.env"
. "$out/lab.env"
log "up ${t0}s after kernel start; kernel $(uname -r)"
ln -sf /proc/self/fd /dev/fd
ln -sf /proc/self/fd/0 /dev/stdin
ln -sf /proc/self/fd/1 /dev/stdout
ln -sf /proc/self/fd/2 /dev/stderr
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts 2>/dev/null
mount -t tmpfs tmpfs /dev/shm 2>/dev/null
ip link set lo up 2>/dev/null
[ -d /sys/kernel/iommu_groups ] && [ -n "$(ls /sys/kernel/iommu_groups)" ] || fail "no IOMMU groups: intel_iommu did not come up"
modprobe vfio-pci || fail "modprobe vfio-pci"
# kvm only for scenario C (L2 on kvm): see run.sh for why it stays out otherwise.
if [ "${LAB_KVM:-0}" = 1 ]; then
    modprobe kvm_amd 2>/dev/null || modprobe kvm_intel 2>/dev/null || log "no kvm module loaded (scenario C needs it)"
fi
# Lab devices: e1000e (8086:10d3) = single-device group; e1000 (8086:100e) behind the pcie-pci-bridge =
# the two-device group.
devices=
for d in /sys/bus/pci/devices/*; do
    id="$(cat "$d/vendor"):$(cat "$d/device")"
    case $id in 0x8086:0x10d3 | 0x8086:0x100e) devices="$devices $(basename "$d")" ;; esac
done
[ -n "$devices" ] || fail "no lab devices found (e1000e/e1000) in L1"
tb=$(cut -d' ' -f1 /proc/uptime)
for bdf in $devices; do
    d=/sys/bus/pci/devices/$bdf
    echo vfio-pci > "$d/driver_override" || fail "driver_override $bdf"
    [ -e "$d/driver" ] && { echo "$bdf" > "$d/driver/unbind" || fail "unbind $bdf"; }
    echo "$bdf" > /sys/bus/pci/drivers_probe
    drv=$(basename "$(readlink "$d/driver")")
    grp=$(basename "$(readlink "$d/iommu_group")")
    [ "$drv" = vfio-pci ] || fail "$bdf is bound to '$drv', not vfio-pci"
    [ -c "/dev/vfio/$grp" ] || fail "/dev/vfio/$grp missing for $bdf"
    log "bound $bdf (group $grp) to vfio-pci"
done
te=$(cut -d' ' -f1 /proc/uptime)
log "binding took $(echo "$tb $te" | awk '{printf "%.2f", $2-$1}')s"
echo "{\"l1-ready-s\": $te, \"bind-s\": $(echo "$tb $te" | awk '{printf "%.2f", $2-$1}')}" > "$out/l1-timing.json"
eval "set -- $LAB_ARGS"
/usr/bin/python3 "$here/scenarios.py" --out "$out" "$@"
echo $? > "$out/runner-rc"
finish
