"""A fake QEMU for the event-storm fault row: QMP greeting, an empty reply to every command
(an empty list for qom-list, so the sidecar's discovery finds no devices), and on the command
x-start-storm a storm of COUNT events at RATE per second, then STORM_END.  Usage: storm_qemu.py SOCKET COUNT RATE"""
import json, os, socket, sys, threading, time

path, count, rate = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
server = socket.socket(socket.AF_UNIX)
server.bind(path + ".new")
server.listen(1)
os.rename(path + ".new", path)
conn, _ = server.accept()
lock = threading.Lock()


def send(obj):
    with lock:
        conn.sendall(json.dumps(obj).encode() + b"\r\n")


def storm():
    start = time.monotonic()
    for n in range(1, count + 1):
        now = time.time()
        send({"timestamp": {"seconds": int(now), "microseconds": int(now % 1 * 1e6)}, "event": "STORM",
              "data": {"n": n}})
        ahead = n / rate - (time.monotonic() - start)
        if ahead > 0.001:
            time.sleep(ahead)
    send({"timestamp": {"seconds": 0, "microseconds": 0}, "event": "STORM_END", "data": {"count": count}})


send({"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}, "package": ""}, "capabilities": []}})
decoder = json.JSONDecoder()
buffer = ""
started = False
while True:
    data = conn.recv(65536)
    if not data:
        break
    buffer += data.decode()
    while True:
        buffer = buffer.lstrip()
        if not buffer:
            break
        try:
            command, end = decoder.raw_decode(buffer)
        except ValueError:
            break
        buffer = buffer[end:]
        reply = {"return": [] if command.get("execute") == "qom-list" else {}}
        if "id" in command:
            reply["id"] = command["id"]
        send(reply)
        if command.get("execute") == "x-start-storm" and not started:
            started = True
            threading.Thread(target=storm, daemon=True).start()
