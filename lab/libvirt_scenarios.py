"""libvirt scenarios of the VFIO lab (L, L-hold): real libvirt 9.0 in L1 manages the lab NICs as
`<hostdev mode='subsystem' type='pci' managed='yes'>` on the real vfio-pci driver.

One transient domain per scenario holds all three NICs: the two-device group (02:01.0 on slot 5,
02:02.0 on slot 6) and the single-device group (00:10.0 on slot 7). `virsh detach-device` takes them
out one by one in that order; the guest's ACPI eject is emulated through a second, direct QMP monitor
of the QEMU (libvirt's own monitor is the one under test) as soon as libvirt's `device_del` shows in
the PIIX4 hotplug registers. The witness is independent of the sidecar: inotify on the group node as
QEMU sees it (`/proc/<qemu>/root/dev/vfio/<N>`, libvirt's private copy), `/proc/<qemu>/fd` scans and
the sysfs `driver` link of every NIC, polled in the runner's event loop.

- L (the control, no sidecar: `<emulator>` is QEMU itself) must show libvirt's bug: it rebinds
  02:01.0 while QEMU still holds the group, and that NIC is left without a driver.
- L-hold (the wrapper, contrib/libvirt, hold mode): no NIC leaves vfio-pci before its group's last
  close, all three end on their host driver, and the kernel logs no warning.
"""

import os
import subprocess
from time import monotonic as mono  # the runner's clock

LIBVIRT_DIRS = ("/var/lib/libvirt", "/var/log/libvirt", "/var/cache/libvirt")
STATE = "/tmp/lab-libvirt"  # libvirtd's and virtlogd's own logs (they outlive every scenario)
HOST_DRIVER = {"single": "e1000e", "pair": "e1000"}
SLOTS = (5, 6, 7)


def sysfs_driver(bdf):
    try:
        return os.path.basename(os.readlink(f"/sys/bus/pci/devices/{bdf}/driver"))
    except FileNotFoundError:  # no driver (or unbound while we looked)
        return None


def write(path, text):
    with open(path, "w") as f:
        f.write(text)


def sysfs_write(path, text, what, timeout=20):
    """Writes `text` to a sysfs file from a child process: an `unbind` of a device that someone still
    holds sleeps in the kernel until it is released (vfio-pci asks the user to give it back and waits),
    and the runner must not sleep with it."""
    p = subprocess.Popen(["/bin/sh", "-c", 'printf "%s" "$1" > "$2"', "sh", text, path], stderr=subprocess.PIPE)
    try:
        _, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"{what}: writing {path} still blocks after {timeout} s (the device is in use; "
                           "the teardown's holder check names who holds its group)") from None
    if p.returncode != 0:
        raise OSError(f"{what}: {path}: {err.decode(errors='replace').strip()}")


def bind(bdf, driver):
    """Bind to vfio-pci (driver="vfio-pci") or back to whatever the kernel picks (driver=None). A NIC
    already on the wanted driver is left alone (its unbind could block while it is in use)."""
    d = f"/sys/bus/pci/devices/{bdf}"
    current = sysfs_driver(bdf)
    if driver is not None and current == driver:
        return
    write(f"{d}/driver_override", (driver or "") + "\n")
    if current and os.path.exists(f"{d}/driver/unbind"):  # (or unbound meanwhile)
        sysfs_write(f"{d}/driver/unbind", bdf, f"unbind {bdf} from {current}")
    sysfs_write("/sys/bus/pci/drivers_probe", bdf, f"probe {bdf}")


def group_fd_links(pid, group):
    """What QEMU's fds on the group node point at ("/dev/vfio/N (deleted)" once libvirt removed the
    node from QEMU's namespace while the fd stays open)."""
    links = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if link.startswith(f"/dev/vfio/{group}"):
            links.append(link)
    return links


