#!/usr/bin/python3
"""Scenario runner of the VFIO lab. Runs inside L1 (lab/l1-main.sh starts it) after the lab NICs are
bound to vfio-pci.

Every scenario starts an L2 QEMU that passes a real vfio-pci device through, optionally puts the
project's qmp-sidecar in front of its QMP socket, and acts as a QMP client (raw JSON over the unix
socket). An independent observer in the same event loop watches the group nodes with inotify
(IN_OPEN / IN_CLOSE_*) and scans /proc/<pid>/fd of the processes involved, so every claim of the
sidecar is checked against what the kernel shows:

- a GROUP_RELEASED is only correct if the last close of the group's open file was already observed
  when the client received it (the inotify queue is drained right after every socket read, before the
  message is time-stamped), and if no process holds the group node at that moment (full /proc scan);
- figures: observed close -> GROUP_RELEASED at the client, DEVICE_DELETED -> GROUP_RELEASED.

Output: one `PASS <scenario>` / `FAIL <scenario>: reason` line per scenario on stdout and in
<out>/summary.txt, figures and timelines in <out>/results.json. Exit status 1 on any failure.
"""

import argparse
import ctypes
import json
import os
import select
import socket
import struct
import subprocess
import sys
import time
import traceback

import libvirt_scenarios
from watchdog import Watchdog

QEMU = "/usr/bin/qemu-system-x86_64"
SCAN_INTERVAL = 0.002  # s between /proc/<pid>/fd scans of the tracked processes
IN_OPEN, IN_CLOSE_WRITE, IN_CLOSE_NOWRITE = 0x20, 0x08, 0x10
SYS_PIDFD_GETFD = 438  # x86_64

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long


def mono():
    return time.monotonic()


class ScenarioFailed(Exception):
    pass


class Skip(Exception):
    pass


class Inotify:
    """inotify through ctypes: open and close events on the group nodes /dev/vfio/<N>."""

    def __init__(self):
        self.fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        self.tags = {}

    def watch(self, path, tag):
        wd = libc.inotify_add_watch(self.fd, path.encode(), IN_OPEN | IN_CLOSE_WRITE | IN_CLOSE_NOWRITE)
        if wd < 0:
            raise OSError(ctypes.get_errno(), f"inotify_add_watch {path}")
        self.tags[wd] = tag

    def drain(self):
        out = []
        while True:
            try:
                buf = os.read(self.fd, 65536)
            except BlockingIOError:
                return out
            t = mono()
            i = 0
            while i + 16 <= len(buf):
                wd, mask, _cookie, ln = struct.unpack_from("iIII", buf, i)
                i += 16 + ln
                if wd not in self.tags:
                    continue
                if mask & IN_OPEN:
                    out.append((t, "open", self.tags[wd]))
                if mask & (IN_CLOSE_WRITE | IN_CLOSE_NOWRITE):
                    out.append((t, "close", self.tags[wd]))


def group_holders(group, pids=None):
    """Processes (pid -> list of fd numbers) holding /dev/vfio/<group>; all of /proc unless pids."""
    target = f"/dev/vfio/{group}"
    result = {}
    for pid in pids if pids is not None else [p for p in os.listdir("/proc") if p.isdigit()]:
        fds = []
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                try:
                    if os.readlink(f"/proc/{pid}/fd/{fd}") == target:
                        fds.append(int(fd))
                except OSError:
                    pass
        except OSError:
            continue
        if fds:
            result[int(pid)] = sorted(fds)
    return result


def vfio_device_fds(pid):
    n = 0
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") == "anon_inode:[vfio-device]":
                    n += 1
            except OSError:
                pass
    except OSError:
        return None
    return n


class Observer:
    """The independent witness: inotify on the group nodes, periodic scans of tracked processes."""

    def __init__(self, lab, groups):
        self.lab = lab
        self.ino = Inotify()
        for g in groups:
            self.ino.watch(f"/dev/vfio/{g}", g)
        self.groups = groups
        self.log = []  # (t, kind, group, detail)
        self.tracked = {}  # pid -> name
        self.state = {}  # (pid, group) -> tuple of fds; (pid, "vfio-device") -> count
        self.last_scan = 0.0

    def track(self, pid, name):
        self.tracked[pid] = name
        self.scan(force=True)

    def untrack(self, pid):
        self.tracked.pop(pid, None)

    def record(self, t, kind, group, detail=None):
        self.log.append((t, kind, group, detail))
        self.lab.note(f"observer: {kind} group {group}" + (f" {detail}" if detail else ""), t)

    def poll_inotify(self):
        for t, kind, g in self.ino.drain():
            self.record(t, f"inotify-{kind}", g)

    def scan(self, force=False):
        t = mono()
        if not force and t - self.last_scan < SCAN_INTERVAL:
            return
        self.last_scan = t
        for pid, name in list(self.tracked.items()):
            for g in self.groups:
                fds = tuple(group_holders(g, [pid]).get(pid, ()))
                prev = self.state.get((pid, g), ())
                if fds != prev:
                    self.state[(pid, g)] = fds
                    kind = "proc-open" if len(fds) > len(prev) else "proc-close"
                    self.record(t, kind, g, f"{name} (pid {pid}) fds {list(fds)}")
            n = vfio_device_fds(pid)
            prev = self.state.get((pid, "vfio-device"))
            if n is not None and n != prev:
                self.state[(pid, "vfio-device")] = n
                if prev is not None:
                    self.record(t, "vfio-device-fds", None, f"{name} (pid {pid}) {prev} -> {n}")

    def holds(self, pid, group):
        return bool(self.state.get((pid, group)))

    def device_fds(self, pid):
        return self.state.get((pid, "vfio-device"), 0)

    def first(self, kind, group, after=0.0):
        for t, k, g, d in self.log:
            if k == kind and g == group and t >= after:
                return t
        return None


