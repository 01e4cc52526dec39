import Foundation
import QMPTestKit
import Testing

/// The sidecar's exit status follows QEMU's end: 0 when QEMU shut down normally (a systemd unit is
/// not marked failed after every VM shutdown), non-zero when QEMU went away unexpectedly.
@Suite struct ExitStatusTests {
    @Test(.enabled(if: Requirements.qemuUsable), arguments: ["quit", "SIGTERM"])
    func qemuShuttingDownEndsTheSidecarWithStatusZero(how: String) throws {
        let qemu = try QEMULauncher()
        let sidecar = try SidecarInstance(dir: qemu.directory, upstream: qemu.socketPath)
        let client = try TestClient(path: sidecar.listenPath)
        try client.negotiate()
        // A reply from QEMU: the sidecar's own session is negotiated (QEMU sends events to it).
        #expect(try client.command(#"{"execute": "query-status", "id": 0}"#).hasSuffix(#""id": 0}"#))
        if how == "quit" {
            #expect(try client.command(#"{"execute": "quit", "id": 1}"#) == #"{"return": {}, "id": 1}"#)
        } else {
            kill(qemu.pid, SIGTERM)
        }
        let reason = how == "quit" ? "host-qmp-quit" : "host-signal"
        #expect(client.event(named: "SHUTDOWN")?.contains(#""reason": "\#(reason)""#) == true)
        #expect(client.isClosed())
        #expect(sidecar.exitStatus() == 0, "\(sidecar.log)")
        #expect(sidecar.log.contains("QEMU shut down; exiting") && sidecar.log.contains(reason))
    }

    /// A guest poweroff: QEMU sends SHUTDOWN (guest-shutdown) and closes; the mock plays it from a script.
    @Test func shutdownEventThenCloseIsANormalEnd() throws {
        let dir = makeTempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try #"""
        {"ordered": true, "fallback": "error", "steps": [
          {"execute": "system_powerdown", "return": {},
           "events": [{"after-ms": 10, "event": "SHUTDOWN", "data": {"guest": true, "reason": "guest-shutdown"}}]}
        ]}
        """#.write(toFile: "\(dir)/s.json", atomically: true, encoding: .utf8)
        let mock = try SpawnedProcess(
            productsDirectory + "/qmp-mock", ["--listen", "unix:\(dir)/vm.qmp", "--scenario", "\(dir)/s.json"])
        defer { mock.signal(SIGKILL) }
        let sidecar = try SidecarInstance(dir: dir, upstream: "\(dir)/vm.qmp", extra: ["--connect-timeout", "10"])
        let client = try TestClient.connecting(to: sidecar.listenPath)
        try client.negotiate()
        #expect(try client.command(#"{"execute": "system_powerdown", "id": 1}"#) == #"{"return": {}, "id": 1}"#)
        #expect(client.event(named: "SHUTDOWN")?.contains("guest-shutdown") == true)
        mock.terminate()
        #expect(sidecar.exitStatus() == 0, "\(sidecar.log)")
        #expect(sidecar.log.contains("guest-shutdown"))
    }

    /// QEMU as the sidecar's child (a wrapper that starts QEMU and then becomes the sidecar): its exit
    /// status, read through the pidfd, decides when QEMU sent no SHUTDOWN.
    @Test(arguments: [(signal: "TERM", status: Int32(0)), (signal: "crash", status: Int32(1))])
    func childQEMUsExitStatusDecides(signal: String, status: Int32) throws {
        let dir = makeTempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let mock = "'\(productsDirectory)/qmp-mock' --listen unix:\(dir)/vm.qmp --exit-on query-status"
        let sidecar = "'\(productsDirectory)/qmp-sidecar' --upstream unix:\(dir)/vm.qmp --listen unix:\(dir)/s.sock"
        let wrapper = try SpawnedProcess(
            "/bin/sh", ["-c", "\(mock) >/dev/null 2>&1 & echo $! > \(dir)/mock.pid; exec \(sidecar) 2>\(dir)/log"])
        defer { wrapper.signal(SIGKILL) }
        let client = try TestClient.connecting(to: "\(dir)/s.sock")
        try client.negotiate()
        let mockPID = try #require(Int32(String(contentsOfFile: "\(dir)/mock.pid", encoding: .utf8).trimmed))
        if signal == "TERM" {
            kill(mockPID, SIGTERM)
        } else {
            client.send(#"{"execute": "query-status"}"#)  // the mock exits with status 3
        }
        #expect(client.isClosed())
        let log = { (try? String(contentsOfFile: "\(dir)/log", encoding: .utf8)) ?? "" }
        #expect(waitFor { !wrapper.isRunning }, "\(log())")
        #expect(wrapper.waitUntilExit() == status, "\(log())")
        #expect(log().contains(signal == "TERM" ? "exit status 0" : "(exit status 3) without shutting down"))
    }
}

extension String {
    fileprivate var trimmed: String { trimmingCharacters(in: .whitespacesAndNewlines) }
}
