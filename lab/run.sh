#!/usr/bin/env bash
# The VFIO lab: proves GROUP_RELEASED on the real vfio-pci driver in a nested VM (docs/vfio-lab.md).
#
#   lab/run.sh [--direct] [--guest] [--scenarios "A B D E F"] [--sidecar PATH] [--timeout S (default 1500)]
#
# On a Debian 12 machine (root): installs what it needs, builds the L1 initramfs, boots L1 (TCG,
# -cpu max, emulated Intel IOMMU, the host's / read-only over 9p), binds the lab NICs to vfio-pci and
# runs the scenarios with qmp-sidecar in front of an L2 QEMU. Prints PASS/FAIL per scenario; exits
# non-zero on any failure, and when L1 cannot boot or the runner never reports.
#   --direct     the client talks to the L2 QEMU directly (proves the lab itself, no sidecar)
#   --guest      add scenario C (a real L2 guest kernel does the ACPI eject; L2 on kvm in L1)
#   --scenarios  which scenarios to run (default "A B D E F L", plus C with --guest); L is libvirt
#                managing the NICs without the sidecar (the control) and, in sidecar mode, L-hold
#                with the installed contrib/libvirt wrapper (make install into lab-out/libvirt)
#   --sidecar    the qmp-sidecar binary (default .build/release/qmp-sidecar, else .build/debug/...)
#   LAB_KERNEL=/boot/vmlinuz-X (and LAB_KERNEL_VERSION) pick another L1/L2 kernel than the newest
#   -- ARGS      passed to the runner in L1 (lab/scenarios.py): --repeat N, --release-timeout S,
#                --sidecar-arg OPT, --event-prefix P, --strace-sidecar, --scan-interval-ms MS,
#                --scenario-timeout S (default 240: the watchdog prints diagnostics and fails it)
# Results: lab-out/results.json (figures per scenario), lab-out/*.log.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
out=$repo/lab-out
mode=sidecar guest=0 scenarios="" sidecar="${QMP_SIDECAR:-}" timeout=1500 runner_args=()
while (($#)); do
    case $1 in
    --direct) mode=direct ;;
    --guest) guest=1 ;;
    --scenarios) scenarios=$2; shift ;;
    --sidecar) sidecar=$2; shift ;;
    --timeout) timeout=$2; shift ;;
    --) shift; runner_args+=("$@"); break ;;
    -h | --help) sed -n '2,17p' "$0"; exit 0 ;;
    *) echo "lab/run.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done