class Event:
    def __init__(self, t, msg, holders, age_ms=None):
        self.t = t
        self.age_ms = age_ms  # receipt (CLOCK_REALTIME) minus the event's own timestamp
        self.msg = msg
        self.name = msg["event"]
        self.data = msg.get("data", {})
        self.holders = holders  # for GROUP_* events: full /proc scan of the group at receipt


class QMPClient:
    """A raw QMP client (one JSON object per line) living in the lab's event loop."""

    def __init__(self, lab, path, name, timeout=30.0):
        self.lab = lab
        self.name = name
        self.buf = b""
        self.events = []
        self.replies = {}
        self.greeting = None
        self.closed_at = None
        self.next_id = 0
        deadline = mono() + timeout
        while True:
            try:
                self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
                self.sock.connect(path)
                break
            except OSError as e:
                self.sock.close()
                if mono() > deadline:
                    raise ScenarioFailed(f"{name}: cannot connect to {path}: {e}")
                time.sleep(0.02)
        lab.clients.append(self)
        lab.wait(lambda: self.greeting is not None or self.closed_at, timeout, f"{name}: QMP greeting")
        if self.greeting is None:
            raise ScenarioFailed(f"{name}: connection closed before the greeting")
        self.execute("qmp_capabilities")

    def on_readable(self):
        try:
            data = self.sock.recv(1 << 16)
        except OSError:
            data = b""
        # Drain the witness after the read and before the time stamp: a close that happened before
        # the sender wrote these bytes is in the log with t <= the messages' t.
        self.lab.obs.poll_inotify()
        t = mono()
        t_real = time.time()
        if not data:
            self.closed_at = t
            self.lab.note(f"{self.name}: connection closed", t)
            self.lab.clients.remove(self)
            self.sock.close()
            return
        self.buf += data
        while b"\n" in self.buf:
            line, self.buf = self.buf.split(b"\n", 1)
            line = line.strip()
            if not line:
                continue
            try:
                msg = json.loads(line)
            except ValueError:
                self.lab.note(f"{self.name}: UNPARSABLE {line[:200]!r}", t)
                self.lab.protocol_errors.append(f"{self.name}: unparsable line {line[:200]!r}")
                continue
            if "QMP" in msg:
                self.greeting = msg
            elif "event" in msg:
                holders = None
                if msg["event"].endswith(("GROUP_RELEASED", "GROUP_RELEASE_TIMEOUT")):
                    g = msg.get("data", {}).get("group")
                    holders = group_holders(g) if g is not None else None
                ts = msg.get("timestamp", {})
                age = round((t_real - ts.get("seconds", 0) - ts.get("microseconds", 0) / 1e6) * 1000, 2) \
                    if ts else None
                self.events.append(Event(t, msg, holders, age))
                self.lab.note(f"{self.name} <- {msg['event']} {json.dumps(msg.get('data', {}))} "
                              f"(stamped {age} ms before receipt)", t)
            elif "id" in msg:
                self.replies[msg["id"]] = (t, msg)
            else:
                self.lab.protocol_errors.append(f"{self.name}: reply without id: {line[:200]!r}")

    def send(self, cmd, args=None):
        self.next_id += 1
        mid = f"lab-{self.next_id}"
        msg = {"execute": cmd, "id": mid}
        if args is not None:
            msg["arguments"] = args
        self.sock.sendall(json.dumps(msg).encode() + b"\r\n")
        return mid

    def execute(self, cmd, args=None, timeout=30.0, check=True):
        mid = self.send(cmd, args)
        self.lab.wait(lambda: mid in self.replies or self.closed_at, timeout, f"{self.name}: reply to {cmd}")
        if mid not in self.replies:
            raise ScenarioFailed(f"{self.name}: connection closed before the reply to {cmd}")
        _, reply = self.replies.pop(mid)
        if check and "error" in reply:
            raise ScenarioFailed(f"{self.name}: {cmd} {json.dumps(args)} failed: {reply['error']}")
        return reply

    def named(self, name, pred=lambda d: True):
        return [e for e in self.events if e.name == name and pred(e.data)]


def dev_name(x):
    """A device as the sidecar may report it: an id, or a QOM path ending in the id."""
    return str(x).rsplit("/", 1)[-1]


