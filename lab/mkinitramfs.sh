#!/usr/bin/env bash
# Builds the busybox initramfs of the lab's L1 (and the tiny one of the L2 guest in scenario C).
#   mkinitramfs.sh l1 KERNEL_VERSION OUT.cpio.gz
#   mkinitramfs.sh l2 KERNEL_VERSION OUT.cpio.gz
# l1: busybox-static + the 9p/virtio modules (and their dependencies from modules.dep) of the installed
#     kernel; /init mounts the host's root over 9p read-only and switch_roots into the script named by
#     `lab.script=` on the kernel command line (see lab/l1-init).
# l2: busybox-static only; /init prints a readiness marker on the console and sleeps (the guest exists
#     only to do the ACPI eject).
set -euo pipefail
kind=$1 kver=$2 out=$3
here=$(cd "$(dirname "$0")" && pwd)
busybox=/bin/busybox
[[ -x $busybox ]] && $busybox --list | grep -qx switch_root || {
    echo "mkinitramfs: $busybox is missing or not busybox-static (apt-get install busybox-static)" >&2
    exit 1
}
work=$(mktemp -d /tmp/qs-lab-initramfs.XXXXXX)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work"/{bin,dev,proc,sys,tmp,newroot,mods}
cp "$busybox" "$work/bin/busybox"
case $kind in
l1)
    moddir=/lib/modules/$kver
    [[ -f $moddir/modules.dep ]] || { echo "mkinitramfs: no $moddir/modules.dep (is linux-image-$kver installed?)" >&2; exit 1; }
    # Dependency closure in load order (dependencies first), from modules.dep.
    declare -A seen=()
    order=()
    visit() {
        local rel=$1 line dep
        [[ -n ${seen[$rel]:-} ]] && return
        seen[$rel]=1
        line=$(grep -E "^${rel//./\\.}:" "$moddir/modules.dep") || { echo "mkinitramfs: $rel not in modules.dep" >&2; exit 1; }
        for dep in ${line#*:}; do visit "$dep"; done
        order+=("$rel")
    }
    for m in 9p 9pnet_virtio virtio_pci; do
        rel=$(grep -oE "^[^:]*/$m\.ko(\.[a-z]+)?:" "$moddir/modules.dep" | head -1)
        [[ -n $rel ]] || { echo "mkinitramfs: module $m not found for $kver" >&2; exit 1; }
        visit "${rel%:}"
    done
    : > "$work/modules.order"
    for rel in "${order[@]}"; do
        base=$(basename "$rel")
        case $base in
        *.ko.xz) xz -dc "$moddir/$rel" > "$work/mods/${base%.xz}"; base=${base%.xz} ;;
        *.ko.zst) zstd -qdc "$moddir/$rel" > "$work/mods/${base%.zst}"; base=${base%.zst} ;;
        *) cp "$moddir/$rel" "$work/mods/$base" ;;
        esac
        echo "$base" >> "$work/modules.order"
    done
    install -m 0755 "$here/l1-init" "$work/init"
    ;;
l2)
    cat > "$work/init" <<'INIT'
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
echo "L2-GUEST-READY"
# acpiphp (built into the kernel) handles the eject request by itself; nothing else to do.
while :; do sleep 3600; done
INIT
    chmod 0755 "$work/init"
    ;;
*) echo "mkinitramfs: unknown kind $kind (l1 or l2)" >&2; exit 2 ;;
esac
(cd "$work" && find . | cpio -o -H newc --quiet) | gzip -1 > "$out.tmp"
mv "$out.tmp" "$out"
