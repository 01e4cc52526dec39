import Foundation
import QMPRuntime
import QMPTestKit
import Testing

/// Rows of the fault matrix (RELIABILITY.md) on QEMU's side of the sidecar: a 64 MiB reply, QEMU
/// restarted under `--reconnect` while a group is detaching, an inotify queue overflow. Real
/// qmp-sidecar and qmp-mock processes, real sockets; each row checks the well-behaved client's
/// replies and events, the sidecar's descriptors and memory, and its log.
@Suite struct FaultMatrixQEMUSideTests {
    /// qmp-mock with group 7 (one device, `hostdev0`) on a fake host, and the arguments a sidecar
    /// needs to find that host.
    final class Host {
        let dir = makeTempDir()
        var mock: SpawnedProcess?
        var roots: [String] { ["--sysfs-root", "\(dir)/host/sys", "--dev-root", "\(dir)/host/dev"] }
        var groupNode: String { "\(dir)/host/dev/vfio/7" }

        /// Starts (or restarts, on the tree a killed one left) qmp-mock on `dir/vm.qmp`.
        func startMock(_ extra: [String] = [], within seconds: Double = 10) throws {
            try? FileManager.default.removeItem(atPath: "\(dir)/vm.qmp")
            mock = try SpawnedProcess(
                productsDirectory + "/qmp-mock",
                [
                    "--listen", "unix:\(dir)/vm.qmp", "--fake-host", "7=0000:01:00.0", "--fake-host-root",
                    "\(dir)/host", "--device", "vfio-pci,host=0000:01:00.0,id=hostdev0",
                ] + extra)
            let dir = self.dir
            guard waitFor(seconds: seconds, { FileManager.default.fileExists(atPath: "\(dir)/vm.qmp") }) else {
                throw TestFailure("qmp-mock did not listen at \(dir)/vm.qmp")
            }
        }

        func killMock() {
            mock?.signal(SIGKILL)
            mock?.waitUntilExit()
            mock = nil
        }

        deinit {
            killMock()
            try? FileManager.default.removeItem(atPath: dir)
        }
    }