class Lab:
    def __init__(self, args):
        self.args = args
        self.out = args.out
        self.sidecar = args.sidecar
        self.prefix = args.event_prefix
        self.clients = []
        self.procs = []
        self.timeline = []
        self.protocol_errors = []
        self.t0 = mono()
        self.devices = self.find_devices()
        self.obs = Observer(self, sorted({d["group"] for d in self.devices.values()}))
        self.pollers = []  # more witnesses, called at every turn of the loop (libvirt scenarios: sysfs)
        self.kit = sys.modules[__name__]
        self.libvirt = None  # libvirtd in L1, started by the first libvirt scenario (why not, if it failed)

    # -- topology ---------------------------------------------------------------------------------
    def find_devices(self):
        devs = {}
        for bdf in sorted(os.listdir("/sys/bus/pci/devices")):
            p = f"/sys/bus/pci/devices/{bdf}"
            ident = open(f"{p}/vendor").read().strip() + ":" + open(f"{p}/device").read().strip()
            kind = {"0x8086:0x10d3": "single", "0x8086:0x100e": "pair"}.get(ident)
            if not kind:
                continue
            drv = os.path.basename(os.readlink(f"{p}/driver")) if os.path.exists(f"{p}/driver") else None
            group = int(os.path.basename(os.readlink(f"{p}/iommu_group")))
            devs[bdf] = {"kind": kind, "group": group, "driver": drv}
        single = [b for b, d in devs.items() if d["kind"] == "single"]
        pair = [b for b, d in devs.items() if d["kind"] == "pair"]
        if len(single) != 1 or len(pair) != 2:
            raise SystemExit(f"lab-runner: expected 1 e1000e and 2 e1000 in L1, found {devs}")
        if devs[pair[0]]["group"] != devs[pair[1]]["group"]:
            raise SystemExit(f"lab-runner: the two e1000 are not in one IOMMU group: {devs}")
        for b, d in devs.items():
            if d["driver"] != "vfio-pci":
                raise SystemExit(f"lab-runner: {b} is bound to {d['driver']}, not vfio-pci")
        self.single, self.pair = single[0], pair
        return devs

    def group(self, bdf):
        return self.devices[bdf]["group"]

    def ev(self, name):
        return (self.prefix or "") + name

    # -- event loop -------------------------------------------------------------------------------
    def note(self, what, t=None):
        t = mono() if t is None else t
        self.timeline.append((t, what))

    def pump(self, timeout):
        fds = [self.obs.ino.fd] + [c.sock for c in self.clients]
        r, _, _ = select.select(fds, [], [], max(timeout, 0))
        self.obs.poll_inotify()
        for c in list(self.clients):
            if c.sock in r:
                c.on_readable()
        self.obs.scan()
        for poll in self.pollers:
            poll()

    def wait(self, pred, timeout, what=None):
        deadline = mono() + timeout
        while True:
            self.pump(0)
            if pred():
                return True
            rem = deadline - mono()
            if rem <= 0:
                if what:
                    raise ScenarioFailed(f"timed out after {timeout:g}s waiting for {what}")
                return False
            self.pump(min(rem, SCAN_INTERVAL))

    def settle(self, seconds):
        self.wait(lambda: False, seconds)

    def wait_event(self, client, name, pred, timeout, what):
        self.wait(lambda: client.named(name, pred) or client.closed_at, timeout, what)
        found = client.named(name, pred)
        if not found:
            raise ScenarioFailed(f"{what}: the client's connection closed first")
        return found[0]

    # -- processes ----------------------------------------------------------------------------------
    def spawn(self, name, argv, env=None):
        # Logs go to L1's tmpfs (writes to the 9p results share are slow round trips to the host and would
        # slow the processes under test); teardown copies them to the results share.
        os.makedirs("/tmp/lab-logs", exist_ok=True)
        log = open(f"/tmp/lab-logs/{self.scenario}-{name}.log", "wb")
        log.write((" ".join(argv) + "\n").encode())
        log.flush()
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env)
        p.lab_log = log.name
        self.procs.append(p)
        self.note(f"started {name} pid {p.pid}")
        return p

    def log_tail(self, p, n=6):
        try:
            return " | ".join(open(p.lab_log, errors="replace").read().strip().splitlines()[-n:])
        except OSError:
            return ""

    def wait_path(self, path, proc, timeout, what):
        deadline = mono() + timeout
        while not os.path.exists(path):
            if proc.poll() is not None:
                raise ScenarioFailed(f"{what} exited with {proc.returncode}: {self.log_tail(proc)}")
            if mono() > deadline:
                raise ScenarioFailed(f"timed out waiting for {what} ({path})")
            self.pump(0.005)  # keeps the observer's time stamps current while waiting

    def start_l2(self, cold=(), guest=False, tag="l2"):
        os.makedirs("/tmp/lab-logs", exist_ok=True)
        qmp = f"/tmp/lab-{self.scenario}-{tag}.qmp"
        argv = [QEMU, "-M", "pc", "-nodefaults", "-display", "none", "-qmp", f"unix:{qmp},server=on,wait=off"]
        if guest:
            argv += ["-accel", "kvm", "-m", "256M", "-kernel", self.args.kernel, "-initrd", self.args.l2_initrd,
                     "-append", "console=ttyS0 panic=-1 loglevel=4",
                     "-serial", f"file:/tmp/lab-logs/{self.scenario}-l2-console.log"]
        else:
            argv += ["-accel", "tcg", "-m", "128M", "-S"]
        for bdf, dev_id, slot in cold:
            argv += ["-device", f"vfio-pci,host={bdf},id={dev_id},bus=pci.0,addr={slot:#x}"]
        p = self.spawn(tag, argv)
        self.wait_path(qmp, p, 60, "the L2 QEMU")
        self.obs.track(p.pid, "L2 QEMU")
        p.qmp = qmp
        return p

    def start_sidecar(self, qemu, extra=(), tag="sidecar"):
        listen = f"/tmp/lab-{self.scenario}-{tag}.sock"
        argv = [self.sidecar, "--upstream", f"unix:{qemu.qmp}", "--listen", f"unix:{listen}", *extra,
                *(["--event-prefix", self.prefix] if self.prefix else []), *self.args.sidecar_arg]
        if self.args.strace_sidecar:
            argv = ["strace", "-f", "-ttt", "-s", "200", "-o", f"/tmp/lab-logs/{self.scenario}-{tag}.strace", *argv]
        env = dict(os.environ, LD_LIBRARY_PATH=self.args.swift_lib or "")
        p = self.spawn(tag, argv, env)
        self.wait_path(listen, p, 30, "qmp-sidecar")
        p.sock = listen
        return p

    def connect(self, qemu, sidecar_args=(), name="client"):
        """The client under test: through the sidecar, or directly to QEMU in --direct mode."""
        if self.sidecar:
            sc = self.start_sidecar(qemu, sidecar_args)
            return QMPClient(self, sc.sock, name), sc
        return QMPClient(self, qemu.qmp, name), None

    def teardown(self):
        for c in list(self.clients):
            self.clients.remove(c)
            c.sock.close()
        for p in reversed(self.procs):
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(5)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
            self.obs.untrack(p.pid)
        self.procs = []
        for f in os.listdir("/tmp/lab-logs") if os.path.isdir("/tmp/lab-logs") else []:
            with open(f"/tmp/lab-logs/{f}", "rb") as src, open(f"{self.out}/{f}", "wb") as dst:
                dst.write(src.read())
            os.unlink(f"/tmp/lab-logs/{f}")
        for g in self.obs.groups:
            deadline = mono() + 10
            while group_holders(g):
                if mono() > deadline:
                    raise ScenarioFailed(f"group {g} still held after teardown: {group_holders(g)}")
                time.sleep(0.05)
        self.obs.poll_inotify()

    # -- QMP helpers ----------------------------------------------------------------------------------
    def hot_add(self, client, bdf, dev_id, slot):
        client.execute("device_add", {"driver": "vfio-pci", "host": bdf, "id": dev_id, "bus": "pci.0",
                                      "addr": f"{slot:#x}"})

    def unplug(self, client, dev_id, slot, eject=True):
        """device_del, then (no guest OS) emulate the guest's ACPI eject: PIIX4 hotplug registers
        through HMP, bus select 0 then the slot's eject bit."""
        self.note(f"device_del {dev_id}")
        client.execute("device_del", {"id": dev_id})
        if eject:
            client.execute("human-monitor-command", {"command-line": "o /w 0xae10 0"})
            client.execute("human-monitor-command", {"command-line": f"o /w 0xae08 {1 << slot:#x}"})
            self.note(f"ejected slot {slot}")

    def check_released(self, ev, group, devices, close_t, what):
        """GROUP_RELEASED is correct: after the observed last close, nobody holds the group."""
        if close_t is None or close_t > ev.t:
            raise ScenarioFailed(f"{what}: GROUP_RELEASED for group {group} reached the client before the "
                                 f"last close of /dev/vfio/{group} was observed")
        if ev.holders:
            raise ScenarioFailed(f"{what}: GROUP_RELEASED while /proc shows holders {ev.holders}")
        got = [dev_name(d) for d in ev.data.get("devices", [])]
        if got != devices:
            raise ScenarioFailed(f"{what}: GROUP_RELEASED devices {ev.data.get('devices')}, expected {devices}")
        if not isinstance(ev.data.get("waited-ms"), (int, float)):
            raise ScenarioFailed(f"{what}: GROUP_RELEASED without a numeric waited-ms: {ev.data}")

    def release_figures(self, ev, close_t, dd_t):
        return {"close-to-group-released-ms": round((ev.t - close_t) * 1000, 2),
                "group-released-stamp-to-receipt-ms": ev.age_ms,
                "device-deleted-to-group-released-ms": round((ev.t - dd_t) * 1000, 2),
                "waited-ms": ev.data.get("waited-ms")}


