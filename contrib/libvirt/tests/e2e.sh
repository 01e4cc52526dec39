#!/usr/bin/env bash
# End-to-end: real libvirt 9.0 (Debian's libvirt-daemon-system) runs a TCG guest whose <emulator> is
# the installed qmp-sidecar-qemu wrapper. Checks: start; virsh qemu-monitor-command (answered through
# the sidecar); USB keyboard attach/detach with device-removed seen by `virsh event`; a usb-serial
# with a file backend (libvirt passes the file with add-fd over the monitor); libvirtd restart, then a
# command; destroy; the traffic is in the sidecar's trace; no sidecar process or cgroup is left.
#
# Leaves the host as it was: libvirtd and virtlogd run in a private mount and network namespace with
# private copies of /etc/libvirt (user/group root in qemu.conf) and tmpfs-like state directories under
# a temporary directory; the test starts them itself and stops exactly those, by pid. Needs root.
# Run by `make test` (target test-libvirt); never skips.
set -euo pipefail
repo=$(cd "$(dirname "$0")/../../.." && pwd)
fail() { echo "test-libvirt: FAIL: $*" >&2; exit 1; }
say() { echo "test-libvirt: $*"; }
# Waits up to $1 seconds for the command to succeed (daemons and libvirt's own timers have no event
# a shell could wait on).
await() {
    local limit=$1 i; shift
    for ((i = 0; i < limit * 10; i++)); do "$@" && return 0; sleep 0.1; done
    return 1
}

if [[ ${1:-} != --inside ]]; then
    [[ $(id -u) == 0 ]] || fail "run as root (libvirtd with user = root, namespaces, cgroups)"
    for tool in libvirtd virtlogd virsh unshare setpriv; do
        command -v "$tool" > /dev/null || fail "$tool not found: apt-get install libvirt-daemon-system libvirt-clients (scripts/install-deps.sh does)"
    done
    T=$(mktemp -d /tmp/qs-lv.XXXXXX)
    created_run=0
    # libvirt creates its cgroup partition (/sys/fs/cgroup/<controller>/machine) on first use; those
    # the test made are removed afterwards (rmdir: only while empty, so another libvirt's stay).
    partitions_before=$(ls -d /sys/fs/cgroup/*/machine 2> /dev/null || true)
    cleanup() {
        if ((created_run)); then rmdir /run/libvirt 2> /dev/null || true; fi
        for d in /sys/fs/cgroup/*/machine; do
            [[ -d $d && $'\n'$partitions_before$'\n' != *$'\n'$d$'\n'* ]] && rmdir "$d" 2> /dev/null
        done
        if [[ ${KEEP:-0} == 1 ]]; then echo "test-libvirt: kept $T" >&2; else rm -rf "$T"; fi
    }
    trap cleanup EXIT
    # The product as installed (PREFIX inside the temporary directory, config next to it).
    make -C "$repo" --no-print-directory install PREFIX="$T/prefix" SYSCONFDIR="$T/prefix/etc" > "$T/install.log" 2>&1 \
        || { cat "$T/install.log" >&2; fail "make install PREFIX=$T/prefix failed"; }
    mkdir -p "$T/trace"
    cat > "$T/prefix/etc/qmp-sidecar/libvirt.conf" <<CONF
