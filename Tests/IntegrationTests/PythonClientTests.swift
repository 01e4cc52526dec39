import Foundation
import QMPTestKit
import Testing

/// The reference client through the sidecar: python `qemu.qmp` running the same
/// scenario as the Swift tests, including `send_fd_scm`, and a `qmp-shell` session.
@Suite(.enabled(if: Requirements.pythonQMPUsable, "needs python3 with qemu.qmp and QEMU"))
struct PythonClientTests {
    /// Runs `arguments` under /usr/bin/env with `input` on stdin; returns (status, stdout+stderr).
    func run(_ arguments: [String], input: String = "") throws -> (Int32, String) {
        try SpawnedProcess.run(arguments, input: input)
    }

    @Test func qemuQMPScenarioWithSendFDSCM() throws {
        let vm = try ProxiedQEMU()
        let (status, output) = try run(
            ["python3", pythonDirectory + "/scenario.py", vm.sidecarPath, String(vm.qemu.pid)])
        #expect(status == 0, "\(output)\n--- sidecar log ---\n\(vm.sidecar.log)")
        #expect(output.contains("scenario ok"))
    }

    @Test func qmpShellSession() throws {
        let vm = try ProxiedQEMU()
        let (status, output) = try run(
            ["python3", "-m", "qemu.qmp.qmp_shell", vm.sidecarPath],
            input: "query-status\ndevice_add driver=usb-kbd id=sh0\nquery-name\n")
        #expect(status == 0, "\(output)")
        #expect(output.contains("Connected to QEMU 7.2"))
        #expect(output.contains(#"{"return": {"status": "prelaunch", "singlestep": false, "running": false}}"#))
        #expect(output.components(separatedBy: #"{"return": {}}"#).count == 3, "device_add and query-name: \(output)")
    }
}