# ---- scenarios -------------------------------------------------------------------------------------

def single_hot_plugged(lab, dev_id, sidecar_args=()):
    """An L2 QEMU with the single-device group hot-plugged in slot 5 as dev_id, its group fd held.

    Returns (qemu, client, sidecar or None, group)."""
    qemu = lab.start_l2()
    client, sc = lab.connect(qemu, sidecar_args)
    lab.hot_add(client, lab.single, dev_id, 5)
    g = lab.group(lab.single)
    lab.wait(lambda: lab.obs.holds(qemu.pid, g), 10, "the L2 QEMU to hold the group fd")
    return qemu, client, sc, g


def single_unplug(lab, client, qemu, dev_id, slot, eject=True, timeout=15):
    """Unplug one device of the single-device group; checks and figures common to A, C, D."""
    g = lab.group(lab.single)
    t0 = mono()
    lab.unplug(client, dev_id, slot, eject)
    dd = lab.wait_event(client, "DEVICE_DELETED", lambda d: d.get("device") == dev_id, timeout,
                        f"DEVICE_DELETED of {dev_id}")
    lab.wait(lambda: lab.obs.first("inotify-close", g, t0) is not None, timeout,
             f"the observer to see /dev/vfio/{g} closed")
    close_t = lab.obs.first("inotify-close", g, t0)
    lab.wait(lambda: not lab.obs.holds(qemu.pid, g), 5, "the L2 QEMU's fd on the group to go from /proc")
    fig = {"device-deleted-minus-close-ms": round((dd.t - close_t) * 1000, 2),
           "unplug-ms": round((dd.t - t0) * 1000, 1)}
    if lab.sidecar:
        rel = lab.wait_event(client, lab.ev("GROUP_RELEASED"), lambda d: d.get("group") == g, timeout,
                             f"GROUP_RELEASED of group {g}")
        lab.check_released(rel, g, [dev_id], close_t, "release")
        fig.update(lab.release_figures(rel, close_t, dd.t))
    return fig