# written by contrib/libvirt/tests/e2e.sh
trace_dir = $T/trace
log_level = info
CONF
    # libvirtd's runtime directory must exist to be a mount point; made here, removed afterwards.
    [[ -d /run/libvirt ]] || { mkdir /run/libvirt; created_run=1; }
    rc=0
    unshare --mount --net --propagation private -- "$0" --inside "$T" || rc=$?
    # Outside the namespace again: nothing of ours may be left.
    left=()
    for proc in /proc/[0-9]*; do
        [[ $proc == "/proc/$$" ]] && continue
        grep -qsa -- "$T/" "$proc/cmdline" && left+=("${proc#/proc/}")
    done
    if ((${#left[@]})); then
        ps -o pid,args -p "$(IFS=,; echo "${left[*]}")" >&2 || true
        echo "test-libvirt: FAIL: processes left behind" >&2
        rc=1
    fi
    exit $rc
fi

T=$2
name=qs-e2e-$$
uri=qemu:///system
pids=()
evpid=
stop_daemons() {
    local pid
    for pid in ${evpid:-} "${pids[@]}"; do kill "$pid" 2> /dev/null || true; done
    for pid in ${evpid:-} "${pids[@]}"; do wait "$pid" 2> /dev/null || true; done
    pids=() evpid=
}
on_exit() {
    local rc=$?
    if ((rc)); then
        echo "--- domain log" >&2; tail -n 30 "$T/log/qemu/$name.log" >&2 2> /dev/null || true
        echo "--- libvirtd log" >&2; grep -E 'error|warning' "$T/libvirtd.log" 2> /dev/null | tail -n 15 >&2 || true
        virsh -c "$uri" destroy "$name" > /dev/null 2>&1 || true
    fi
    stop_daemons
}
trap on_exit EXIT

# Private libvirt: a copy of /etc/libvirt (no autostarted networks or domains), fresh state.
mkdir -p "$T"/{etc,run,lib/qemu,log/qemu,cache}
cp -a /etc/libvirt/. "$T/etc/"
rm -rf "$T/etc/qemu/networks/autostart" "$T/etc/qemu/autostart"
printf 'user = "root"\ngroup = "root"\n' >> "$T/etc/qemu.conf"
printf 'log_outputs = "3:file:%s/libvirtd.log"\n' "$T" >> "$T/etc/libvirtd.conf"
mount --bind "$T/etc" /etc/libvirt
mount --bind "$T/run" /run/libvirt
mount --bind "$T/lib" /var/lib/libvirt
mount --bind "$T/log" /var/log/libvirt
mount --bind "$T/cache" /var/cache/libvirt
ip link set lo up

start_libvirtd() {
    libvirtd -f /etc/libvirt/libvirtd.conf -p "$T/libvirtd.pid" > "$T/libvirtd.out" 2>&1 &
    libvirtd_pid=$!
    pids+=("$libvirtd_pid")
    await 90 virsh -c "$uri" version > /dev/null 2>&1 || fail "libvirtd did not answer within 90 s ($T/libvirtd.out)"
}
virtlogd -p "$T/virtlogd.pid" > "$T/virtlogd.out" 2>&1 &
pids+=($!)
t0=$SECONDS
start_libvirtd
say "libvirtd $(libvirtd --version | awk '{print $NF}') up in $((SECONDS - t0)) s (pid $libvirtd_pid, private namespace)"

emulator=$T/prefix/libexec/qmp-sidecar/qmp-sidecar-qemu
cat > "$T/domain.xml" <<XML
<domain type='qemu'>
  <name>$name</name>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <devices>
    <emulator>$emulator</emulator>
    <controller type='usb' model='qemu-xhci'/>
    <memballoon model='none'/>
  </devices>
</domain>
XML
virsh -c "$uri" create "$T/domain.xml" > /dev/null || fail "virsh create failed"
qemu_pid=$(cat "/run/libvirt/qemu/$name.pid")
say "domain $name started, QEMU pid $qemu_pid"
# libvirt probed the wrapper like a QEMU (the probe passes through it unchanged) and cached the result.
grep -qs "<emulator>$emulator</emulator>" "$T"/cache/qemu/capabilities/*.xml \
    || fail "no capabilities cached for $emulator: libvirt's probe of the wrapper failed"
[[ $(readlink "/proc/$qemu_pid/exe") == /usr/bin/qemu-system-x86_64 ]] \
    || fail "libvirt's pid $qemu_pid is not QEMU (the wrapper must exec it)"
sidecar_pid=$(cat "/proc/$qemu_pid/task/$qemu_pid/children" | awk '{print $1}')
[[ -n $sidecar_pid && $(readlink "/proc/$sidecar_pid/exe") == "$T/prefix/bin/qmp-sidecar" ]] \
    || fail "no qmp-sidecar child of QEMU (pid $qemu_pid)"
qemu_cgroup=$(grep -m1 ':cpu' "/proc/$qemu_pid/cgroup" | cut -d: -f3)
[[ $qemu_cgroup == */machine/* ]] || fail "QEMU is not in a libvirt machine cgroup: $qemu_cgroup"
cgroup_dirs=$(find /sys/fs/cgroup -mindepth 2 -maxdepth 4 -type d -path "*machine/*$name*" | sort)
[[ -n $cgroup_dirs ]] || fail "no cgroup directory for $name"
say "sidecar pid $sidecar_pid (QEMU's child), both in cgroup $qemu_cgroup"

# A command through libvirt's monitor connection, and one only the sidecar answers.
status=$(virsh -c "$uri" qemu-monitor-command "$name" '{"execute":"query-status"}')
[[ $status == *'"status":"running"'* ]] || fail "query-status: $status"
groups=$(virsh -c "$uri" qemu-monitor-command "$name" '{"execute":"__org.qmp-sidecar_query-vfio-groups"}')
[[ $groups == *'"return"'* ]] || fail "the sidecar's own command was not answered: $groups"
say "qemu-monitor-command: $status"

# USB keyboard: hot-plug and unplug; device-removed as libvirt reports it.
virsh -c "$uri" event --domain "$name" --all --loop --timestamp > "$T/events.log" 2>&1 &
evpid=$!
# Wait until the watcher is registered: a suspend/resume pair shows up in its output once it is.
watcher_ready() {
    virsh -c "$uri" suspend "$name" > /dev/null && virsh -c "$uri" resume "$name" > /dev/null
    await 1 grep -q 'lifecycle.*Resumed' "$T/events.log"
}
ready=0
for _ in 1 2 3 4 5 6 7 8 9 10; do watcher_ready && { ready=1; break; }; done
((ready)) || fail "virsh event reported no lifecycle event: $(cat "$T/events.log")"
echo "<input type='keyboard' bus='usb'/>" > "$T/kbd.xml"
virsh -c "$uri" attach-device "$name" "$T/kbd.xml" --live > /dev/null || fail "attach-device usb keyboard"
alias=$(virsh -c "$uri" dumpxml "$name" | awk '/<input type=.keyboard. bus=.usb./{f=1} f && /<alias/{match($0, /name=.[^'"'"'"]*/); print substr($0, RSTART + 6, RLENGTH - 6); exit}')
[[ -n $alias ]] || fail "the keyboard is not in the live XML"
virsh -c "$uri" detach-device "$name" "$T/kbd.xml" --live > /dev/null || fail "detach-device usb keyboard"
await 15 grep -q "device-removed.*$alias" "$T/events.log" || fail "no device-removed for $alias from virsh event: $(cat "$T/events.log")"
[[ $(virsh -c "$uri" dumpxml "$name") != *"<alias name='$alias'/>"* ]] || fail "$alias is still in the domain after device-removed"
say "usb keyboard $alias attached and detached; $(grep -m1 "device-removed.*$alias" "$T/events.log")"

# usb-serial with a file backend: libvirt opens the file and passes it with add-fd (SCM_RIGHTS).
cat > "$T/serial.xml" <<XML
<serial type='file'>
  <source path='$T/serial.out'/>
  <target type='usb-serial' port='1'><model name='usb-serial'/></target>
</serial>
XML
virsh -c "$uri" attach-device "$name" "$T/serial.xml" --live > "$T/attach-serial.out" 2>&1 \
    || fail "attach-device usb-serial with a file backend: $(cat "$T/attach-serial.out")"
[[ $(virsh -c "$uri" dumpxml "$name") == *"<source path='$T/serial.out'/>"* ]] || fail "usb-serial not in the live XML"
[[ -e $T/serial.out ]] || fail "libvirt did not create the serial backend file"
say "usb-serial with file backend attached"

# libvirtd restart: it reconnects to monitor.sock, which the sidecar listens on.
kill "$libvirtd_pid"
wait "$libvirtd_pid" 2> /dev/null || true
pids=("${pids[@]/$libvirtd_pid/}")
t0=$SECONDS
start_libvirtd
[[ $(virsh -c "$uri" domstate "$name") == running* ]] || fail "the domain is not running after the libvirtd restart"
status=$(virsh -c "$uri" qemu-monitor-command "$name" '{"execute":"query-status"}')
[[ $status == *'"status":"running"'* ]] || fail "query-status after the libvirtd restart: $status"
[[ -d /proc/$sidecar_pid ]] || fail "the sidecar did not survive the libvirtd restart"
say "libvirtd restarted (pid $libvirtd_pid, $((SECONDS - t0)) s); command answered through the same sidecar (pid $sidecar_pid)"

virsh -c "$uri" destroy "$name" > /dev/null || fail "virsh destroy"
await 10 test ! -d "/proc/$qemu_pid" || fail "QEMU (pid $qemu_pid) still there after destroy"
await 10 test ! -d "/proc/$sidecar_pid" || fail "the sidecar (pid $sidecar_pid) outlived QEMU"
for d in $cgroup_dirs; do await 10 test ! -d "$d" || fail "cgroup $d left after destroy"; done
say "destroyed: QEMU, sidecar and the domain's cgroups ($(echo "$cgroup_dirs" | wc -l) directories) are gone"

# The traffic went through the sidecar: its trace has libvirt's commands and QEMU's answers.
trace=$(ls "$T"/trace/*"$name"*.trace 2> /dev/null | head -1)
[[ -n $trace ]] || fail "no sidecar trace in $T/trace"
python3 - "$trace" <<'PY' || fail "the sidecar's trace $trace lacks traffic it must have carried"
import json, sys
seen, clients = set(), set()
for line in open(sys.argv[1]):
    rec = json.loads(line)
    msg = json.loads(rec["msg"])
    seen.add((rec["dir"], msg.get("execute") or msg.get("event"), rec["fds"] > 0))
    if rec["dir"] == "client-to-qemu":
        clients.add(rec["client"])
need = [("sidecar-to-qemu", "qmp_capabilities", False), ("client-to-qemu", "query-status", False),
        ("client-to-qemu", "device_add", False), ("client-to-qemu", "device_del", False),
        ("qemu-to-client", "DEVICE_DELETED", False),
        # libvirt's add-fd carries the file (SCM_RIGHTS): the trace counts the fds that came with it.
        ("client-to-qemu", "add-fd", True)]
missing = [n for n in need if n not in seen]
if missing or len(clients) < 2:
    print(f"test-libvirt: not in the trace: {missing}; libvirt connections that sent commands: {sorted(clients)} "
          "(two expected: before and after the libvirtd restart)", file=sys.stderr)
    sys.exit(1)
PY
! grep -q 'No file descriptor supplied' "$trace" || fail "a file descriptor passed by libvirt did not reach QEMU"
log=$T/log/qemu/$name.log
grep -q "qmp-sidecar-qemu: QEMU pid $qemu_pid" "$log" || fail "the wrapper's line is not in the domain log $log"
grep -q "qmp-sidecar running" "$log" || fail "the sidecar's log is not in the domain log $log"
say "trace: $(wc -l < "$trace") messages through the sidecar (query-status, device_add/del, DEVICE_DELETED, add-fd with its fd; libvirt's connections before and after the restart); wrapper and sidecar lines in the domain log"
stop_daemons
say "PASS"