# What a premature rebind can make the kernel say (vfio, the IOMMU, PCI, the NICs' drivers). Timing
# noise of a TCG guest on a loaded host ("hrtimer: interrupt took ...") is recorded, not judged.
DEVICE_WORDS = ("vfio", "iommu", "dmar", "pci", "e1000", "group", "bug", "warning", "oops", "call trace")


def kernel_warnings():
    out = subprocess.run(["dmesg", "--level=emerg,alert,crit,err,warn"], capture_output=True, text=True)
    return out.stdout.splitlines()


def about_devices(line):
    return any(w in line.lower() for w in DEVICE_WORDS)


class DriverWatch:
    """The sysfs `driver` link of each NIC, read at every turn of the runner's loop."""

    def __init__(self, lab, bdfs):
        self.lab = lab
        self.now = {b: sysfs_driver(b) for b in bdfs}
        self.log = []  # (t, bdf, old, new)

    def poll(self):
        for bdf, old in self.now.items():
            new = sysfs_driver(bdf)
            if new != old:
                t = mono()
                self.now[bdf] = new
                self.log.append((t, bdf, old, new))
                self.lab.note(f"sysfs: {bdf} driver {old} -> {new}", t)

    def left_vfio(self, bdf, after):
        """When the NIC first left vfio-pci after `after` (libvirt's rebind starts with the unbind)."""
        return next((t for t, b, old, _ in self.log if b == bdf and old == "vfio-pci" and t >= after), None)


class Libvirt:
    """libvirtd and virtlogd in L1, started once for all libvirt scenarios, on tmpfs state."""

    def __init__(self, lab):
        self.lab = lab
        self.procs = []
        os.makedirs(STATE, exist_ok=True)
        for d in LIBVIRT_DIRS:
            subprocess.run(["mount", "-t", "tmpfs", "tmpfs", d], check=True)
            os.makedirs(f"{d}/qemu", exist_ok=True)
        # /etc comes read-only from the host: a writable copy of /etc/libvirt with user/group root.
        subprocess.run(["cp", "-a", "/etc/libvirt", f"{STATE}/etc"], check=True)
        subprocess.run(["rm", "-rf", f"{STATE}/etc/qemu/networks/autostart", f"{STATE}/etc/qemu/autostart"])
        with open(f"{STATE}/etc/qemu.conf", "a") as f:
            f.write('user = "root"\ngroup = "root"\n')
        with open(f"{STATE}/etc/libvirtd.conf", "a") as f:
            f.write(f'log_outputs = "3:file:{STATE}/libvirtd.log"\n')
        subprocess.run(["mount", "--bind", f"{STATE}/etc", "/etc/libvirt"], check=True)
        # No udev in L1: the host drivers must be loaded for libvirt's reattach to have a target.
        subprocess.run(["modprobe", "-a", "e1000", "e1000e"], check=True)
        t0 = mono()
        for argv in (["virtlogd"], ["libvirtd", "-f", "/etc/libvirt/libvirtd.conf"]):
            log = open(f"{STATE}/{argv[0]}.out", "wb")
            self.procs.append(subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT))
        # virsh blocks until libvirtd has probed QEMU's capabilities (~20 s under TCG); before
        # libvirtd listens it fails at once.
        while self.virsh("version", timeout=180, check=False)[0] != 0:
            if mono() - t0 > 180:
                raise lab.kit.ScenarioFailed(f"libvirtd did not answer within 180 s ({STATE}/libvirtd.out)")
            lab.settle(0.5)
        self.ready_s = round(mono() - t0, 1)

    def virsh(self, *args, timeout=60, check=True):
        """virsh as a child process while the runner's loop keeps the observer's time stamps current."""
        out = open(f"{STATE}/virsh.out", "w+")
        p = subprocess.Popen(["virsh", "-c", "qemu:///system", *args], stdin=subprocess.DEVNULL, stdout=out,
                             stderr=subprocess.STDOUT)
        self.lab.wait(lambda: p.poll() is not None, timeout, f"virsh {' '.join(args)}")
        out.seek(0)
        text = out.read().strip()
        if check and p.returncode != 0:
            raise self.lab.kit.ScenarioFailed(f"virsh {' '.join(args)}: {text}")
        return p.returncode, text

    def stop(self):
        """Stops libvirtd and virtlogd (started here, by their Popen) and keeps libvirtd's log."""
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                try:
                    p.wait(15)
                except subprocess.TimeoutExpired:  # asleep in the kernel (a sysfs write): left behind
                    print(f"lab-runner: {p.args[0]} (pid {p.pid}) does not exit after SIGKILL", flush=True)
        if os.path.exists(f"{STATE}/libvirtd.log"):
            subprocess.run(["cp", f"{STATE}/libvirtd.log", f"{self.lab.out}/libvirtd.log"])