def scenario_A(lab):
    """Single-device group, hot-plugged, unplugged without a guest OS (HMP eject)."""
    qemu, client, _, _ = single_hot_plugged(lab, "a0")
    return single_unplug(lab, client, qemu, "a0", 5)


def scenario_B(lab, hold=False):
    """Two-device group: the first unplug releases nothing; the second (and the group close) does."""
    qemu = lab.start_l2()
    client, _ = lab.connect(qemu, ["--hold-device-deleted"] if hold else [])
    return pair_unplug(lab, client, qemu, hold)


def pair_unplug(lab, client, qemu, hold, ids=("b1", "b2"), slots=(5, 6), eject=True, timeout=15, guest_settle=0):
    """Hot-add both devices of the two-device group, unplug them one after the other (B, and C's second
    half with a guest doing the eject)."""
    b1, b2 = lab.pair
    g = lab.group(b1)
    lab.hot_add(client, b1, ids[0], slots[0])
    lab.hot_add(client, b2, ids[1], slots[1])
    lab.wait(lambda: lab.obs.holds(qemu.pid, g) and lab.obs.device_fds(qemu.pid) == 2, 20,
             "the L2 QEMU to hold the group and two vfio-device fds")
    lab.settle(guest_settle)
    fig = {}
    # First device: QEMU closes only that device's fd; the group stays open.
    t1 = mono()
    lab.unplug(client, ids[0], slots[0], eject)
    lab.wait(lambda: lab.obs.device_fds(qemu.pid) == 1, timeout, f"the L2 QEMU to close {ids[0]}'s vfio-device fd")
    if hold:
        lab.settle(2.0)
        if client.named("DEVICE_DELETED", lambda d: d.get("device") in ids):
            raise ScenarioFailed(f"--hold-device-deleted: DEVICE_DELETED of {ids[0]} reached the client while "
                                 f"{ids[1]} still holds the group")
    else:
        dd1 = lab.wait_event(client, "DEVICE_DELETED", lambda d: d.get("device") == ids[0], timeout,
                             f"DEVICE_DELETED of {ids[0]}")
        fig["first-unplug-ms"] = round((dd1.t - t1) * 1000, 1)
        lab.settle(1.5)
    if lab.obs.first("inotify-close", g, t1) is not None:
        raise ScenarioFailed(f"/dev/vfio/{g} was closed after the first device only (lab topology wrong?)")
    if not lab.obs.holds(qemu.pid, g):
        raise ScenarioFailed("the L2 QEMU dropped the group fd after the first device")
    if client.named(lab.ev("GROUP_RELEASED"), lambda d: d.get("group") == g):
        raise ScenarioFailed("GROUP_RELEASED after the first device of a two-device group")
    # Second device: the group closes.
    t2 = mono()
    lab.unplug(client, ids[1], slots[1], eject)
    lab.wait(lambda: lab.obs.first("inotify-close", g, t2) is not None, timeout, f"the observer to see /dev/vfio/{g} closed")
    close_t = lab.obs.first("inotify-close", g, t2)
    dd2 = lab.wait_event(client, "DEVICE_DELETED", lambda d: d.get("device") == ids[1], timeout,
                         f"DEVICE_DELETED of {ids[1]}")
    fig["device-deleted-minus-close-ms"] = round((dd2.t - close_t) * 1000, 2)
    if lab.sidecar:
        rel = lab.wait_event(client, lab.ev("GROUP_RELEASED"), lambda d: d.get("group") == g, timeout,
                             f"GROUP_RELEASED of group {g}")
        lab.check_released(rel, g, list(ids), close_t, "release")
        fig.update(lab.release_figures(rel, close_t, dd2.t))
        if hold:
            dds = [e for e in client.events if e.name == "DEVICE_DELETED" and e.data.get("device") in ids]
            order = [e.data.get("device") for e in dds]
            if order != list(ids):
                raise ScenarioFailed(f"held DEVICE_DELETED events: {order}, expected {ids[0]} then {ids[1]}")
            if any(e.t < close_t for e in dds):
                raise ScenarioFailed("a held DEVICE_DELETED reached the client before the group closed")
            if client.events.index(rel) < client.events.index(dds[-1]):
                raise ScenarioFailed("GROUP_RELEASED came before the held DEVICE_DELETED events")
            fig["held-first-device-deleted-delay-ms"] = round((dds[0].t - t1) * 1000, 1)
    return fig


