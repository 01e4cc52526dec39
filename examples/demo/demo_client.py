#!/usr/bin/env python3
"""qmp-sidecar demo client: unplug a two-device VFIO group and print the timeline.

Connects to the sidecar's socket, negotiates, (optionally hot-plugs both functions of the group),
unplugs both devices one after the other, and prints every relevant moment in ms from the first
device_del: both DEVICE_DELETED events, the last close of the group node observed with inotify
(what the sidecar also watches), and the sidecar's GROUP_RELEASED. Exits 1, naming what is missing,
if an expected event does not come within the timeout. Standard library only.
"""
import argparse
import ctypes
import ctypes.util
import json
import os
import select
import socket
import struct
import sys
import time

IN_CLOSE_WRITE = 0x08
IN_CLOSE_NOWRITE = 0x10


def inotify_close_watch(path):
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
    if fd < 0 or libc.inotify_add_watch(fd, path.encode(), IN_CLOSE_WRITE | IN_CLOSE_NOWRITE) < 0:
        sys.exit(f"demo: cannot watch {path} with inotify (errno {ctypes.get_errno()})")
    return fd


class Timeline:
    def __init__(self):
        self.t0 = None
        self.rows = []

    def mark(self, what):
        now = time.monotonic()
        if self.t0 is None:
            self.t0 = now
        ms = (now - self.t0) * 1000
        self.rows.append((ms, what))
        print(f"  t={ms:8.1f} ms  {what}", flush=True)


class Demo:
    def __init__(self, socket_path, node, timeout):
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.connect(socket_path)
        self.buf = b""
        self.node = node
        self.timeout = timeout
        self.inotify = inotify_close_watch(node)
        self.timeline = Timeline()
        self.events = []  # (name, data)
        self.node_closes = 0
        greeting = self.read_message()
        if "QMP" not in greeting:
            sys.exit(f"demo: expected a QMP greeting, got {greeting}")
        self.execute("qmp_capabilities")

    def read_message(self, deadline=None):
        """Next QMP message (dict); also records inotify closes seen meanwhile. None on timeout."""
        while True:
            if b"\n" in self.buf:
                line, self.buf = self.buf.split(b"\n", 1)
                if line.strip():
                    return json.loads(line)
                continue
            wait = None if deadline is None else max(0, deadline - time.monotonic())
            ready, _, _ = select.select([self.sock, self.inotify], [], [], wait)
            if not ready:
                return None
            if self.inotify in ready:
                try:
                    data = os.read(self.inotify, 4096)
                except BlockingIOError:
                    data = b""
                offset = 0
                while offset + 16 <= len(data):
                    _, mask, _, name_len = struct.unpack_from("iIII", data, offset)
                    offset += 16 + name_len
                    self.node_closes += 1
                    self.timeline.mark(f"inotify: last close of {self.node} (group fd gone)")
            if self.sock in ready:
                chunk = self.sock.recv(65536)
                if not chunk:
                    sys.exit("demo: FAILED: the sidecar closed the connection")
                self.buf += chunk

    def handle_event(self, msg):
        name, data = msg["event"], msg.get("data", {})
        self.events.append((name, data))
        self.timeline.mark(f"{name} {json.dumps(data, separators=(',', ':'))}")

    def execute(self, name, arguments=None, label=None):
        cmd = {"execute": name, "id": name}
        if arguments is not None:
            cmd["arguments"] = arguments
        if label:
            self.timeline.mark(label)
        self.sock.sendall(json.dumps(cmd).encode())
        deadline = time.monotonic() + self.timeout
        while True:
            msg = self.read_message(deadline)
            if msg is None:
                sys.exit(f"demo: FAILED: no reply to {name} within {self.timeout} s")
            if "event" in msg:
                self.handle_event(msg)
                continue
            if "error" in msg:
                sys.exit(f"demo: FAILED: {name} -> {msg['error']}")
            return msg["return"]

    def wait_for(self, description, predicate):
        deadline = time.monotonic() + self.timeout
        while not predicate():
            msg = self.read_message(deadline)
            if msg is None:
                if predicate():
                    return
                seen = ", ".join(n for n, _ in self.events) or "nothing"
                sys.exit(f"demo: FAILED: {description} did not come within {self.timeout} s (seen: {seen})")
            if "event" in msg:
                self.handle_event(msg)

    def deleted(self, device):
        return any(n == "DEVICE_DELETED" and d.get("device") == device for n, d in self.events)

    def released(self, group):
        return any(n.endswith("GROUP_RELEASED") and d.get("group") == group for n, d in self.events)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("socket", help="the sidecar's client socket")
    parser.add_argument("node", help="the group node to watch, e.g. <dev-root>/vfio/7")
    parser.add_argument("--group", type=int, default=7)
    parser.add_argument("--devices", default="hostdev0=0000:01:00.0,hostdev1=0000:01:00.1")
    parser.add_argument("--hotplug", action="store_true", help="device_add both devices first")
    parser.add_argument("--timeout", type=float, default=10.0)
    parser.add_argument("--expect-timeout", action="store_true",
                        help="the group fd is leaked: expect GROUP_RELEASE_TIMEOUT naming the holder, no release")
    args = parser.parse_args()
    devices = [item.split("=") for item in args.devices.split(",")]

    demo = Demo(args.socket, args.node, args.timeout)
    print(f"group {args.group}: {', '.join(f'{i} ({b})' for i, b in devices)}")
    if args.hotplug:
        for dev_id, bdf in devices:
            demo.execute("device_add", {"driver": "vfio-pci", "host": bdf, "id": dev_id})
        print("hot-plugged both devices through the sidecar")
    else:
        # No need to wait for the sidecar's cold-plug discovery (qom-list/qom-get): it holds client
        # commands until that discovery is done, so the unplug below cannot race it.
        print("cold-plugged devices: the sidecar discovers them before it forwards our commands")
    print("timeline:")
    for index, (dev_id, _) in enumerate(devices):
        demo.execute("device_del", {"id": dev_id}, label=f"client: device_del {dev_id}")
        demo.wait_for(f"DEVICE_DELETED for {dev_id}", lambda d=dev_id: demo.deleted(d))
        if index < len(devices) - 1 and demo.released(args.group):
            sys.exit("demo: FAILED: GROUP_RELEASED came while a device of the group was still in the guest")
    if args.expect_timeout:
        demo.wait_for(f"GROUP_RELEASE_TIMEOUT for group {args.group}",
                      lambda: any(n.endswith("GROUP_RELEASE_TIMEOUT") and d.get("group") == args.group
                                  for n, d in demo.events))
        if demo.released(args.group) or demo.node_closes:
            sys.exit("demo: FAILED: the leaked group was reported released or closed")
        holders = [d.get("holders") for n, d in demo.events if n.endswith("GROUP_RELEASE_TIMEOUT")][0]
        print(f"ok: 2 x DEVICE_DELETED, group fd never closed, GROUP_RELEASE_TIMEOUT names {holders}")
        return
    demo.wait_for("the close of the group node (inotify)", lambda: demo.node_closes > 0)
    demo.wait_for(f"GROUP_RELEASED for group {args.group}", lambda: demo.released(args.group))
    order = ["group-fd-close" if what.startswith("inotify") else what.split(" ")[0]
             for _, what in demo.timeline.rows if not what.startswith("client")]
    print(f"ok: {len(devices)} x DEVICE_DELETED, group fd closed, GROUP_RELEASED ({' -> '.join(order)})")


if __name__ == "__main__":
    main()
