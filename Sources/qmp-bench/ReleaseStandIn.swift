import QMPRuntime
import QMPTestKit
import VFIOFakeHost

#if canImport(Glibc)
import Glibc
#endif

/// A stand-in QEMU for `qmp-bench release`: a python QMP server on a unix socket that holds `fds`
/// other fds, opens a device's group node on `device_add` and closes it on `device_del`, in one of
/// the two orders real QEMU shows, and prints `closed ID NS` (`CLOCK_MONOTONIC` right before its
/// `close(2)`) on its stdout for each close.
final class ReleaseStandIn {
    /// Which comes first on `device_del`.
    enum Order: String, CaseIterable {
        /// `DEVICE_DELETED`, then the close 1–2 ms later (pre-2.11 QEMU, or a slow finalize).
        case eventFirst = "event-first"
        /// The close, then `DEVICE_DELETED` at once (QEMU 7.2 on vfio-pci, docs/vfio-lab.md, where the gap is a
        /// few ms; here only the event's write follows the close, so the sidecar's reaction is measured).
        case closeFirst = "close-first"
    }

    let pid: pid_t
    let socketPath: String
    /// Its stdout: `ready`, then one `closed ID NS` per close.
    let output: TimedLines
    private var exited = false

    private static let script = #"""
        import os, sys, socket, json, time, random, resource
        path, order, nfds = sys.argv[1], sys.argv[2], int(sys.argv[3])
        nodes = dict(a.split("=", 1) for a in sys.argv[4:])
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        extra = [os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC) for _ in range(nfds)]
        srv = socket.socket(socket.AF_UNIX)
        srv.bind(path)
        srv.listen(1)
        out = sys.stdout
        out.write("ready\n"); out.flush()
        conn, _ = srv.accept()
        f = conn.makefile("rb")
        def send(obj):
            conn.sendall((json.dumps(obj) + "\r\n").encode())
        def event_line(name, data):
            t = time.time()
            return (json.dumps({"event": name, "data": data,
                                "timestamp": {"seconds": int(t), "microseconds": int((t % 1) * 1e6)}})
                    + "\r\n").encode()
        send({"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}, "package": "stand-in"},
                      "capabilities": []}})
        held = {}
        for raw in f:
            line = raw.decode().strip()
            if not line:
                continue
            cmd = json.loads(line)
            name, args, cid = cmd.get("execute"), cmd.get("arguments", {}), cmd.get("id")
            def reply(value, error=None):
                m = {"return": value} if error is None else {"error": {"class": "GenericError", "desc": error}}
                if cid is not None:
                    m["id"] = cid
                send(m)
            if name == "qmp_capabilities":
                reply({})
            elif name == "qom-list":
                reply([])
            elif name == "device_add":
                i = args["id"]
                held[i] = os.open(nodes[i], os.O_RDWR | os.O_CLOEXEC)
                reply({})
            elif name == "device_del":
                i = args["id"]
                fd = held.pop(i)
                reply({})
                data = {"device": i, "path": "/machine/peripheral/" + i}
                line = event_line("DEVICE_DELETED", data)
                if order == "event-first":
                    conn.sendall(line)
                    time.sleep(0.001 + random.random() * 0.001)
                    t = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
                    os.close(fd)
                else:
                    # The event is built before the close, so only its write follows it.
                    t = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
                    os.close(fd)
                    conn.sendall(line)
                out.write("closed %s %d\n" % (i, t)); out.flush()
            else:
                reply(None, "The command %s has not been found" % name)
        """#

    /// Starts it and waits until it listens.
    ///
    /// - Parameter nodes: device id → the node `device_add` of that id opens.
    init(directory: String, order: Order, fds: Int, nodes: [(id: String, node: String)]) throws {
        socketPath = directory + "/qemu.sock"
        var pipe: [Int32] = [0, 0]
        guard Glibc.pipe(&pipe) == 0 else { throw QMPTestKitError("pipe failed: errno \(errno)") }
        let arguments =
            ["-u", "-c", Self.script, socketPath, order.rawValue, String(fds)] + nodes.map { "\($0.id)=\($0.node)" }
        do {
            pid = try ChildSpawn.spawn(
                StandInProcess.interpreter, arguments: arguments, searchPath: true,
                fileActions: [.open(fd: 0, path: "/dev/null", flags: O_RDONLY), .dup2(from: pipe[1], to: 1)])
        } catch {
            close(pipe[0])
            close(pipe[1])
            throw QMPTestKitError("cannot start the QEMU stand-in: \(error)")
        }
        close(pipe[1])
        output = TimedLines(fd: pipe[0])
        guard output.next(timeout: 30)?.text == "ready" else {
            terminate()
            throw QMPTestKitError("the QEMU stand-in did not start")
        }
    }

    deinit { terminate() }

    /// The next close: which device, and when (`CLOCK_MONOTONIC` ns).
    func nextClose() throws -> (id: String, time: UInt64) {
        guard let line = output.next(timeout: 10) else { throw QMPTestKitError("the stand-in reported no close") }
        let parts = line.text.split(separator: " ")
        guard parts.count == 3, parts[0] == "closed", let time = UInt64(parts[2]) else {
            throw QMPTestKitError("unexpected stand-in output: \(line.text)")
        }
        return (String(parts[1]), time)
    }

    func terminate() {
        guard !exited else { return }
        exited = true
        kill(pid, SIGKILL)
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
    }
}