def scenario_C(lab):
    """A real L2 guest kernel (L2 on kvm inside L1) does the ACPI eject itself."""
    if not os.path.exists("/dev/kvm"):
        raise ScenarioFailed("no /dev/kvm in L1 (kvm_amd did not load)")
    qemu = lab.start_l2(guest=True)
    client, _ = lab.connect(qemu)
    console = f"/tmp/lab-logs/{lab.scenario}-l2-console.log"
    t0 = mono()
    lab.wait(lambda: "L2-GUEST-READY" in open(console, errors="replace").read(), 120, "the L2 guest to boot")
    boot_s = mono() - t0
    lab.settle(1.0)  # acpiphp is registered before init runs; give the guest a moment anyway
    lab.hot_add(client, lab.single, "c0", 5)
    g = lab.group(lab.single)
    lab.wait(lambda: lab.obs.holds(qemu.pid, g), 20, "the L2 QEMU to hold the group fd")
    lab.settle(2.0)  # the guest enumerates the new slot
    fig = single_unplug(lab, client, qemu, "c0", 5, eject=False, timeout=30)
    fig["l2-boot-s"] = round(boot_s, 1)
    # The same guest, the two-device group: the guest ejects each device.
    pair = pair_unplug(lab, client, qemu, False, ids=("p1", "p2"), slots=(6, 7), eject=False, timeout=30,
                       guest_settle=2.0)
    fig.update({f"pair-{k}": v for k, v in pair.items()})
    return fig


def scenario_D(lab):
    """A cold-plugged device (-device on L2's command line): the sidecar must discover it."""
    qemu = lab.start_l2(cold=[(lab.single, "d0", 5)])
    g = lab.group(lab.single)
    lab.wait(lambda: lab.obs.holds(qemu.pid, g), 20, "the L2 QEMU to hold the group fd")
    client, _ = lab.connect(qemu)
    # No waiting for the sidecar's discovery: it holds client commands until its own qom-list /
    # qom-get are answered, so an unplug right after negotiation must still end in GROUP_RELEASED.
    return single_unplug(lab, client, qemu, "d0", 5)


def scenario_E(lab):
    """quit with a device attached: nothing claims a release QEMU's exit did not do; the sidecar exits."""
    qemu, client, sc, g = single_hot_plugged(lab, "e0")
    t0 = mono()
    client.send("quit")
    lab.wait(lambda: client.named("SHUTDOWN"), 10, "SHUTDOWN")
    lab.wait(lambda: lab.obs.first("inotify-close", g, t0) is not None, 10, f"the observer to see /dev/vfio/{g} closed")
    close_t = lab.obs.first("inotify-close", g, t0)
    lab.wait(lambda: client.closed_at is not None, 10, "the client's connection to close after quit")
    qemu.wait(10)
    fig = {"shutdown-to-close-ms": round((close_t - client.named("SHUTDOWN")[0].t) * 1000, 1)}
    if client.named("DEVICE_DELETED"):
        raise ScenarioFailed("DEVICE_DELETED after quit (QEMU 7.2 sends none)")
    for e in client.named(lab.ev("GROUP_RELEASED")):
        lab.check_released(e, g, [dev_name(d) for d in e.data.get("devices", [])], close_t, "quit")
    fig["group-released-events"] = len(client.named(lab.ev("GROUP_RELEASED")))
    if sc is not None:
        try:
            sc.wait(10)
        except subprocess.TimeoutExpired:
            raise ScenarioFailed("qmp-sidecar still running 10 s after QEMU quit")
        if sc.returncode < 0 or sc.returncode > 128:
            raise ScenarioFailed(f"qmp-sidecar died with {sc.returncode} after QEMU quit: {lab.log_tail(sc)}")
        fig["sidecar-exit-status"] = sc.returncode
    return fig


HOLDER = r"""
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
libc.prctl(15, b"lab-holder", 0, 0, 0)
pidfd = os.pidfd_open(int(sys.argv[1]))
fd = libc.syscall(%d, pidfd, int(sys.argv[2]), 0)
if fd < 0:
    print("pidfd_getfd failed", ctypes.get_errno(), flush=True); sys.exit(1)
print("copied", fd, flush=True)
sys.stdin.readline()
os.close(fd)
print("closed", flush=True)
sys.stdin.readline()
""" % SYS_PIDFD_GETFD