    /// A 64 MiB reply (no bound on QEMU's output; the sidecar's output bound is for clients that stop
    /// reading, not for one reply larger than it) reaches the client whole and byte for byte, while
    /// another client's commands are answered in order.
    @Test func aSixtyFourMiBReplyEndToEnd() throws {
        let host = Host()
        let size = 64 << 20
        let scenario = "\(host.dir)/big.json"
        let value = String(repeating: "a", count: size)
        try #"{"ordered": false, "steps": [{"execute": "x-big", "return": "\#(value)"}]}"#
            .write(toFile: scenario, atomically: false, encoding: .utf8)
        try host.startMock(["--scenario", scenario], within: 60)  // it parses a 64 MiB file first
        let sidecar = try SidecarInstance(dir: host.dir, upstream: "\(host.dir)/vm.qmp")
        defer { sidecar.terminate() }
        let other = try TestClient.connecting(to: sidecar.listenPath)
        try other.negotiate()
        // A round trip through QEMU: the sidecar's own session (and its pidfd on QEMU) is up.
        #expect(try other.command(#"{"execute": "query-status", "id": "up"}"#).hasSuffix(#""id": "up"}"#))
        let baseline = ProcessProbe.openDescriptors(of: sidecar.pid)
        let big = try TestClient.connecting(to: sidecar.listenPath)
        try big.negotiate()
        big.send(#"{"execute": "x-big", "id": "big"}"#)
        // Meanwhile the other client is served, in its own order.
        for index in 0..<20 {
            #expect(try other.command(#"{"execute": "query-status", "id": \#(index)}"#).hasSuffix(#""id": \#(index)}"#))
        }
        let line = try readOneLine(big.fd, atLeast: size)
        let expected =
            Array(#"{"return": ""#.utf8) + Array(repeating: UInt8(ascii: "a"), count: size)
            + Array(#"", "id": "big"}"#.utf8) + [0x0D, 0x0A]
        #expect(line.count == expected.count)
        #expect(line == expected, "the reply differs from QEMU's bytes")
        #expect(try big.command(#"{"execute": "query-status", "id": "after"}"#).hasSuffix(#""id": "after"}"#))
        // Bounded: the reply is held about twice (QEMU's side and the client's), not once per copy.
        let peak = ProcessProbe.peakResidentKiB(of: sidecar.pid) ?? .max
        #expect(peak < 3 * (size >> 10), "sidecar peak RSS \(peak) KiB for a \(size >> 20) MiB reply")
        _ = consume big
        #expect(
            waitFor { ProcessProbe.openDescriptors(of: sidecar.pid) == baseline },
            "descriptors leaked: \(ProcessProbe.openDescriptors(of: sidecar.pid) ?? -1), were \(baseline ?? -1)")
        #expect(!sidecar.log.contains("output bound exceeded"), "\(sidecar.log)")
    }

    /// QEMU killed while a group is detaching, a new QEMU started on the same monitor socket and host:
    /// the sidecar (`--reconnect`) forgets the dead QEMU's groups, rediscovers the new one's devices and
    /// releases the group correctly when it is unplugged there.
    @Test func qemuRestartedUnderReconnectWhileAGroupIsDetaching() throws {
        let host = Host()
        try host.startMock(["--finalize-delay", "3"])
        let sidecar = try SidecarInstance(
            dir: host.dir, upstream: "\(host.dir)/vm.qmp", extra: ["--reconnect", "--log-level", "info"] + host.roots)
        defer { sidecar.terminate() }
        #expect(waitFor { sidecar.log.contains("VFIO device tracked") })
        // The group node's watch (its inotify instance) comes right after the log line, and a holder
        // scan briefly opens the mock's /proc/PID/fd (another may start at any time): the baseline is a
        // snapshot with the one and without the other.
        var baseline: [String: Int] = [:]
        #expect(
            waitFor {
                baseline = descriptorKinds(of: sidecar.pid)
                return isSettled(baseline)
            }, "\(baseline)")
        let first = try TestClient.connecting(to: sidecar.listenPath)
        try first.negotiate()
        #expect(
            try first.command(#"{"execute": "device_del", "arguments": {"id": "hostdev0"}, "id": 1}"#)
                == #"{"return": {}, "id": 1}"#)
        host.killMock()  // mid-detach: its finalize (close, DEVICE_DELETED) never comes
        #expect(first.isClosed(within: 5), "clients of the dead QEMU are disconnected")
        #expect(waitFor { sidecar.log.contains("waiting for a new QEMU (--reconnect)") }, "\(sidecar.log)")
        #expect(waitFor { sidecar.log.contains("QEMU exited") }, "\(sidecar.log)")

        try host.startMock()
        let second = try TestClient(path: sidecar.listenPath, timeout: 10)
        try second.negotiate()
        let groups = try second.command(#"{"execute": "__org.qmp-sidecar_query-vfio-groups", "id": "q"}"#)
        #expect(groups.contains(#""state": "attached""#), "the new QEMU's group, not the dead one's: \(groups)")
        #expect(groups.contains(#""deleted": []"#), "\(groups)")
        #expect(
            try second.command(#"{"execute": "device_del", "arguments": {"id": "hostdev0"}, "id": 2}"#)
                == #"{"return": {}, "id": 2}"#)
        let released = try #require(second.event(named: "GROUP_RELEASED"), "\(sidecar.log)")
        #expect(released.contains(#""group": 7"#) && released.contains(#""devices": ["hostdev0"]"#))
        #expect(second.events.contains { $0.contains(#""event": "DEVICE_DELETED""#) }, "DEVICE_DELETED came first")
        _ = consume second
        // Nothing of the dead QEMU or of the clients is left: the same descriptors, kind by kind, as
        // before the first client (one upstream socket, one pidfd on the QEMU of the day).
        #expect(
            waitFor { descriptorKinds(of: sidecar.pid) == baseline },
            "descriptors: \(descriptorKinds(of: sidecar.pid)), were \(baseline)")
    }

    /// The group watch is up and no holder scan is under way (it holds a `/proc/PID/fd` directory open).
    private func isSettled(_ kinds: [String: Int]) -> Bool {
        kinds["anon_inode:inotify"] == 1 && !kinds.keys.contains { $0.hasPrefix("/proc/") }
    }

    /// A process's descriptors by kind: `socket`, `anon_inode:[pidfd]`, `pipe`, or the file's path.
    private func descriptorKinds(of pid: pid_t) -> [String: Int] {
        var kinds: [String: Int] = [:]
        for name in DirectoryEntries.names(in: "/proc/\(pid)/fd") ?? [] {
            var target = [CChar](repeating: 0, count: 4096)
            let length = readlink("/proc/\(pid)/fd/\(name)", &target, target.count - 1)
            guard length > 0 else { continue }
            let text = String(decoding: target[0..<length].map { UInt8(bitPattern: $0) }, as: UTF8.self)
            let kind = text.hasPrefix("socket:") ? "socket" : text.hasPrefix("pipe:") ? "pipe" : text
            kinds[kind, default: 0] += 1
        }
        return kinds
    }

    /// The sidecar's inotify queue overflows (a queue of 16 events, the sidecar stopped while 200 opens
    /// and closes of the group node happen): counts are unknown, so the bounded fallback decides — a
    /// copy held by another process blocks the release, its close lets `GROUP_RELEASED` through.
    @Test func anInotifyQueueOverflowEndToEnd() throws {
        let host = Host()
        try host.startMock()
        // The queue bound is taken at inotify_init: lower it for the sidecar's start only.
        let sysctl = "/proc/sys/fs/inotify/max_queued_events"
        let saved = try String(contentsOfFile: sysctl, encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
        try "16".write(toFile: sysctl, atomically: false, encoding: .utf8)
        let sidecar: SidecarInstance
        do {
            defer { try? saved.write(toFile: sysctl, atomically: false, encoding: .utf8) }
            sidecar = try SidecarInstance(
                dir: host.dir, upstream: "\(host.dir)/vm.qmp", extra: ["--log-level", "info"] + host.roots)
            #expect(waitFor { sidecar.log.contains("VFIO device tracked") }, "\(sidecar.log)")
            // The inotify instance is made with the first watch, just after that line: the lowered
            // bound must still be in place then.
            #expect(waitFor { descriptorKinds(of: sidecar.pid)["anon_inode:inotify"] == 1 }, "\(sidecar.log)")
        }
        defer { sidecar.terminate() }
        #expect(
            try String(contentsOfFile: sysctl, encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines) == saved
        )
        let client = try TestClient.connecting(to: sidecar.listenPath)
        try client.negotiate()

        sidecar.process.signal(SIGSTOP)
        for _ in 0..<200 { close(open(host.groupNode, O_RDONLY | O_CLOEXEC)) }
        let copy = open(host.groupNode, O_RDONLY | O_CLOEXEC)  // another process's hold on the group
        try #require(copy >= 0)
        sidecar.process.signal(SIGCONT)
        #expect(waitFor { sidecar.log.contains("inotify queue overflowed") }, "\(sidecar.log)")

        #expect(
            try client.command(#"{"execute": "device_del", "arguments": {"id": "hostdev0"}, "id": 1}"#)
                == #"{"return": {}, "id": 1}"#)
        #expect(client.event(named: "DEVICE_DELETED") != nil)
        #expect(client.event(named: "GROUP_RELEASED", timeout: 1) == nil, "released while this test holds the node")
        close(copy)
        let released = try #require(client.event(named: "GROUP_RELEASED"), "\(sidecar.log)")
        #expect(released.contains(#""group": 7"#))
        #expect(try client.command(#"{"execute": "query-status", "id": 2}"#).hasSuffix(#""id": 2}"#))
    }

    /// Reads from `fd` until a line of at least `atLeast` bytes ends (only the newest bytes are searched).
    private func readOneLine(_ fd: Int32, atLeast: Int) throws -> [UInt8] {
        var line: [UInt8] = []
        line.reserveCapacity(atLeast + 64)
        var chunk = [UInt8](repeating: 0, count: 1 << 20)
        while !(line.count > atLeast && line.last == 0x0A) {
            let count = recv(fd, &chunk, chunk.count, 0)
            guard count > 0 else { throw TestFailure("connection closed after \(line.count) bytes") }
            line += chunk[0..<count]
        }
        return line
    }
}