def domain_xml(name, emulator, devices, direct_qmp):
    hostdevs = "".join(
        f"""
    <hostdev mode='subsystem' type='pci' managed='yes'>
      <source>{source_address(bdf)}</source>
      <address type='pci' domain='0x0000' bus='0x00' slot='{slot:#x}' function='0x0'/>
    </hostdev>""" for bdf, slot in devices)
    return f"""<domain type='qemu' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>
  <name>{name}</name>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <features><acpi/></features>
  <devices>
    <emulator>{emulator}</emulator>
    <controller type='usb' model='none'/>
    <memballoon model='none'/>{hostdevs}
  </devices>
  <qemu:commandline>
    <qemu:arg value='-qmp'/>
    <qemu:arg value='unix:{direct_qmp},server=on,wait=off'/>
  </qemu:commandline>
</domain>
"""


def source_address(bdf):
    dom, bus, rest = bdf.split(":")
    slot, func = rest.split(".")
    return f"<address domain='0x{dom}' bus='0x{bus}' slot='0x{slot}' function='0x{func}'/>"


def eject_when_requested(lab, direct, slot, timeout=30):
    """The guest's part of an ACPI unplug: once libvirt's device_del set the slot's bit in the PIIX4
    'down' register (bus 0 selected), write it to the eject register."""
    deadline = mono() + timeout
    while True:
        direct.execute("human-monitor-command", {"command-line": "o /w 0xae10 0"})
        out = direct.execute("human-monitor-command", {"command-line": "i /w 0xae04"})["return"]
        if int(out.strip().rsplit("=", 1)[-1], 16) & (1 << slot):
            break
        if mono() > deadline:
            raise lab.kit.ScenarioFailed(f"libvirt's device_del for slot {slot} never showed in the hotplug registers")
        lab.settle(0.02)
    direct.execute("human-monitor-command", {"command-line": f"o /w 0xae08 {1 << slot:#x}"})
    lab.note(f"guest eject of slot {slot}")