def scenario_F(lab):
    """Another process takes a copy of QEMU's group fd (pidfd_getfd) before the unplug."""
    qemu, client, _, g = single_hot_plugged(lab, "f0", ["--release-timeout", str(lab.args.release_timeout)])
    qfd = group_holders(g, [qemu.pid])[qemu.pid][0]
    holder = subprocess.Popen(["/usr/bin/python3", "-c", HOLDER, str(qemu.pid), str(qfd)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    lab.procs.append(holder)
    line = holder.stdout.readline().strip()
    if not line.startswith("copied"):
        raise ScenarioFailed(f"the holder could not copy QEMU's fd {qfd}: {line}")
    lab.obs.track(holder.pid, "lab-holder")
    lab.note(f"lab-holder pid {holder.pid} copied QEMU's fd {qfd}")
    t0 = mono()
    lab.unplug(client, "f0", 5)
    dd = lab.wait_event(client, "DEVICE_DELETED", lambda d: d.get("device") == "f0", 15, "DEVICE_DELETED of f0")
    lab.wait(lambda: not lab.obs.holds(qemu.pid, g), 10, "the L2 QEMU to close its group fd")
    qclose_t = [t for t, k, gg, d in lab.obs.log if k == "proc-close" and gg == g and "L2 QEMU" in (d or "")][-1]
    fig = {}
    if lab.sidecar:
        lab.wait(lambda: client.named(lab.ev("GROUP_RELEASE_TIMEOUT")) or client.named(lab.ev("GROUP_RELEASED")),
                 lab.args.release_timeout + 10, "GROUP_RELEASE_TIMEOUT")
        early = client.named(lab.ev("GROUP_RELEASED"))
        if early:
            raise ScenarioFailed(f"GROUP_RELEASED {early[0].data} while another process (pid {holder.pid}) holds a "
                                 f"copy of QEMU's group fd (/proc holders at receipt: {early[0].holders})")
        to = lab.wait_event(client, lab.ev("GROUP_RELEASE_TIMEOUT"), lambda d: d.get("group") == g, 1,
                            "GROUP_RELEASE_TIMEOUT")
        named = [h for h in to.data.get("holders", []) if h.get("pid") == holder.pid]
        if not named:
            raise ScenarioFailed(f"GROUP_RELEASE_TIMEOUT holders {to.data.get('holders')} do not name the "
                                 f"lab-holder pid {holder.pid}")
        if named[0].get("comm") != "lab-holder":
            raise ScenarioFailed(f"GROUP_RELEASE_TIMEOUT names pid {holder.pid} with comm {named[0].get('comm')!r}, "
                                 "expected 'lab-holder'")
        if [dev_name(d) for d in to.data.get("devices", [])] != ["f0"] or \
                not isinstance(to.data.get("waited-ms"), (int, float)):
            raise ScenarioFailed(f"GROUP_RELEASE_TIMEOUT data {to.data}: expected devices ['f0'] and waited-ms")
        if any(h.get("pid") == qemu.pid for h in to.data.get("holders", [])):
            raise ScenarioFailed(f"GROUP_RELEASE_TIMEOUT names the L2 QEMU (pid {qemu.pid}), which closed its fd")
        fig["device-deleted-to-timeout-ms"] = round((to.t - dd.t) * 1000, 1)
        fig["timeout-holders"] = to.data.get("holders")
    else:
        lab.settle(2.0)
    if lab.obs.first("inotify-close", g, t0) is not None:
        raise ScenarioFailed("inotify reported a last close while the holder still has its copy")
    if client.named(lab.ev("GROUP_RELEASED")):
        raise ScenarioFailed("GROUP_RELEASED while another process holds a copy of QEMU's group fd")
    t1 = mono()
    holder.stdin.write("close\n")
    holder.stdin.flush()
    lab.wait(lambda: lab.obs.first("inotify-close", g, t1) is not None, 10, "the holder's close")
    close_t = lab.obs.first("inotify-close", g, t1)
    fig["qemu-close-to-holder-close-ms"] = round((close_t - qclose_t) * 1000, 1)
    if lab.sidecar:
        rel = lab.wait_event(client, lab.ev("GROUP_RELEASED"), lambda d: d.get("group") == g, 10,
                             "GROUP_RELEASED after the holder closed its copy")
        lab.check_released(rel, g, ["f0"], close_t, "release")
        fig.update(lab.release_figures(rel, close_t, dd.t))
    holder.stdin.close()
    return fig


SCENARIOS = {
    "A": (scenario_A, "single-device group, hot-unplug, HMP eject"),
    "B": (lambda lab: scenario_B(lab), "two-device group"),
    "B-hold": (lambda lab: scenario_B(lab, hold=True), "two-device group, --hold-device-deleted"),
    "C": (scenario_C, "real L2 guest kernel ejects (L2 on kvm): single-device group, then the two-device group"),
    "D": (scenario_D, "cold-plugged device discovered, then unplugged"),
    "E": (scenario_E, "quit with a device attached"),
    "F": (scenario_F, "second process holds a pidfd_getfd copy of the group fd"),
    **libvirt_scenarios.scenarios(sys.modules[__name__]),
}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--scenarios", default="A,B,D,E,F")
    ap.add_argument("--sidecar", help="qmp-sidecar binary; without it the client talks to QEMU directly")
    ap.add_argument("--swift-lib", help="LD_LIBRARY_PATH for the sidecar (the host's Swift runtime)")
    ap.add_argument("--sidecar-arg", action="append", default=[], help="extra option for every sidecar")
    ap.add_argument("--event-prefix", default="")
    ap.add_argument("--scan-interval-ms", type=float, default=2.0,
                    help="period of the observer's /proc/<pid>/fd scans (inotify is event-driven regardless)")
    ap.add_argument("--strace-sidecar", action="store_true", help="run the sidecar under strace -f -ttt (diagnosis)")
    ap.add_argument("--release-timeout", type=int, default=2)
    ap.add_argument("--scenario-timeout", type=float, default=240,
                    help="s a scenario may take before the watchdog prints diagnostics and fails it")
    ap.add_argument("--repeat", type=int, default=1, help="run each scenario N times; figures are medians")
    ap.add_argument("--kernel", help="L2 guest kernel (scenario C)")
    ap.add_argument("--l2-initrd", help="L2 guest initramfs (scenario C)")
    ap.add_argument("--libvirt-emulator", help="the installed qmp-sidecar-qemu wrapper (scenario L-hold)")
    args = ap.parse_args()
    global SCAN_INTERVAL
    SCAN_INTERVAL = args.scan_interval_ms / 1000
    names = [s for s in args.scenarios.split(",") if s]
    if args.sidecar and "B" in names and "B-hold" not in names:
        names.insert(names.index("B") + 1, "B-hold")
    if args.libvirt_emulator and "L" in names and "L-hold" not in names:
        names.insert(names.index("L") + 1, "L-hold")
    lab = Lab(args)
    mode = "sidecar" if args.sidecar else "direct"
    results = {"mode": mode, "sidecar": args.sidecar, "kernel": os.uname().release,
               "devices": lab.devices, "scenarios": {}}
    try:
        results["l1"] = json.load(open(f"{args.out}/l1-timing.json"))
    except (OSError, ValueError):
        pass
    summary = []
    failed = False
    for name in names:
        if name not in SCENARIOS:
            print(f"FAIL {name}: unknown scenario", flush=True)
            summary.append(f"FAIL {name}: unknown scenario")
            failed = True
            continue
        fn, desc = SCENARIOS[name]
        runs = []
        for rep in range(args.repeat):
            lab.scenario = name if args.repeat == 1 else f"{name}.{rep + 1}"
            lab.timeline = []
            lab.protocol_errors = []
            start = mono()
            status, reason, fig = "PASS", "", {}
            try:
                with Watchdog(args.scenario_timeout, f"scenario {lab.scenario}", ScenarioFailed, lab, start):
                    fig = fn(lab)
                if lab.protocol_errors:
                    raise ScenarioFailed("; ".join(lab.protocol_errors))
            except ScenarioFailed as e:
                status, reason = "FAIL", str(e)
            except Exception as e:  # noqa: BLE001 - a broken lab is a failure, with its trace in the log
                status, reason = "FAIL", f"lab error: {e!r}"
                traceback.print_exc(file=sys.stdout)
            finally:
                try:
                    with Watchdog(60, f"teardown of {lab.scenario}", ScenarioFailed, lab, start):
                        lab.teardown()
                except ScenarioFailed as e:
                    if status == "PASS":
                        status, reason = "FAIL", str(e)
            secs = mono() - start
            print(f"lab-runner: {lab.scenario} {status} {reason} ({secs:.1f}s) {json.dumps(fig)}", flush=True)
            for t, what in lab.timeline:
                print(f"    {(t - start) * 1000:9.1f} ms  {what}", flush=True)
            runs.append({"status": status, "reason": reason, "seconds": round(secs, 2), "figures": fig,
                         "timeline": [[round((t - start) * 1000, 2), w] for t, w in lab.timeline]})
        bad = [r for r in runs if r["status"] != "PASS"]
        status = "FAIL" if bad else "PASS"
        reason = bad[0]["reason"] if bad else ""
        if len(runs) > 1 and bad:
            reason = f"{len(bad)} of {len(runs)} runs failed; first: {reason}"
        # Figures: the median over the runs that passed (the single run's values when --repeat 1).
        fig = {}
        good = [r["figures"] for r in runs if r["status"] == "PASS"] or [runs[-1]["figures"]]
        for k, v in good[-1].items():
            vals = sorted(g[k] for g in good if isinstance(g.get(k), (int, float)))
            fig[k] = vals[len(vals) // 2] if vals and not isinstance(v, bool) else v
        secs = sum(r["seconds"] for r in runs)
        figs = ", ".join(f"{k} {v}" for k, v in fig.items() if not isinstance(v, (list, dict)))
        line = f"{status} {name}" + (f": {reason}" if reason else "") + \
            f"  [{mode}, {secs:.1f}s{', median of ' + str(len(good)) if len(runs) > 1 else ''}" + \
            f"{'; ' + figs if figs else ''}]"
        print(line, flush=True)
        summary.append(line)
        failed |= status != "PASS"
        results["scenarios"][name] = {
            "description": desc, "status": status, "reason": reason, "seconds": round(secs, 2),
            "figures": fig, "runs": runs}
        with open(f"{args.out}/results.json", "w") as f:
            json.dump(results, f, indent=1)
    if isinstance(lab.libvirt, libvirt_scenarios.Libvirt):
        lab.libvirt.stop()
    with open(f"{args.out}/summary.txt", "w") as f:
        f.write("\n".join(summary) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
