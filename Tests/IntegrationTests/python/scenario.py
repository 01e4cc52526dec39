#!/usr/bin/env python3
"""The reference client (python qemu.qmp) through qmp-sidecar against a real QEMU.

Usage: scenario.py SIDECAR_SOCKET QEMU_PID
Runs: negotiation, query-status, device_add/device_del with DEVICE_DELETED seen by two clients,
getfd with send_fd_scm then closefd, add-fd with send_fd_scm then query-fdsets, an unknown command.
Prints "scenario ok" and exits 0 on success; raises (exit 1) on the first mismatch.
"""
import asyncio
import os
import sys

from qemu.qmp import ExecuteError, QMPClient


def qemu_fd_targets(pid):
    d = f"/proc/{pid}/fd"
    out = []
    for name in os.listdir(d):
        try:
            out.append(os.readlink(f"{d}/{name}"))
        except OSError:
            pass
    return out


async def main(path, qemu_pid):
    a, b = QMPClient("a"), QMPClient("b")
    await a.connect(path)
    await b.connect(path)

    status = await a.execute("query-status")
    assert status["status"] == "prelaunch", status

    # DEVICE_DELETED reaches both clients.
    with a.listener("DEVICE_DELETED") as la, b.listener("DEVICE_DELETED") as lb:
        await a.execute("device_add", {"driver": "usb-kbd", "id": "pykbd"})
        await a.execute("device_del", {"id": "pykbd"})
        ea = await asyncio.wait_for(la.get(), 10)
        eb = await asyncio.wait_for(lb.get(), 10)
    assert ea["data"]["device"] == "pykbd" and eb["data"]["device"] == "pykbd", (ea, eb)

    # getfd with send_fd_scm (a single space carries the fd), then closefd.
    r, w = os.pipe()
    pipe_name = os.readlink(f"/proc/self/fd/{w}")
    a.send_fd_scm(w)
    os.close(w)
    assert await a.execute("getfd", {"fdname": "pyfd"}) == {}
    assert pipe_name in qemu_fd_targets(qemu_pid), "QEMU does not hold the passed fd"
    assert await a.execute("closefd", {"fdname": "pyfd"}) == {}
    assert pipe_name not in qemu_fd_targets(qemu_pid), "closefd did not close it"
    os.close(r)

    # add-fd with send_fd_scm, then query-fdsets from the other client (shared QEMU state).
    fd = os.open("/dev/null", os.O_RDWR)
    b.send_fd_scm(fd)
    os.close(fd)
    added = await b.execute("add-fd", {"fdset-id": 3, "opaque": "py"})
    assert added["fdset-id"] == 3, added
    sets = await a.execute("query-fdsets")
    assert any(s["fdset-id"] == 3 and s["fds"][0]["opaque"] == "py" for s in sets), sets

    # QEMU's errors come through unchanged.
    try:
        await a.execute("no-such-command")
        raise AssertionError("no error for an unknown command")
    except ExecuteError as err:
        assert err.error_class == "CommandNotFound", err

    await a.disconnect()
    await b.disconnect()
    print("scenario ok")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
