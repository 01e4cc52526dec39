import Glibc
import QMPTestKit
import QMPWire
import Testing

/// A running `qmp-sidecar` in front of a mock.
final class SidecarInstance: @unchecked Sendable {
    let socketPath: String
    let process: ChildProcess

    convenience init(upstream: MockInstance, extra: [String] = []) throws {
        try self.init(
            upstreamPath: upstream.socketPath, directory: upstream.directory,
            extra: ["--sysfs-root", upstream.fakeRoot + "/sys", "--dev-root", upstream.fakeRoot + "/dev"] + extra)
    }

    init(upstreamPath: String, directory: String, extra: [String] = []) throws {
        socketPath = directory + "/sidecar.sock"
        let args = ["--upstream", "unix:\(upstreamPath)", "--listen", "unix:\(socketPath)"]
        process = try ChildProcess(
            productsDirectory() + "/qmp-sidecar", args + extra, logPath: directory + "/sidecar.log")
    }

    deinit { process.terminate() }

    /// Connects, retrying while the sidecar has not created its socket yet (bounded).
    func connect(timeout: Double = 10) throws -> MockTestClient {
        let deadline = monotonicSeconds() + timeout
        while true {
            do {
                return try MockTestClient(path: socketPath)
            } catch {
                guard monotonicSeconds() < deadline else {
                    throw QMPTestKitError("qmp-sidecar not accepting on \(socketPath): \(error); log: \(process.log)")
                }
                var pfd = pollfd(fd: -1, events: 0, revents: 0)
                _ = poll(&pfd, 0, 10)
            }
        }
    }
}

/// The lines up to one containing `text`; nil, with an issue carrying the logs of `processes`, when
/// it does not come within `timeout`.
func awaitLines(
    until text: String, from client: MockTestClient, timeout: Double = 10, logs processes: [ChildProcess]
) -> [String]? {
    do {
        return try client.readUntil(text, timeout: timeout)
    } catch {
        Issue.record("no \(text): \(error); logs: \(processes.map(\.log).joined(separator: "\n---\n"))")
        return nil
    }
}

@Suite("qmp-mock process: scenarios, record and replay, through qmp-sidecar")
struct MockEndToEndTests {
    static let group7 = "7=0000:01:00.0,0000:01:00.1"
    static let coldPlugged = [
        "--device", "vfio-pci,host=0000:01:00.0,id=hostdev0", "--device", "vfio-pci,host=0000:01:00.1,id=hostdev1",
    ]