[[ -n $scenarios ]] || { scenarios="A B D E F L"; ((guest)) && scenarios="A B C D E F L"; }
say() { echo "lab: $*"; }
die() { echo "lab: FAIL: $*" >&2; exit 1; }
[[ $(id -u) == 0 ]] || die "run as root (apt-get, and QEMU reading the whole host root over 9p)"
T0=$(date +%s.%N)
elapsed() { awk -v a="$T0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}'; }

# 1. Packages (only what is missing). busybox-static first: installing it re-triggers the kernel's
#    initramfs build, so it must not come after linux-image-amd64.
need=()
for p in busybox-static linux-image-amd64 pciutils inotify-tools qemu-system-x86 python3 cpio gzip libvirt-daemon-system libvirt-clients; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need+=("$p")
done
if ((${#need[@]})); then
    say "installing ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null
    for p in "${need[@]}"; do apt-get install -y -q --no-install-recommends "$p" >/dev/null || die "apt-get install $p failed"; done
    say "installs took $(elapsed)s"
fi
kernel=${LAB_KERNEL:-$(ls -1 /boot/vmlinuz-* 2>/dev/null | sort -V | tail -1)}
[[ -n $kernel ]] || die "no kernel in /boot (apt-get install linux-image-amd64)"
kver=${LAB_KERNEL_VERSION:-${kernel#/boot/vmlinuz-}}
[[ -d /lib/modules/$kver ]] || die "no /lib/modules/$kver for $kernel"

# 2. The sidecar under test (the host's own build, run in L1 over 9p).
if [[ $mode == sidecar ]]; then
    if [[ -z $sidecar ]]; then
        for c in "$repo/.build/release/qmp-sidecar" "$repo/.build/debug/qmp-sidecar"; do
            [[ -x $c ]] && { sidecar=$c; break; }
        done
    fi
    [[ -n $sidecar && -x $sidecar ]] || die "no qmp-sidecar build (run 'make release' or 'swift build -c release --product qmp-sidecar', or pass --direct)"
    sidecar=$(readlink -f "$sidecar")
    swiftlib=$(dirname "$(readlink -f "$(command -v swift 2>/dev/null || echo /opt/swift/usr/bin/swift)")")/../lib/swift/linux
    [[ -d $swiftlib ]] || swiftlib=/opt/swift/usr/lib/swift/linux
    swiftlib=$(readlink -f "$swiftlib")
    help=$(LD_LIBRARY_PATH=$swiftlib "$sidecar" --help 2>&1) || die "$sidecar --help failed: not a working qmp-sidecar"
    [[ $help == *--upstream* ]] || die "$sidecar has no --upstream option: not the real qmp-sidecar yet (pass --direct to prove the lab alone)"
    runner_args+=(--sidecar "$sidecar" --swift-lib "$swiftlib")
    # L-hold: libvirt runs the product as installed (static qmp-sidecar, wrapper, config); L1 sees
    # lab-out/ at the same path through the checkout's share.
    if [[ " $scenarios " == *" L "* ]]; then
        mkdir -p "$out"
        make -C "$repo" --no-print-directory install PREFIX="$out/libvirt" SYSCONFDIR="$out/libvirt/etc" > "$out/libvirt-install.log" 2>&1 \
            || die "make install PREFIX=$out/libvirt failed ($out/libvirt-install.log)"
        printf '# written by lab/run.sh\ntrace_dir = /tmp/lab-logs\n' > "$out/libvirt/etc/qmp-sidecar/libvirt.conf"
        runner_args+=(--libvirt-emulator "$out/libvirt/libexec/qmp-sidecar/qmp-sidecar-qemu")
    fi
fi

# 3. L1 initramfs.
mkdir -p "$out"
rm -f "$out"/{results.json,summary.txt,runner-rc,l1-failed,l1-timing.json,*.log}
"$repo/lab/mkinitramfs.sh" l1 "$kver" "$out/l1-initramfs.cpio.gz"
# kvm is loaded in L1 only for C: with /dev/kvm present libvirtd's capability probe starts KVM guests
# in L1, and KVM nested under TCG soft-locked both of L1's CPUs in some runs (libvirtd and the
# kvm-nx-lpage-recovery thread stuck for good, so scenario L never started).
lab_kvm=0
[[ " $scenarios " == *" C "* ]] && { lab_kvm=1; "$repo/lab/mkinitramfs.sh" l2 "$kver" "$out/l2-initramfs.cpio.gz"; runner_args+=(--kernel "$kernel" --l2-initrd /run/lab-out/l2-initramfs.cpio.gz); }
runner_args=(--scenarios "${scenarios// /,}" "${runner_args[@]}")
{ printf 'LAB_ARGS=%q\n' "$(printf '%q ' "${runner_args[@]}")"; echo "LAB_KVM=$lab_kvm"; } > "$out/lab.env"

# 4. Boot L1 and wait for the runner (the results share is lab-out/).
say "booting L1 ($kver, TCG -cpu max, intel-iommu); scenarios: $scenarios; mode: $mode"
# A leftover L1 of an interrupted run (found by its pid file and its command line) would hold lab-out.
if [[ -f $out/l1.pid ]]; then
    old=$(cat "$out/l1.pid")
    if [[ $old =~ ^[0-9]+$ ]] && grep -qa "lab.script=$repo/lab/l1-main.sh lab.repo=$repo" "/proc/$old/cmdline" 2>/dev/null; then
        say "killing the L1 QEMU left over by an earlier run (pid $old)"
        kill "$old" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$old" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$old" 2>/dev/null || true
    fi
    rm -f "$out/l1.pid"
fi
qemu_pid=
tail_pid=
cleanup() {
    # Under set -e a failing last command of an && list would turn a passing run into exit 1.
    if [[ -n $qemu_pid ]]; then kill "$qemu_pid" 2>/dev/null && wait "$qemu_pid" 2>/dev/null || true; fi
    if [[ -n $tail_pid ]]; then kill "$tail_pid" 2>/dev/null || true; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM
qemu-system-x86_64 -machine q35 -accel tcg -cpu max -smp 2 -m 2G -nodefaults -no-reboot -display none \
    -device intel-iommu,intremap=on,caching-mode=on \
    -kernel "$kernel" -initrd "$out/l1-initramfs.cpio.gz" \
    -append "console=ttyS0 intel_iommu=on iommu=pt panic=-1 loglevel=4 lab.script=$repo/lab/l1-main.sh lab.repo=$repo" \
    -serial "file:$out/l1-console.log" \
    -virtfs local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap \
    -virtfs "local,path=$repo,mount_tag=repo,security_model=none,readonly=on,multidevs=remap" \
    -virtfs "local,path=$out,mount_tag=results,security_model=none" \
    -device e1000e,addr=0x10.0 \
    -device pcie-root-port,id=rp1,chassis=1,addr=0x12.0 -device pcie-pci-bridge,id=br1,bus=rp1 \
    -device e1000,bus=br1,addr=1.0 -device e1000,bus=br1,addr=2.0 \
    2> "$out/l1-qemu.log" &
qemu_pid=$!
echo "$qemu_pid" > "$out/l1.pid"
tail --pid="$qemu_pid" -n +1 -F "$out/l1-console.log" 2>/dev/null | grep --line-buffered -E '^(LAB-|PASS|FAIL|SKIP|lab-runner|lab-watchdog)' &
tail_pid=$!
deadline=$(($(date +%s) + timeout))
while kill -0 "$qemu_pid" 2>/dev/null; do
    if (($(date +%s) >= deadline)); then
        kill "$tail_pid" 2>/dev/null
        echo "--- last runner lines of $out/l1-console.log" >&2
        grep -v '^\[' "$out/l1-console.log" | tail -n 60 >&2 || true
        grep -m 5 -E 'soft lockup|blocked for more than|rcu_preempt detected stalls' "$out/l1-console.log" >&2 \
            && echo "--- (the L1 kernel itself was stuck: see those lines)" >&2
        die "L1 still running after ${timeout}s (console: $out/l1-console.log)"
    fi
    sleep 1
done
wait "$qemu_pid" 2>/dev/null || true
qemu_pid=
rm -f "$out/l1.pid"
wait "$tail_pid" 2>/dev/null || true
say "L1 finished after $(elapsed)s"

# 5. Verdict.
if [[ -f $out/l1-failed ]]; then die "L1 setup failed: $(cat "$out/l1-failed") (console: $out/l1-console.log)"; fi
if [[ ! -f $out/runner-rc ]]; then
    echo "--- last lines of $out/l1-console.log" >&2
    tail -n 25 "$out/l1-console.log" >&2 || true
    [[ -s $out/l1-qemu.log ]] && { echo "--- $out/l1-qemu.log" >&2; cat "$out/l1-qemu.log" >&2; }
    die "L1 did not boot to the scenario runner, or it died: no result (nothing passed)"
fi
if [[ ! -f $out/summary.txt ]]; then
    echo "--- last runner lines of $out/l1-console.log" >&2
    grep -v '^\[' "$out/l1-console.log" | tail -n 25 >&2 || true
    die "the scenario runner in L1 ended with status $(cat "$out/runner-rc") and wrote no summary"
fi
echo "== VFIO lab ($mode)"
cat "$out/summary.txt"
rc=$(cat "$out/runner-rc")
grep -q '^PASS' "$out/summary.txt" || die "no scenario passed"
if [[ $rc != 0 ]] || grep -q '^FAIL' "$out/summary.txt"; then die "scenario failures (details: $out/results.json, $out/*.log)"; fi
say "all scenarios passed in $(elapsed)s (figures: $out/results.json, docs/vfio-lab.md)"