def scenario(lab, hold):
    kit = lab.kit
    if isinstance(lab.libvirt, str):
        raise kit.ScenarioFailed(f"libvirtd did not start in an earlier scenario: {lab.libvirt}")
    if lab.libvirt is None:
        try:
            lab.libvirt = Libvirt(lab)
        except Exception as e:
            lab.libvirt = str(e)
            raise
    lv = lab.libvirt
    os.makedirs("/tmp/lab-logs", exist_ok=True)  # the wrapper's trace_dir
    emulator = lab.args.libvirt_emulator if hold else kit.QEMU
    if hold and not emulator:
        raise kit.ScenarioFailed("no --libvirt-emulator (the installed qmp-sidecar-qemu wrapper)")
    order = [lab.pair[0], lab.pair[1], lab.single]
    host = {b: HOST_DRIVER[lab.devices[b]["kind"]] for b in order}
    for bdf in order:  # managed='yes' starts from the host driver
        bind(bdf, None)
    lab.wait(lambda: all(sysfs_driver(b) == host[b] for b in order), 20, "the NICs to bind to their host drivers")
    warnings_before = kernel_warnings()
    name = f"lab-{lab.scenario}".replace(".", "-")
    direct_qmp = f"/tmp/lab-{name}-direct.qmp"
    devices = list(zip(order, SLOTS))
    for i, (bdf, slot) in enumerate(devices):
        with open(f"{STATE}/{name}-dev{i}.xml", "w") as f:
            f.write(f"<hostdev mode='subsystem' type='pci' managed='yes'><source>{source_address(bdf)}</source>"
                    f"<address type='pci' domain='0x0000' bus='0x00' slot='{slot:#x}' function='0x0'/></hostdev>\n")
    with open(f"{STATE}/{name}.xml", "w") as f:
        f.write(domain_xml(name, emulator, devices, direct_qmp))
    watch = DriverWatch(lab, order)
    lab.pollers.append(watch.poll)
    fig = {"libvirtd-ready-s": lv.ready_s}
    t0 = mono()
    qemu_pid = None
    try:
        lv.virsh("create", f"{STATE}/{name}.xml", "--paused", timeout=120)
        fig["domain-start-s"] = round(mono() - t0, 1)
        qemu_pid = int(open(f"/run/libvirt/qemu/{name}.pid").read())
        for g in {lab.group(b) for b in order}:
            lab.obs.ino.watch(f"/proc/{qemu_pid}/root/dev/vfio/{g}", g)
        lab.obs.track(qemu_pid, "libvirt's QEMU")
        children = open(f"/proc/{qemu_pid}/task/{qemu_pid}/children").read().split()
        sidecars = [int(c) for c in children if "qmp-sidecar" in open(f"/proc/{c}/cmdline", "rb").read().decode()]
        if hold and not sidecars:
            raise kit.ScenarioFailed("the wrapper started no qmp-sidecar next to QEMU")
        if not hold and sidecars:
            raise kit.ScenarioFailed("the control runs a qmp-sidecar")
        if any(sysfs_driver(b) != "vfio-pci" for b in order):
            raise kit.ScenarioFailed(f"libvirt did not bind the NICs to vfio-pci: {watch.now}")
        direct = kit.QMPClient(lab, direct_qmp, "direct")
        pair_group = lab.group(lab.pair[0])
        lab.wait(lambda: lab.obs.holds(qemu_pid, pair_group), 10, "QEMU to hold the two-device group")
        detach_start = {}
        for i, (bdf, slot) in enumerate(devices):
            t = mono()
            detach_start[bdf] = t
            lab.note(f"virsh detach-device {bdf} (slot {slot})")
            out = open(f"{STATE}/virsh-detach.out", "w+")
            p = subprocess.Popen(["virsh", "-c", "qemu:///system", "detach-device", name,
                                  f"{STATE}/{name}-dev{i}.xml", "--live"], stdout=out, stderr=subprocess.STDOUT)
            eject_when_requested(lab, direct, slot)
            alias = f"hostdev{i}"
            lab.wait_event(direct, "DEVICE_DELETED", lambda d: d.get("device") == alias, 15,
                           f"QEMU's DEVICE_DELETED of {alias} (direct monitor)")
            lab.wait(lambda: p.poll() is not None, 30, f"virsh detach-device {bdf}")
            out.seek(0)
            said = out.read().strip()
            fig[f"detach-{bdf}-s"] = round(mono() - t, 1)
            fig[f"detach-{bdf}-virsh"] = said
            if p.returncode != 0:
                raise kit.ScenarioFailed(f"virsh detach-device {bdf}: {said}")
            if i == 0:
                # QEMU deleted 02:01.0 and keeps the group open for 02:02.0.
                lab.settle(1.0)
                fig["group-open-after-first-detach"] = lab.obs.first("inotify-close", pair_group, t) is None
                fig["qemu-group-fd-after-first-detach"] = group_fd_links(qemu_pid, pair_group)
                fig["first-nic-driver-after-first-detach"] = watch.now[bdf]
                if hold and watch.now[bdf] != "vfio-pci":
                    raise kit.ScenarioFailed(f"hold mode: libvirt rebound {bdf} ({watch.now[bdf]}) while "
                                             f"{lab.pair[1]} still holds the group")
        # Let libvirt finish: every NIC it gives back reaches a host driver, or stays without one.
        lab.wait(lambda: all(watch.now[b] != "vfio-pci" for b in order), 30, "libvirt to hand the NICs back")
        lab.wait(lambda: all(watch.now[b] == host[b] for b in order), 5)  # probes finish
        lab.settle(1.0)
        result = check(lab, watch, order, host, detach_start, hold, fig)
        new_warnings = [w for w in kernel_warnings() if w not in warnings_before]
        fig["kernel-warnings"] = [w for w in new_warnings if about_devices(w)]
        fig["other-kernel-warnings"] = [w for w in new_warnings if not about_devices(w)]
        if hold and fig["kernel-warnings"]:
            raise kit.ScenarioFailed(f"kernel warnings: {fig['kernel-warnings'][:3]}")
        lv.virsh("destroy", name)
        lab.wait(lambda: not os.path.exists(f"/proc/{qemu_pid}"), 15, "QEMU to exit after virsh destroy")
        lab.wait(lambda: not any(os.path.exists(f"/proc/{s}") for s in sidecars), 10,
                 "the sidecar to exit with QEMU")
        return result
    finally:
        lab.pollers.remove(watch.poll)
        if qemu_pid:
            lab.obs.untrack(qemu_pid)
        lv.virsh("destroy", name, check=False)
        log = f"/var/log/libvirt/qemu/{name}.log"
        if os.path.exists(log):
            with open(log, "rb") as src, open(f"{lab.out}/{name}-domain.log", "wb") as dst:
                dst.write(src.read())
        for bdf in order:  # the other scenarios want the NICs on vfio-pci
            try:
                bind(bdf, "vfio-pci")
            except (OSError, RuntimeError) as e:  # noted; the scenario's own verdict stands
                lab.note(f"rebinding {bdf} to vfio-pci failed: {e}")
                print(f"lab-runner: rebinding {bdf} to vfio-pci failed: {e}", flush=True)


