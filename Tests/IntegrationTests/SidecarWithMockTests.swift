import Foundation
import QMPTestKit
import Testing

/// qmp-sidecar in front of qmp-mock (no QEMU needed): the VFIO hooks as wired by the sidecar.
@Suite struct SidecarWithMockTests {
    /// Starts qmp-mock with a two-device group 7 whose fake sysfs/dev tree is built under `dir/host`.
    func startMock(dir: String, extra: [String] = []) throws -> (SpawnedProcess, sysfs: String, dev: String) {
        let arguments =
            extra + [
                "--listen", "unix:\(dir)/vm.qmp", "--fake-host", "7=0000:01:00.0,0000:01:00.1", "--fake-host-root",
                "\(dir)/host", "--device", "vfio-pci,host=0000:01:00.0,id=hostdev0", "--device",
                "vfio-pci,host=0000:01:00.1,id=hostdev1", "--finalize-delay", "0.05",
            ]
        let mock = try SpawnedProcess(productsDirectory + "/qmp-mock", arguments)
        guard waitFor({ FileManager.default.fileExists(atPath: "\(dir)/vm.qmp") }) else {
            mock.terminate()
            throw TestFailure("qmp-mock did not listen at \(dir)/vm.qmp")
        }
        return (mock, "\(dir)/host/sys", "\(dir)/host/dev")
    }

    /// Stops qmp-mock with SIGTERM, then SIGKILL if it is still running after 5 s.
    private func stopMock(_ mock: SpawnedProcess) {
        mock.terminate()
        if !waitFor(seconds: 5, { !mock.isRunning }) { kill(mock.processIdentifier, SIGKILL) }
        mock.waitUntilExit()
    }

    @Test func holdModeForwardsDeviceDeletedRightBeforeGroupReleased() throws {
        let dir = makeTempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let (mock, sysfs, dev) = try startMock(dir: dir)
        defer { stopMock(mock) }
        let sidecar = try SidecarInstance(
            dir: dir, upstream: "\(dir)/vm.qmp",
            extra: [
                "--sysfs-root", sysfs, "--dev-root", dev, "--hold-device-deleted", "--event-prefix", "__com.example_",
            ])
        let a = try TestClient.connecting(to: sidecar.listenPath)
        let b = try TestClient.connecting(to: sidecar.listenPath)
        try a.negotiate()
        try b.negotiate()
        #expect(
            try a.command(#"{"execute": "device_del", "arguments": {"id": "hostdev0"}, "id": 1}"#)
                == #"{"return": {}, "id": 1}"#)
        // Held: nothing arrives after the first device (the group is still attached).
        #expect(a.readLine(timeout: 0.5) == nil)
        #expect(
            try a.command(#"{"execute": "device_del", "arguments": {"id": "hostdev1"}, "id": 2}"#)
                == #"{"return": {}, "id": 2}"#)
        for client in [a, b] {
            var names: [String] = []
            while names.last != "__com.example_GROUP_RELEASED", let line = client.readLine() {
                names.append(
                    line.components(separatedBy: #""event": ""#).last?.prefix { $0 != "\"" }.description ?? line)
            }
            #expect(names == ["DEVICE_DELETED", "DEVICE_DELETED", "__com.example_GROUP_RELEASED"], "\(sidecar.log)")
        }
        sidecar.terminate()
    }

    /// The example's whole dry run: what it prints and the sysfs writes it would make, only after
    /// GROUP_RELEASED — from the sidecar, or (native) from a QEMU that has the event.
    @Test(.enabled(if: Requirements.pythonQMPUsable, "needs python3 with qemu.qmp"), arguments: [false, true])
    func unplugAndRebindExampleWaitsForGroupReleased(native: Bool) throws {
        let dir = makeTempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let (mock, sysfs, dev) = try startMock(dir: dir, extra: native ? ["--native-group-events"] : [])
        defer { stopMock(mock) }
        let sidecar = try SidecarInstance(
            dir: dir, upstream: "\(dir)/vm.qmp", extra: ["--sysfs-root", sysfs, "--dev-root", dev])
        defer { sidecar.terminate() }
        let example = (pythonDirectory as NSString).deletingLastPathComponent + "/../../examples/unplug-and-rebind.py"
        let (status, text) = try SpawnedProcess.run([
            "python3", example, sidecar.listenPath, "hostdev0", "hostdev1", "--driver", "e1000e", "--sysfs-root",
            sysfs, "--dry-run", "--timeout", "20",
        ])
        #expect(status == 0, "\(text)")
        let devices = "\(sysfs)/bus/pci/devices"
        #expect(
            text.replacing(/after \d+ ms/, with: "after N ms") == """
                unplugging hostdev0, hostdev1 (IOMMU groups [7])
                DEVICE_DELETED hostdev0 (not yet safe to rebind)
                DEVICE_DELETED hostdev1 (not yet safe to rebind)
                GROUP_RELEASED group 7 devices ['hostdev0', 'hostdev1'] after N ms
                would write 'e1000e' to \(devices)/0000:01:00.0/driver_override
                would write '0000:01:00.0' to \(devices)/0000:01:00.0/driver/unbind
                would write '0000:01:00.0' to \(sysfs)/bus/pci/drivers_probe
                0000:01:00.0: rebound to e1000e (dry run)
                would write 'e1000e' to \(devices)/0000:01:00.1/driver_override
                would write '0000:01:00.1' to \(devices)/0000:01:00.1/driver/unbind
                would write '0000:01:00.1' to \(sysfs)/bus/pci/drivers_probe
                0000:01:00.1: rebound to e1000e (dry run)

                """)
    }
}
