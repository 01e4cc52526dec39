#!/usr/bin/python3
"""A deliberately small stand-in for qmp-sidecar, used only to check the lab itself.

It is NOT the product: one client, no id rewriting, no fd passing. It exists so that the scenario
runner's sidecar path can be exercised before (and independently of) the real qmp-sidecar, and so
that the lab can prove it catches a wrong sidecar: with --naive it announces GROUP_RELEASED as soon
as every device of the group had its DEVICE_DELETED, without waiting for the group's last close —
the lab must then FAIL scenario F, where a copy of QEMU's fd outlives QEMU's close
(lab/run.sh --sidecar lab/stand-in-sidecar.py -- --sidecar-arg=--naive).

Same options as qmp-sidecar: --upstream unix:P --listen unix:P [--hold-device-deleted]
[--release-timeout S] [--event-prefix P], plus --naive.
"""

import argparse
import ctypes
import json
import os
import select
import socket
import struct
import sys
import time

libc = ctypes.CDLL(None, use_errno=True)


def holders(group):
    out = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if any(os.readlink(f"/proc/{pid}/fd/{fd}") == f"/dev/vfio/{group}" for fd in os.listdir(f"/proc/{pid}/fd")):
                out.append({"pid": int(pid), "comm": open(f"/proc/{pid}/comm").read().strip()})
        except OSError:
            pass
    return out


def event(name, data):
    t = time.time()
    return (json.dumps({"event": name, "data": data,
                        "timestamp": {"seconds": int(t), "microseconds": int(t % 1 * 1e6)}}) + "\r\n").encode()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--upstream", required=True)
    ap.add_argument("--listen", required=True)
    ap.add_argument("--hold-device-deleted", action="store_true")
    ap.add_argument("--release-timeout", type=float, default=30)
    ap.add_argument("--event-prefix", default="")
    ap.add_argument("--naive", action="store_true")
    a = ap.parse_args()
    up = socket.socket(socket.AF_UNIX)
    up.connect(a.upstream.removeprefix("unix:"))
    upf = up.makefile("rb")
    greeting = upf.readline()
    up.sendall(b'{"execute": "qmp_capabilities", "id": "sc-0"}\r\n')
    upf.readline()
    ino = libc.inotify_init1(os.O_NONBLOCK)
    wds = {}
    devices = {}  # id -> group
    groups = {}  # group -> {"live": set, "deleted": [], "since": t or None, "held": [], "timed_out": bool}
    pending = {}  # our command id -> callback
    n = [0]

    def command(name, args, cb):
        n[0] += 1
        i = f"sc-{n[0]}"
        pending[i] = cb
        up.sendall((json.dumps({"execute": name, "arguments": args, "id": i}) + "\r\n").encode())

    def track(dev_id, host):
        g = int(os.path.basename(os.readlink(f"/sys/bus/pci/devices/{host}/iommu_group")))
        devices[dev_id] = g
        st = groups.setdefault(g, {"live": set(), "deleted": [], "since": None, "held": [], "timed_out": False})
        st["live"].add(dev_id)
        st["since"] = None
        if g not in wds.values():
            wds[libc.inotify_add_watch(ino, f"/dev/vfio/{g}".encode(), 0x18)] = g

    def discovered(reply):
        for child in reply.get("return", []):
            if child["type"].startswith("child<vfio"):
                cid = child["name"]
                command("qom-get", {"path": f"/machine/peripheral/{cid}", "property": "host"},
                        lambda r, cid=cid: track(cid, r["return"]) if r.get("return", "").count(":") == 2 else None)

    command("qom-list", {"path": "/machine/peripheral"}, discovered)
    lsn = socket.socket(socket.AF_UNIX)
    path = a.listen.removeprefix("unix:")
    if os.path.exists(path):
        os.unlink(path)
    lsn.bind(path)
    lsn.listen(1)
    client = None
    cbuf = b""
    ubuf = b""
    adds = {}  # client command id -> (dev id, host)

    def to_client(data):
        if client:
            client.sendall(data)

    def try_release(g):
        st = groups[g]
        if st["live"] or st["since"] is None:
            return
        if not a.naive and holders(g):
            return
        for line in st["held"]:
            to_client(line)
        to_client(event(a.event_prefix + "GROUP_RELEASED", {"group": g, "devices": st["deleted"],
                                                           "waited-ms": round((time.monotonic() - st["since"]) * 1000)}))
        del groups[g]

    while True:
        timeout = None
        for g, st in groups.items():
            if st["since"] is not None and not st["timed_out"]:
                left = st["since"] + a.release_timeout - time.monotonic()
                timeout = left if timeout is None else min(timeout, left)
        fds = [up, lsn, ino] + ([client] if client else [])
        r, _, _ = select.select(fds, [], [], max(timeout, 0) if timeout is not None else None)
        for g, st in list(groups.items()):
            if st["since"] is not None and not st["timed_out"] and time.monotonic() >= st["since"] + a.release_timeout:
                st["timed_out"] = True
                to_client(event(a.event_prefix + "GROUP_RELEASE_TIMEOUT", {
                    "group": g, "devices": st["deleted"], "holders": holders(g),
                    "waited-ms": round((time.monotonic() - st["since"]) * 1000)}))
        if ino in r:
            buf = os.read(ino, 4096)
            i = 0
            while i < len(buf):
                wd, _m, _c, ln = struct.unpack_from("iIII", buf, i)
                i += 16 + ln
                if wds.get(wd) in groups:
                    try_release(wds[wd])
        if lsn in r:
            client, _ = lsn.accept()
            client.sendall(greeting)
        if client and client in r:
            data = client.recv(65536)
            if not data:
                client.close()
                client = None
            cbuf += data
            while b"\n" in cbuf:
                line, cbuf = cbuf.split(b"\n", 1)
                if not line.strip():
                    continue
                msg = json.loads(line)
                if msg.get("execute") == "qmp_capabilities":
                    to_client((json.dumps({"return": {}, "id": msg.get("id")}) + "\r\n").encode())
                    continue
                if msg.get("execute") == "device_add" and str(msg["arguments"].get("driver")).startswith("vfio"):
                    adds[json.dumps(msg.get("id"))] = (msg["arguments"]["id"], msg["arguments"]["host"])
                up.sendall(line + b"\n")
        if up in r:
            data = up.recv(65536)
            if not data:
                print("stand-in-sidecar: QEMU closed the connection", file=sys.stderr)
                return 1
            ubuf += data
            while b"\n" in ubuf:
                line, ubuf = ubuf.split(b"\n", 1)
                msg = json.loads(line)
                line += b"\n"
                if msg.get("id") in pending:
                    pending.pop(msg["id"])(msg)
                    continue
                key = json.dumps(msg.get("id"))
                if key in adds and "return" in msg:
                    track(*adds.pop(key))
                if msg.get("event") == "DEVICE_DELETED" and msg["data"].get("device") in devices:
                    dev_id = msg["data"]["device"]
                    g = devices.pop(dev_id)
                    st = groups[g]
                    st["live"].discard(dev_id)
                    st["deleted"].append(dev_id)
                    if not st["live"]:
                        st["since"] = time.monotonic()
                    if a.hold_device_deleted:
                        st["held"].append(line)
                    else:
                        to_client(line)
                    try_release(g)
                    continue
                to_client(line)


if __name__ == "__main__":
    sys.exit(main())
