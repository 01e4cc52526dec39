import Foundation
import Logging
import QMPRuntime
import QMPSidecar
import QMPTestKit
import ServiceLifecycle
import Testing

/// `SidecarService` embedded in an application's `ServiceGroup` (the executable runs it on its main
/// thread instead; the other integration tests cover that path).
@Suite(.enabled(if: Requirements.qemuUsable))
struct ServiceLifecycleTests {
    @Test func sidecarServiceInAServiceGroupServesAndShutsDownGracefully() async throws {
        let qemu = try QEMULauncher()
        defer { qemu.terminate() }
        let dir = makeTempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let listenPath = "\(dir)/sidecar.qmp"
        let logger = Logger(label: "test.service-lifecycle")
        let service = SidecarService(
            configuration: SidecarConfiguration(
                upstream: .unix(path: qemu.socketPath), listeners: [.unix(path: listenPath, mode: 0o600)], vfio: nil),
            logger: logger)
        let group = ServiceGroup(
            configuration: .init(
                services: [.init(service: service, successTerminationBehavior: .gracefullyShutdownGroup)],
                logger: logger))
        let running = Task { try await group.run() }

        // Wait without blocking a thread of the cooperative pool: the group's task needs one to start.
        // Other suites block the pool's threads (2 on a 2-core machine) with synchronous socket I/O
        // while they run, so under the full parallel run the group may start tens of seconds late.
        let deadline = ContinuousClock.now + .seconds(180)
        while !FileManager.default.fileExists(atPath: listenPath) && ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(5))
        }
        try #require(FileManager.default.fileExists(atPath: listenPath))
        let client = try QMPTestClient(path: listenPath)
        #expect(String(decoding: client.greeting, as: UTF8.self).hasPrefix(#"{"QMP": {"version": "#))
        try client.negotiate()
        try client.send(#"{"execute": "query-status", "id": "s1"}"#)
        let reply = String(decoding: try client.readReply(), as: UTF8.self)
        #expect(reply.contains(#""status": "prelaunch""#) && reply.hasSuffix(#""id": "s1"}"#))

        await group.triggerGracefulShutdown()
        try await running.value
        #expect(!FileManager.default.fileExists(atPath: listenPath), "the sidecar removes its socket file on exit")
        #expect(throws: (any Error).self) { _ = try client.readLine() }
    }
}
