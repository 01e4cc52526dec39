import QMPRuntime

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// A child process standing in for QEMU's file handling: it opens and closes files (a fake group node)
/// on command, can hold many other fds, and can fork a second process holding a copy of its fds.
///
/// It is a small `python3` program driven line by line over pipes; every command waits for its answer,
/// so when a call returns the child has done it. Used by the tests and by `qmp-bench release`.
///
/// - Important: not thread-safe; call from one thread. ``terminate()`` (or deinit) kills the child and
///   every holder it forked.
public final class StandInProcess {
    /// The stand-in's pid (what the sidecar would learn with `SO_PEERCRED`).
    public let pid: pid_t
    private var socket: Int32
    private var pending: [UInt8] = []
    private var holders: [pid_t] = []
    private var exited = false

    /// The interpreter used; `/usr/bin/python3` (Debian's), else `python3` from `PATH`.
    public static var interpreter: String {
        access("/usr/bin/python3", X_OK) == 0 ? "/usr/bin/python3" : "python3"
    }

    private static let script = """
        import os, sys, time, resource
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        extra = []
        holders = {}
        out = sys.stdout
        def reply(s):
            out.write(s + "\\n"); out.flush()
        for line in sys.stdin:
            p = line.split()
            if not p:
                continue
            c = p[0]
            try:
                if c == "open":
                    reply(str(os.open(p[1], os.O_RDWR | os.O_CLOEXEC)))
                elif c == "close":
                    t = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
                    os.close(int(p[1]))
                    reply(str(t))
                elif c == "fill":
                    n = int(p[1])
                    while len(extra) < n:
                        extra.append(os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC))
                    reply(str(len(extra)))
                elif c == "fork-holder":
                    r, w = os.pipe()
                    pid = os.fork()
                    if pid == 0:
                        os.close(w)
                        os.read(r, 1)
                        os._exit(0)
                    os.close(r)
                    holders[pid] = w
                    reply(str(pid))
                elif c == "release-holder":
                    pid = int(p[1])
                    os.close(holders.pop(pid))
                    os.waitpid(pid, 0)
                    reply("ok")
                elif c == "exit":
                    os._exit(0)
                else:
                    reply("error unknown command " + c)
            except Exception as e:
                reply("error " + str(e).replace("\\n", " "))
        """

    /// Starts the stand-in.
    public init() throws(FakeHostError) {
        // One socketpair for both directions: send(MSG_NOSIGNAL) never raises SIGPIPE if the child died.
        var pair: [Int32] = [0, 0]
        guard socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &pair) == 0 else {
            throw FakeHostError("cannot create a socketpair for the QEMU stand-in", syscall: "socketpair", errno: errno)
        }
        let child: pid_t
        do {
            child = try ChildSpawn.spawn(
                Self.interpreter, arguments: ["-u", "-c", Self.script], searchPath: true,
                fileActions: [.dup2(from: pair[1], to: 0), .dup2(from: pair[1], to: 1)])
        } catch {
            Glibc.close(pair[0])
            Glibc.close(pair[1])
            throw FakeHostError(
                "cannot start the QEMU stand-in (\(Self.interpreter))", syscall: "posix_spawnp", errno: error.errno ?? 0
            )
        }
        Glibc.close(pair[1])
        pid = child
        socket = pair[0]
    }

    deinit { terminate() }

    /// Opens `path` read-write in the stand-in; returns the stand-in's fd number.
    @discardableResult
    public func open(_ path: String) throws(FakeHostError) -> Int32 {
        let answer = try command("open \(path)")
        guard let fd = Int32(answer) else { throw FakeHostError("stand-in could not open \(path): \(answer)") }
        return fd
    }

    /// Closes the stand-in's fd `fd`; returns `CLOCK_MONOTONIC` nanoseconds taken right before `close`
    /// (a latency measured from it is an upper bound: it includes the `close` call itself).
    @discardableResult
    public func close(_ fd: Int32) throws(FakeHostError) -> UInt64 {
        let answer = try command("close \(fd)")
        guard let time = UInt64(answer) else { throw FakeHostError("stand-in could not close \(fd): \(answer)") }
        return time
    }

    /// Makes the stand-in hold at least `count` extra fds (on `/dev/null`).
    public func fill(toExtraFDs count: Int) throws(FakeHostError) {
        let answer = try command("fill \(count)")
        guard Int(answer) == count else { throw FakeHostError("stand-in could not hold \(count) fds: \(answer)") }
    }

    /// Forks a second process that inherits copies of every fd the stand-in holds now and keeps them
    /// until ``releaseHolder(_:)``. Returns its pid.
    public func forkHolder() throws(FakeHostError) -> pid_t {
        let answer = try command("fork-holder")
        guard let holder = pid_t(answer) else { throw FakeHostError("stand-in could not fork: \(answer)") }
        holders.append(holder)
        return holder
    }

    /// Makes a forked holder exit (closing its copies) and reaps it.
    public func releaseHolder(_ holder: pid_t) throws(FakeHostError) {
        let answer = try command("release-holder \(holder)")
        guard answer == "ok" else { throw FakeHostError("stand-in could not release holder \(holder): \(answer)") }
        holders.removeAll { $0 == holder }
    }

    /// Kills the stand-in (SIGKILL: its fds close at exit, as when QEMU dies) and its holders, and
    /// reaps it. Idempotent.
    public func terminate() {
        guard !exited else { return }
        exited = true
        for holder in holders { kill(holder, SIGKILL) }
        kill(pid, SIGKILL)
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        Glibc.close(socket)
    }

    private func command(_ line: String) throws(FakeHostError) -> String {
        guard !exited else { throw FakeHostError("the QEMU stand-in has exited") }
        let bytes = Array((line + "\n").utf8)
        var sent = 0
        while sent < bytes.count {
            let count = bytes[sent...].withUnsafeBytes { send(socket, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            if count < 0 {
                if errno == EINTR { continue }
                throw FakeHostError("cannot talk to the QEMU stand-in", syscall: "send", errno: errno)
            }
            sent += count
        }
        while true {
            if let newline = pending.firstIndex(of: 10) {
                let answer = String(decoding: pending[..<newline], as: UTF8.self)
                pending.removeSubrange(...newline)
                return answer
            }
            var buffer = [UInt8](repeating: 0, count: 4096)
            let count = recv(socket, &buffer, buffer.count, 0)
            if count < 0 && errno == EINTR { continue }
            guard count > 0 else {
                throw FakeHostError("the QEMU stand-in closed its output", syscall: "recv", errno: errno)
            }
            pending += buffer[0..<count]
        }
    }
}
