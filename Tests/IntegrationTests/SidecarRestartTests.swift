import Foundation
import QMPTestKit
import Testing

/// qmp-sidecar killed (SIGKILL: no state saved) while a group is detaching, and started again in
/// front of the same qmp-mock: it rediscovers the device and the group, and still sends the event.
@Suite struct SidecarRestartTests {
    @Test func aSidecarStartedWhileAGroupIsDetachingStillReleasesIt() throws {
        let dir = makeTempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        // QEMU finalizes (closes the group, then DEVICE_DELETED) 3 s after device_del.
        let mock = try SpawnedProcess(
            productsDirectory + "/qmp-mock",
            [
                "--listen", "unix:\(dir)/vm.qmp", "--fake-host", "7=0000:01:00.0", "--fake-host-root", "\(dir)/host",
                "--device", "vfio-pci,host=0000:01:00.0,id=hostdev0", "--finalize-delay", "3",
            ])
        defer {
            mock.signal(SIGKILL)
            mock.waitUntilExit()
        }
        guard waitFor({ FileManager.default.fileExists(atPath: "\(dir)/vm.qmp") }) else {
            throw TestFailure("qmp-mock did not listen at \(dir)/vm.qmp")
        }
        let roots = ["--sysfs-root", "\(dir)/host/sys", "--dev-root", "\(dir)/host/dev"]
        let first = try SidecarInstance(
            dir: dir, upstream: "\(dir)/vm.qmp", extra: roots,
            listen: "\(dir)/first.sock")
        let client = try TestClient.connecting(to: first.listenPath)
        try client.negotiate()
        #expect(
            try client.command(#"{"execute": "device_del", "arguments": {"id": "hostdev0"}, "id": 1}"#)
                == #"{"return": {}, "id": 1}"#)
        first.process.signal(SIGKILL)
        first.process.waitUntilExit()

        let second = try SidecarInstance(
            dir: dir, upstream: "\(dir)/vm.qmp", extra: roots, listen: "\(dir)/second.sock")
        defer { second.terminate() }
        let watcher = try TestClient.connecting(to: second.listenPath)
        try watcher.negotiate()
        let released = try #require(watcher.event(named: "GROUP_RELEASED", timeout: 15), "\(second.log)")
        #expect(released.contains(#""group": 7"#))
        #expect(released.contains(#""devices": ["hostdev0"]"#))
        #expect(second.log.contains("VFIO device tracked"), "the restarted sidecar rediscovered the device")
    }
}
