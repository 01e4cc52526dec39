import QMPRuntime
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Take-over against a real QEMU 7.2 (skipped with a reason when QEMU is absent, unless
/// QMP_SIDECAR_REQUIRE_QEMU is set).
@Suite("Take-over with real QEMU")
struct RealQEMUTakeOverTests {
    static let qemu = "/usr/bin/qemu-system-x86_64"

    static var qemuAvailable: Bool {
        if access(qemu, X_OK) == 0 { return true }
        if getenv("QMP_SIDECAR_REQUIRE_QEMU") != nil { return true }  // then fail instead of skipping
        print("skipping real-QEMU take-over test: \(qemu) not found (install qemu-system-x86)")
        return false
    }

    @Test(
        "QEMU's socket moves aside, serves through the upstream path, and QEMU's quit cleans up",
        .enabled(if: qemuAvailable))
    func takeOverRealQEMU() throws {
        let dir = try TempDir()
        defer { dir.remove() }
        let path = dir.file("qmp")
        let args = [
            "-M", "pc", "-accel", "tcg", "-nodefaults", "-display", "none", "-S",
            "-qmp", "unix:\(path),server=on,wait=off",
        ]
        let pid = try ChildSpawn.spawn(Self.qemu, arguments: args)
        defer {
            kill(pid, SIGKILL)
            var status: Int32 = 0
            waitpid(pid, &status, 0)
        }
        let probe = try Sockets.connect(to: .unix(path: path), retryingUntil: .now + .seconds(20))
        close(probe)

        let reactor = try Reactor()
        let takeOver = try SocketTakeOver(path: path)
        var accepted = 0
        // The listener owns the taken-over socket from here on and closes it, once: a second close
        // here could hit a descriptor another test running in this process has just opened.
        let listener = Listener(fd: takeOver.listeningFD, reactor: reactor) { fd in
            accepted += 1
            close(fd)
        }
        defer { listener.close() }
        let client = try Sockets.connect(to: .unix(path: path))
        defer { close(client) }

        let upstream = Connection(fd: try Sockets.connect(to: .unix(path: takeOver.upstreamPath)), reactor: reactor)
        #expect(upstream.peerPID == pid)
        var received: [UInt8] = []
        var qemuExited = false
        upstream.onRead = { bytes, _ in
            let hadGreeting = received.contains(UInt8(ascii: "\n"))
            received += bytes
            if !hadGreeting && received.contains(UInt8(ascii: "\n")) {
                upstream.send(Array(#"{"execute":"qmp_capabilities"}{"execute":"quit"}"#.utf8))
            }
        }
        let exitWatcher = try ProcessExitWatcher(pid: pid, reactor: reactor) {
            qemuExited = true
            reactor.stop()
        }
        upstream.start()
        try runUntilStopped(reactor, timeout: .seconds(30))
        #expect(qemuExited && exitWatcher.hasExited)
        #expect(String(decoding: received, as: UTF8.self).hasPrefix(#"{"QMP": {"version": {"qemu":"#))
        #expect(accepted == 1, "a client at PATH reached our listener, not QEMU")
        upstream.close()
        listener.close()
        try takeOver.restore()
        var info = stat()
        #expect(lstat(path, &info) != 0, "QEMU removes its path on quit, as without the sidecar")
        #expect(lstat(takeOver.upstreamPath, &info) != 0)
    }
}
