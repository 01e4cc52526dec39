#!/usr/bin/env python3
"""Hot-unplug VFIO devices through qmp-sidecar and rebind them to a host driver only when their
IOMMU group is really free (GROUP_RELEASED), instead of right after DEVICE_DELETED.

    unplug-and-rebind.py SOCKET DEVICE_ID [DEVICE_ID ...] [--driver DRIVER] [--sysfs-root /sys]
                         [--event-prefix P] [--timeout SECONDS] [--dry-run]

SOCKET is the sidecar's client socket. The devices' PCI addresses and groups come from the sidecar's
own query command (__org.qmp-sidecar_query-vfio-groups). After GROUP_RELEASED for every group
involved, each device is unbound from vfio-pci and probed for DRIVER (driver_override, unbind,
drivers_probe). On GROUP_RELEASE_TIMEOUT the holders are printed and nothing is rebound (exit 2).
--dry-run prints the sysfs writes instead of doing them.

Needs python qemu.qmp (python3 -m pip install qemu.qmp).
"""
import argparse
import asyncio
import os
import sys

from qemu.qmp import QMPClient

QUERY = "__org.qmp-sidecar_query-vfio-groups"


def write(path, value, dry_run):
    if dry_run:
        print(f"would write {value!r} to {path}")
        return
    with open(path, "w") as f:
        f.write(value)


def rebind(bdf, driver, sysfs_root, dry_run):
    device = f"{sysfs_root}/bus/pci/devices/{bdf}"
    write(f"{device}/driver_override", driver, dry_run)
    if dry_run or os.path.exists(f"{device}/driver"):
        write(f"{device}/driver/unbind", bdf, dry_run)
    write(f"{sysfs_root}/bus/pci/drivers_probe", bdf, dry_run)
    print(f"{bdf}: rebound to {driver}" + (" (dry run)" if dry_run else ""))


async def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("socket")
    parser.add_argument("devices", nargs="+", metavar="DEVICE_ID")
    parser.add_argument("--driver", default="", help="host driver to bind (empty: default probing)")
    parser.add_argument("--sysfs-root", default="/sys")
    parser.add_argument("--event-prefix", default="")
    parser.add_argument("--timeout", type=float, default=60)
    parser.add_argument("--dry-run", action="store_true")
    args = parser.parse_args()
    released_name = args.event_prefix + "GROUP_RELEASED"
    timeout_name = args.event_prefix + "GROUP_RELEASE_TIMEOUT"

    qmp = QMPClient("unplug-and-rebind")
    await qmp.connect(args.socket)

    # Which groups and PCI addresses do these devices have?
    groups, bdfs = set(), {}
    for group in await qmp.execute(QUERY):
        for device in group["devices"]:
            if device.get("id") in args.devices:
                groups.add(group["group"])
                bdfs[device["id"]] = device.get("sysfs")
    missing = [d for d in args.devices if d not in bdfs]
    if missing:
        sys.exit(f"not VFIO devices tracked by the sidecar: {', '.join(missing)}")
    print(f"unplugging {', '.join(args.devices)} (IOMMU groups {sorted(groups)})")

    with qmp.listener((released_name, timeout_name, "DEVICE_DELETED")) as events:
        for device in args.devices:
            await qmp.execute("device_del", {"id": device})
        pending = set(groups)
        while pending:
            event = await asyncio.wait_for(events.get(), args.timeout)
            data = event.get("data", {})
            if event["event"] == "DEVICE_DELETED":
                print(f"DEVICE_DELETED {data.get('device')} (not yet safe to rebind)")
            elif event["event"] == released_name and data["group"] in pending:
                print(f"{released_name} group {data['group']} devices {data['devices']} after {data['waited-ms']} ms")
                pending.discard(data["group"])
            elif event["event"] == timeout_name and data["group"] in pending:
                holders = ", ".join(f"{h['comm']}[{h['pid']}]" for h in data.get("holders", []))
                print(f"{timeout_name} group {data['group']}: still held by {holders or 'unknown'}; not rebinding")
                sys.exit(2)
    await qmp.disconnect()

    for device in args.devices:
        if bdfs[device]:
            rebind(os.path.basename(bdfs[device]), args.driver, args.sysfs_root, args.dry_run)


if __name__ == "__main__":
    asyncio.run(main())