def check(lab, watch, order, host, detach_start, hold, fig):
    """When each NIC left vfio-pci relative to its group's last close; where it ended."""
    kit = lab.kit
    first = order[0]
    premature = []
    for bdf in order:
        g = lab.group(bdf)
        close_t = lab.obs.first("inotify-close", g, detach_start[order[0]])
        left_t = watch.left_vfio(bdf, detach_start[bdf])
        fig[f"{bdf}-final-driver"] = watch.now[bdf]
        if left_t is not None and close_t is not None:
            fig[f"{bdf}-rebind-minus-group-close-ms"] = round((left_t - close_t) * 1000, 1)
        if left_t is not None and (close_t is None or left_t < close_t):
            premature.append(bdf)
        if close_t is None:
            raise kit.ScenarioFailed(f"the observer saw no last close of group {g}")
    fig["rebound-while-group-held"] = premature
    if hold:
        if premature:
            raise kit.ScenarioFailed(f"libvirt rebound {premature} while QEMU still held the group")
        wrong = {b: watch.now[b] for b in order if watch.now[b] != host[b]}
        if wrong:
            raise kit.ScenarioFailed(f"NICs not back on their host driver: {wrong}")
    else:
        # The control must show the bug, or the lab proves nothing about the fix.
        if first not in premature or watch.now[first] is not None:
            raise kit.ScenarioFailed(f"the control did not reproduce libvirt's premature rebind: {first} "
                                     f"rebound while held: {first in premature}, final driver {watch.now[first]}")
    return fig


def scenarios(kit):
    """Scenario table entries; `kit` is the runner module (Lab helpers, ScenarioFailed, QMPClient)."""
    return {
        "L": (lambda lab: scenario(lab, hold=False),
              "libvirt manages the NICs, no sidecar (control): premature rebind, first NIC left driverless"),
        "L-hold": (lambda lab: scenario(lab, hold=True),
                   "libvirt with the qmp-sidecar-qemu wrapper (hold mode): rebind only after the group is released"),
    }