    static func write(_ text: String, to path: String) throws {
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw QMPTestKitError("cannot write \(path)") }
        defer { close(fd) }
        _ = Array(text.utf8).withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
    }

    @Test func scenarioFileDrivesTheMockAndExitStatusReportsUnmetSteps() throws {
        let directory = try makeTempDirectory()
        defer { removeTree(directory) }
        let path = directory + "/s.json"
        try Self.write(
            #"""
            {"ordered": true, "fallback": "error", "steps": [
              {"execute": "query-status", "return": {"running": true, "singlestep": false, "status": "running"}},
              {"execute": "device_del", "arguments": {"id": "d0"}, "return": {},
               "events": [{"after-ms": 20, "event": "DEVICE_DELETED", "data": {"device": "d0", "path": "/machine/peripheral/d0"}}]},
              {"execute": "quit", "return": {}}
            ]}
            """#, to: path)
        for complete in [false, true] {
            let mock = try MockInstance(["--scenario", path])
            let client = try mock.connect().negotiated()
            #expect(
                try client.execute(#"{"execute":"query-status","id":1}"#) == [
                    #"{"return": {"status": "running", "singlestep": false, "running": true}, "id": 1}"#
                ])
            #expect(
                try client.execute(#"{"execute":"device_del","arguments":{"id":"d0"},"id":2}"#) == [
                    #"{"return": {}, "id": 2}"#
                ])
            #expect(try client.readLine()?.contains(#""event": "DEVICE_DELETED", "data": {"device": "d0""#) == true)
            if complete {
                // The scripted quit is a canned reply: the process keeps running until SIGTERM.
                #expect(try client.execute(#"{"execute":"quit","id":3}"#) == [#"{"return": {}, "id": 3}"#])
            }
            #expect(mock.process.terminate() == (complete ? 0 : 1), "log: \(mock.process.log)")
        }
    }

    /// Records a session through the sidecar (--trace), then replays it with a new mock behind a new
    /// sidecar: the client sees the same replies and events, and the replay is complete.
    @Test func sidecarTraceReplaysThroughTheSidecar() throws {
        let recording = try MockInstance(Self.coldPlugged + ["--finalize-delay", "0.02"], fakeHost: [Self.group7])
        let tracePath = recording.directory + "/trace.jsonl"
        var sidecar: SidecarInstance? = try SidecarInstance(upstream: recording, extra: ["--trace", tracePath])
        let session = [
            #"{"execute":"query-version","id":"v"}"#,
            #"{"execute":"qom-get","arguments":{"path":"/machine/peripheral/hostdev1","property":"host"},"id":"h"}"#,
            #"{"execute":"device_del","arguments":{"id":"hostdev0"},"id":"d"}"#,
        ]
        func play(_ client: MockTestClient) throws -> [String] {
            var lines: [String] = []
            _ = try client.execute(#"{"execute":"qmp_capabilities"}"#)
            for command in session { lines += try client.execute(command) }
            lines += try client.readUntil("DEVICE_DELETED")
            return lines.map(MockDifferentialTests.normalized).filter { !$0.contains("GROUP_") }
        }
        let recorded = try play(try #require(sidecar).connect())
        #expect(sidecar?.process.terminate() == 0)
        sidecar = nil
        let trace = String(decoding: readAll(tracePath) ?? [], as: UTF8.self)
        #expect(trace.contains(#""dir": "client-to-qemu""#), "trace: \(trace)")

        let replaying = try MockInstance(["--replay", tracePath], fakeHost: [Self.group7])
        var replaySidecar: SidecarInstance? = try SidecarInstance(upstream: replaying)
        let replayed = try play(try #require(replaySidecar).connect())
        #expect(replayed == recorded)
        #expect(replaySidecar?.process.terminate() == 0)
        replaySidecar = nil
        #expect(replaying.process.terminate() == 0, "replay incomplete; log: \(replaying.process.log)")
    }

    /// The product's point: a two-device group hot-unplugged through qmp-sidecar against qmp-mock;
    /// GROUP_RELEASED only once both devices are gone and the mock closed the group node.
    @Test func twoDeviceGroupHotUnplugThroughTheSidecar() throws {
        let mock = try MockInstance(["--finalize-delay", "0.05"], fakeHost: [Self.group7])
        let node = mock.fakeRoot + "/dev/vfio/7"
        let sidecar = try SidecarInstance(upstream: mock, extra: ["--release-timeout", "5"])
        let client = try sidecar.connect()
        do {
            _ = try client.execute(#"{"execute":"qmp_capabilities"}"#)
        } catch {
            Issue.record(
                "negotiation: \(error); greeting \(client.greeting); mock log: \(mock.process.log); sidecar log: \(sidecar.process.log)"
            )
            return
        }
        for (id, bdf) in [("hostdev0", "0000:01:00.0"), ("hostdev1", "0000:01:00.1")] {
            #expect(
                try client.execute(
                    #"{"execute":"device_add","arguments":{"driver":"vfio-pci","host":"\#(bdf)","id":"\#(id)"},"id":"a"}"#
                )
                    == [#"{"return": {}, "id": "a"}"#])
        }
        let watcher = try CloseWatcher(node)

        _ = try client.execute(#"{"execute":"device_del","arguments":{"id":"hostdev0"}}"#)
        guard
            let first = awaitLines(
                until: "DEVICE_DELETED", from: client, timeout: 10, logs: [mock.process, sidecar.process])
        else { return }
        #expect(!first.contains { $0.contains("GROUP_RELEASED") }, "a device of the group is still in the guest")
        #expect(descriptorsOn(node, pid: mock.process.pid) == 1)

        _ = try client.execute(#"{"execute":"device_del","arguments":{"id":"hostdev1"}}"#)
        guard let rest = awaitLines(until: "GROUP_RELEASED", from: client, timeout: 10, logs: [sidecar.process]) else {
            return
        }
        #expect(rest.contains { $0.contains(#""device": "hostdev1""#) })
        let released = try #require(rest.last)
        let event = try JSONValue(parsing: Array(released.utf8))
        #expect(event["data"]?["group"]?.int64Value == 7)
        #expect(event["data"]?["devices"] == .array([.string("hostdev0"), .string("hostdev1")]))
        #expect(watcher.hasPendingClose, "the group node was closed before GROUP_RELEASED")
        #expect(descriptorsOn(node, pid: mock.process.pid) == 0)
    }

    /// A client that unplugs cold-plugged devices right after negotiating, while the sidecar's
    /// discovery (slowed down here) is still asking QEMU about them: its commands wait for the
    /// discovery, so the group is tracked and released.
    @Test func deviceDelRightAfterNegotiationStillGetsGroupReleased() throws {
        let mock = try MockInstance(
            Self.coldPlugged + ["--finalize-delay", "0.02", "--slow-reply", "qom-get=0.05"], fakeHost: [Self.group7])
        let sidecar = try SidecarInstance(upstream: mock, extra: ["--release-timeout", "5"])
        let client = try sidecar.connect().negotiated()
        #expect(
            try client.execute(#"{"execute":"device_del","arguments":{"id":"hostdev0"},"id":0}"#).last
                == #"{"return": {}, "id": 0}"#)
        #expect(
            try client.execute(#"{"execute":"device_del","arguments":{"id":"hostdev1"},"id":1}"#).last
                == #"{"return": {}, "id": 1}"#)
        guard let lines = awaitLines(until: "GROUP_RELEASED", from: client, timeout: 10, logs: [sidecar.process]) else {
            return
        }
        let released = try JSONValue(parsing: Array(try #require(lines.last).utf8))
        #expect(released["data"]?["group"]?.int64Value == 7)
        #expect(released["data"]?["devices"] == .array([.string("hostdev0"), .string("hostdev1")]))
    }

    /// `--hold-device-deleted` and SIGTERM: the withheld `DEVICE_DELETED` reaches the client before
    /// the sidecar disconnects it, not dropped.
    @Test func heldDeviceDeletedIsFlushedOnSIGTERM() throws {
        let mock = try MockInstance(Self.coldPlugged + ["--finalize-delay", "0.02"], fakeHost: [Self.group7])
        let sidecar = try SidecarInstance(upstream: mock, extra: ["--hold-device-deleted"])
        let client = try sidecar.connect().negotiated()
        _ = try client.execute(#"{"execute":"device_del","arguments":{"id":"hostdev0"}}"#)
        // Held: hostdev1 keeps group 7 in the guest. Wait until the sidecar has seen the event.
        let deadline = monotonicSeconds() + 10
        var seen = false
        while !seen && monotonicSeconds() < deadline {
            let reply = try client.execute(#"{"execute":"__org.qmp-sidecar_query-vfio-groups"}"#)
            #expect(!reply.contains { $0.contains("DEVICE_DELETED") }, "held, not forwarded")
            seen = reply.last?.contains(#""deleted": ["hostdev0"]"#) == true
            if !seen {
                var pfd = pollfd(fd: -1, events: 0, revents: 0)
                _ = poll(&pfd, 0, 10)
            }
        }
        #expect(seen, "the sidecar never saw DEVICE_DELETED of hostdev0: \(sidecar.process.log)")
        #expect(sidecar.process.terminate() == 0, "log: \(sidecar.process.log)")
        var rest: [String] = []
        while let line = try client.readLine(timeout: 5) { rest.append(line) }
        #expect(
            rest.contains { $0.contains(#""event": "DEVICE_DELETED""#) && $0.contains(#""device": "hostdev0""#) },
            "got \(rest); log: \(sidecar.process.log)")
    }

    /// A QEMU that does not answer discovery in time does not wedge clients: after
    /// `--discovery-timeout` their commands go on, with a warning naming the reason. (The mock, like
    /// QEMU, runs commands in order, so the reply itself still waits for the slow `qom-list`s.)
    @Test func stalledDiscoveryOpensTheGateAfterItsTimeout() throws {
        let mock = try MockInstance(Self.coldPlugged + ["--slow-reply", "qom-list=0.7"], fakeHost: [Self.group7])
        let sidecar = try SidecarInstance(upstream: mock, extra: ["--discovery-timeout", "0.2"])
        let client = try sidecar.connect().negotiated()
        try client.send(#"{"execute":"query-version","id":"v"}"#)
        let deadline = monotonicSeconds() + 1.2
        var warned = false
        while !warned && monotonicSeconds() < deadline {
            warned = sidecar.process.log.contains("cold-plug discovery not finished in time")
            var pfd = pollfd(fd: -1, events: 0, revents: 0)
            _ = poll(&pfd, 0, 10)
        }
        #expect(warned, "the gate opened on its timeout, before discovery ended: \(sidecar.process.log)")
        let reply = try client.readUntil(#""id": "v""#, timeout: 5)
        #expect(reply.last?.contains(#""return""#) == true, "\(reply)")
    }

    /// nic0 (cold-plugged, group 8) unplugged through a sidecar with `fault` injected into the mock:
    /// the mock and the lines up to `text` (nil, with an issue, when it never came).
    static func unplugNic0(fault: [String], releaseTimeout: String, until text: String) throws -> (
        mock: MockInstance, lines: [String]?
    ) {
        let mock = try MockInstance(
            ["--device", "vfio-pci,host=0000:02:00.0,id=nic0"] + fault, fakeHost: ["8=0000:02:00.0"])
        let sidecar = try SidecarInstance(upstream: mock, extra: ["--release-timeout", releaseTimeout])
        let client = try sidecar.connect().negotiated()
        _ = try client.execute(#"{"execute":"device_del","arguments":{"id":"nic0"}}"#)
        return (mock, awaitLines(until: text, from: client, logs: [sidecar.process, mock.process]))
    }

    /// A leaked group fd gives GROUP_RELEASE_TIMEOUT through the sidecar, naming the mock as holder.
    @Test func leakedGroupTimesOutNamingTheMock() throws {
        let (mock, lines) = try Self.unplugNic0(
            fault: ["--leak-group", "8"], releaseTimeout: "0.3", until: "GROUP_RELEASE_TIMEOUT")
        let timeout = try #require(lines?.last)
        #expect(timeout.contains(#""pid": \#(mock.process.pid)"#), "names the mock as holder: \(timeout)")
    }

    /// A second holder delays GROUP_RELEASED until it lets go.
    @Test func secondHolderDelaysTheRelease() throws {
        let (_, lines) = try Self.unplugNic0(
            fault: ["--second-holder", "8:0.3"], releaseTimeout: "10", until: "GROUP_RELEASED")
        let released = try JSONValue(parsing: Array(try #require(lines?.last).utf8))
        let waited = try #require(released["data"]?["waited-ms"]?.int64Value)
        #expect(waited >= 250, "released only after the second holder let go (\(waited) ms)")
    }

    /// iommufd backend: no group fd, one cdev fd per device; the group is released once both are closed.
    @Test func iommufdDevicesThroughTheSidecar() throws {
        let mock = try MockInstance(["--finalize-delay", "0.02"], fakeHost: [Self.group7])
        let sidecar = try SidecarInstance(upstream: mock, extra: ["--release-timeout", "5"])
        let client = try sidecar.connect().negotiated()
        for (id, bdf) in [("hostdev0", "0000:01:00.0"), ("hostdev1", "0000:01:00.1")] {
            let add =
                #"{"execute":"device_add","arguments":{"driver":"vfio-pci","host":"\#(bdf)","id":"\#(id)","iommufd":"iommufd0"}}"#
            #expect(try client.execute(add) == [#"{"return": {}}"#])
        }
        #expect(descriptorsOn(mock.fakeRoot + "/dev/vfio/7", pid: mock.process.pid) == 0)
        _ = try client.execute(#"{"execute":"device_del","arguments":{"id":"hostdev0"}}"#)
        let first = try client.readUntil("DEVICE_DELETED")
        #expect(!first.contains { $0.contains("GROUP_RELEASED") })
        _ = try client.execute(#"{"execute":"device_del","arguments":{"id":"hostdev1"}}"#)
        guard let rest = awaitLines(until: "GROUP_RELEASED", from: client, timeout: 10, logs: [sidecar.process]) else {
            return
        }
        #expect(rest.last?.contains(#""group": 7"#) == true)
        let cdevs = mock.openFiles().values.filter { $0.contains("/vfio/devices/") }
        #expect(cdevs.isEmpty)
    }

    /// "A session captured on a real host becomes a test": record real QEMU 7.2 through the sidecar,
    /// replay the recording with qmp-mock behind a sidecar; the client sees the same bytes.
    @Test(.enabled(if: QEMULauncher.shouldRun, "QEMU 7.2 not installed (set QMP_SIDECAR_REQUIRE_QEMU to fail instead)"))
    func realQEMUSessionReplays() throws {
        let qemu = try QEMULauncher()
        defer { qemu.terminate() }
        let directory = try makeTempDirectory()
        defer { removeTree(directory) }
        let tracePath = directory + "/real.jsonl"
        let session = [
            #"{"execute":"query-status","id":1}"#,
            #"{"execute":"device_add","arguments":{"driver":"usb-kbd","id":"kb0"},"id":2}"#,
            #"{"execute":"qom-list","arguments":{"path":"/machine/peripheral"},"id":3}"#,
            #"{"execute":"query-pci","id":4}"#,
            #"{"execute":"device_del","arguments":{"id":"kb0"},"id":5}"#,
        ]
        func play(_ client: MockTestClient) throws -> [String] {
            var lines = [client.greeting]
            lines += try client.execute(#"{"execute":"qmp_capabilities"}"#)
            for command in session { lines += try client.execute(command) }
            if !lines.contains(where: { $0.contains("DEVICE_DELETED") }) {
                lines += try client.readUntil("DEVICE_DELETED")
            }
            return lines.map(MockDifferentialTests.normalized).sorted()
        }
        var recorder: SidecarInstance? = try SidecarInstance(
            upstreamPath: qemu.socketPath, directory: directory, extra: ["--trace", tracePath])
        let recorded = try play(try #require(recorder).connect())
        #expect(recorder?.process.terminate() == 0)
        recorder = nil

        let replaying = try MockInstance(["--replay", tracePath])
        var replaySidecar: SidecarInstance? = try SidecarInstance(
            upstreamPath: replaying.socketPath, directory: replaying.directory)
        let replayed = try play(try #require(replaySidecar).connect())
        #expect(replayed == recorded)
        #expect(recorded.contains { $0.contains(#""return": [{"bus": 0"#) }, "query-pci came from QEMU's recording")
        #expect(replaySidecar?.process.terminate() == 0)
        replaySidecar = nil
        #expect(replaying.process.terminate() == 0, "replay incomplete; log: \(replaying.process.log)")
    }

    /// A mediated device given by sysfsdev (no PCI address): its group is released through the sidecar.
    @Test func mdevBySysfsdevThroughTheSidecar() throws {
        let uuid = "c0ffee00-0000-4000-8000-000000000001"
        let mock = try MockInstance([], fakeHost: ["9=\(uuid)"])
        let sidecar = try SidecarInstance(upstream: mock, extra: ["--release-timeout", "5"])
        let client = try sidecar.connect().negotiated()
        let add =
            #"{"execute":"device_add","arguments":{"driver":"vfio-pci","sysfsdev":"/sys/bus/mdev/devices/\#(uuid)","id":"vgpu0"}}"#
        #expect(try client.execute(add) == [#"{"return": {}}"#])
        #expect(descriptorsOn(mock.fakeRoot + "/dev/vfio/9", pid: mock.process.pid) == 1)
        _ = try client.execute(#"{"execute":"device_del","arguments":{"id":"vgpu0"}}"#)
        guard let lines = awaitLines(until: "GROUP_RELEASED", from: client, timeout: 10, logs: [sidecar.process]) else {
            return
        }
        #expect(lines.last?.contains(#""group": 9"#) == true)
    }
}

/// The README's main command must keep working: run examples/demo/run-demo.sh on the built binaries.
@Suite("Demo script")
struct DemoScriptTests {
    @Test(arguments: [[String](), ["--hotplug", "--event-order", "before-close"], ["--fault", "leak"]])
    func demoRunsToTheEnd(options: [String]) throws {
        let directory = try makeTempDirectory()
        defer { removeTree(directory) }
        let script = packageRoot() + "/examples/demo/run-demo.sh"
        let process = try ChildProcess(
            "/bin/bash", [script, productsDirectory()] + options, logPath: directory + "/demo.err")
        let last = try process.waitForLine(containing: "ok: ", timeout: 60)
        #expect(process.waitForExit() == 0, "stderr: \(process.log)")
        #expect(last.contains(options.contains("leak") ? "GROUP_RELEASE_TIMEOUT" : "GROUP_RELEASED"))
    }
}
