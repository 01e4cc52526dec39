import Foundation
import QMPRuntime
import QMPTestKit
import Testing

/// The fault matrix (RELIABILITY.md): each row a fault injected through real sockets into a real
/// qmp-sidecar process, in front of qmp-mock (or a silent fake QEMU). For every row: the
/// well-behaved client gets its replies in order, no descriptor is leaked (/proc/<sidecar>/fd before
/// and after), memory stays bounded (VmRSS), and the log says what happened.
@Suite struct FaultMatrixTests {
    /// qmp-mock and a sidecar in front of it.
    final class Rig {
        let dir = makeTempDir()
        let mock: SpawnedProcess
        let sidecar: SidecarInstance

        init(mock mockArguments: [String] = [], sidecar extra: [String] = []) throws {
            mock = try SpawnedProcess(
                productsDirectory + "/qmp-mock", ["--listen", "unix:\(dir)/vm.qmp"] + mockArguments)
            sidecar = try SidecarInstance(dir: dir, upstream: "\(dir)/vm.qmp", extra: extra)
        }

        /// A negotiated client whose first command got QEMU's reply (the upstream session is up).
        func wellBehavedClient() throws -> TestClient {
            let client = try TestClient.connecting(to: sidecar.listenPath)
            try client.negotiate()
            #expect(try client.command(#"{"execute": "query-status", "id": "ready"}"#).hasSuffix(#""id": "ready"}"#))
            return client
        }

        var descriptors: Int { ProcessProbe.openDescriptors(of: sidecar.pid) ?? -1 }

        /// Waits until the sidecar holds `count` descriptors again.
        func expectDescriptors(_ count: Int, sourceLocation: SourceLocation = #_sourceLocation) {
            #expect(
                waitFor { self.descriptors == count }, "fds \(descriptors), expected \(count)",
                sourceLocation: sourceLocation)
        }

        func expectBoundedMemory(sourceLocation: SourceLocation = #_sourceLocation) {
            let rss = ProcessProbe.residentKiB(of: sidecar.pid) ?? .max
            #expect(rss < 64 << 10, "sidecar RSS \(rss) KiB", sourceLocation: sourceLocation)
        }

        deinit {
            sidecar.terminate()
            mock.signal(SIGKILL)
            mock.waitUntilExit()
            try? FileManager.default.removeItem(atPath: dir)
        }
    }

    /// Writes `bytes` to `fd` from a thread of its own (the sidecar reads them as fast as it serves them).
    private func writeInBackground(_ fd: Int32, _ bytes: [UInt8]) {
        Thread {
            var offset = 0
            while offset < bytes.count {
                let n = bytes[offset...].withUnsafeBytes {
                    Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL))
                }
                if n < 0 && errno == EINTR { continue }
                if n <= 0 { break }
                offset += n
            }
        }.start()
    }

    /// `count` in-order round trips of the well-behaved client.
    private func expectRoundTrips(_ client: TestClient, _ count: Int, tag: String) throws {
        for index in 0..<count {
            let reply = try client.command(#"{"execute": "query-status", "id": "\#(tag)-\#(index)"}"#)
            #expect(reply.hasSuffix(#""id": "\#(tag)-\#(index)"}"#), "\(reply)")
        }
    }

    @Test func qemuKilledMidReply() throws {
        let rig = try Rig(mock: ["--drop-mid-reply", "query-name"])
        let victim = try rig.wellBehavedClient()
        let bystander = try rig.wellBehavedClient()
        victim.send(#"{"execute": "query-name", "id": 1}"#)
        // Half a reply is never passed on: both clients see a clean close, no partial line.
        #expect(victim.readLine(timeout: 10) == nil)
        #expect(bystander.isClosed())
        #expect(rig.sidecar.exitStatus() ?? 0 != 0)
        #expect(rig.sidecar.log.contains("without shutting down"))
    }

    @Test func qemuThatNeverGreets() throws {
        let dir = makeTempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let silent = try Sockets.listenUnix(path: "\(dir)/vm.qmp")
        defer { close(silent) }
        let sidecar = try SidecarInstance(dir: dir, upstream: "\(dir)/vm.qmp")
        let client = try TestClient.connecting(to: sidecar.listenPath)
        // Connected, but no greeting to pass on: the client waits as it would on such a QEMU directly.
        #expect(client.readLine(timeout: 1) == nil)
        #expect(sidecar.process.isRunning)
        #expect(waitFor { sidecar.log.contains("connected to QEMU") })
        // The silent QEMU goes away: the client is disconnected, the sidecar says so and fails.
        var accepted: Int32 = -1
        #expect(
            waitFor {
                accepted = accept(silent, nil, nil); return accepted >= 0
            })
        close(accepted)
        #expect(client.isClosed())
        #expect(sidecar.exitStatus() ?? 0 != 0)
        #expect(sidecar.log.contains("QEMU closed the QMP connection"))
    }

    @Test func clientThatNeverReads() throws {
        let rig = try Rig(sidecar: ["--client-output-limit", "65536"])
        let bystander = try rig.wellBehavedClient()
        let baseline = rig.descriptors
        let stuck = try TestClient.connecting(to: rig.sidecar.listenPath)
        stuck.send(#"{"execute": "qmp_capabilities"}"#)
        // ~1 MB of replies it never reads (the sidecar reads its commands only as replies go out).
        writeInBackground(stuck.fd, Array(String(repeating: #"{"execute": "query-status"}"#, count: 20_000).utf8))
        #expect(waitFor(seconds: 30) { rig.sidecar.log.contains("client stopped reading: disconnecting it") })
        try expectRoundTrips(bystander, 20, tag: "b")
        _ = consume stuck
        rig.expectDescriptors(baseline)
        rig.expectBoundedMemory()
    }

    /// The same client, but sending one command at a time with pauses: each command and its reply is
    /// a read of its own, which the express lane routes, so its replies pile up there until the bound.
    @Test func clientThatNeverReadsOneCommandAtATime() throws {
        let rig = try Rig(sidecar: ["--client-output-limit", "65536"])
        let bystander = try rig.wellBehavedClient()
        let baseline = rig.descriptors
        let stuck = try TestClient.connecting(to: rig.sidecar.listenPath)
        try stuck.negotiate()
        // A 4 KB id makes each reply 4 KB: 400 of them are past the socket buffers and the bound. The
        // pause lets each reply come back before the next command, so no command waits in a queue.
        let id = String(repeating: "x", count: 4096)
        let command = Array(#"{"execute": "query-status", "id": "\#(id)"}"#.utf8)
        let fd = stuck.fd
        Thread {
            for _ in 0..<400 {
                let n = command.withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
                if n <= 0 { break }
                usleep(2_000)
            }
        }.start()
        #expect(waitFor(seconds: 30) { rig.sidecar.log.contains("client stopped reading: disconnecting it") })
        try expectRoundTrips(bystander, 20, tag: "b")
        _ = consume stuck
        rig.expectDescriptors(baseline)
        rig.expectBoundedMemory()
    }

    @Test func clientPipelining100kCommands() throws {
        let rig = try Rig()
        let bystander = try rig.wellBehavedClient()
        let pipeliner = try rig.wellBehavedClient()
        let count = 100_000
        var text = ""
        for index in 0..<count { text += #"{"execute": "query-status", "id": \#(index)}"# }
        writeInBackground(pipeliner.fd, Array(text.utf8))
        var next = 0
        var bystanderTurn = 0
        while next < count, let line = pipeliner.readLine(timeout: 30) {
            guard line.hasSuffix(#""id": \#(next)}"#) else {
                Issue.record("reply \(next) out of order: \(line)")
                break
            }
            next += 1
            if next % 10_000 == 0 {
                // Another client's command is served while the flood is in progress.
                try expectRoundTrips(bystander, 1, tag: "b\(bystanderTurn)")
                bystanderTurn += 1
            }
        }
        #expect(next == count)
        rig.expectBoundedMemory()
    }

    @Test func sixtyFourClientsVanishingAtRandom() throws {
        let rig = try Rig()
        let bystander = try rig.wellBehavedClient()
        let baseline = rig.descriptors
        var generator = SystemRandomNumberGenerator()
        for round in 0..<64 {
            let client = try TestClient(path: rig.sidecar.listenPath)
            switch Int.random(in: 0..<4, using: &generator) {
            case 0: break  // gone before reading the greeting
            case 1:  // mid-command
                client.send(#"{"execute": "qmp_capabilities"}{"execute": "query-status", "id": 1}"#)
            case 2:  // holding a passed fd, gone before the reply
                let passed = open("/dev/null", O_RDONLY | O_CLOEXEC)
                try client.negotiate()
                client.send(Array(#"{"execute": "getfd", "arguments": {"fdname": "f\#(round)"}}"#.utf8), fds: [passed])
                close(passed)
            default:  // half a command, with fds attached
                let passed = open("/dev/null", O_RDONLY | O_CLOEXEC)
                client.send(Array(#"{"execute": "qmp_capabilities"}{"execute": "getfd", "argu"#.utf8), fds: [passed])
                close(passed)
            }
            if round % 8 == 0 { try expectRoundTrips(bystander, 2, tag: "r\(round)") }
        }
        try expectRoundTrips(bystander, 5, tag: "end")
        rig.expectDescriptors(baseline)
        rig.expectBoundedMemory()
        #expect(rig.sidecar.log.contains("client disconnected"))
    }

    @Test func garbageWithFDsAttached() throws {
        let rig = try Rig()
        let bystander = try rig.wellBehavedClient()
        let baseline = rig.descriptors
        var client: TestClient! = try rig.wellBehavedClient()
        let passed = (0..<3).map { _ in open("/dev/null", O_RDONLY | O_CLOEXEC) }
        client.send(Array("{\"execute\": \u{1}}}]] garbage".utf8), fds: passed)
        for fd in passed { close(fd) }
        // QEMU's answers to garbage (one error per bad token run), then the next command's reply.
        client.send(#"{"execute": "query-status", "id": "next"}"#)
        var errors = 0
        while let line = client.readLine(), !line.hasSuffix(#""id": "next"}"#) {
            #expect(line.hasPrefix(#"{"error": {"class": "GenericError""#), "\(line)")
            errors += 1
        }
        #expect(errors > 0)
        try expectRoundTrips(client, 3, tag: "after")
        try expectRoundTrips(bystander, 3, tag: "bystander")
        // The fds are held for a later getfd, as QEMU holds them; they go with the connection.
        client = nil
        rig.expectDescriptors(baseline)
    }

    @Test func descriptorExhaustion() throws {
        let dir = makeTempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let mock = try SpawnedProcess(productsDirectory + "/qmp-mock", ["--listen", "unix:\(dir)/vm.qmp"])
        defer { mock.signal(SIGKILL) }
        let listen = "\(dir)/s.sock"
        let sidecar = try SpawnedProcess(
            "prlimit",
            [
                "--nofile=32:32", productsDirectory + "/qmp-sidecar", "--upstream", "unix:\(dir)/vm.qmp", "--listen",
                "unix:\(listen)", "--log-level", "debug",
            ], searchPath: true, fileActions: SpawnedProcess.stderr(to: "\(dir)/log"))
        defer { sidecar.signal(SIGKILL) }
        let log = { (try? String(contentsOfFile: "\(dir)/log", encoding: .utf8)) ?? "" }
        let first = try TestClient.connecting(to: listen)
        try first.negotiate()
        #expect(try first.command(#"{"execute": "query-status", "id": 0}"#).hasSuffix(#""id": 0}"#))
        // More clients than descriptors: the kernel queues them, the sidecar pauses accepting.
        var crowd: [TestClient] = []
        for _ in 0..<40 { crowd.append(try TestClient(path: listen)) }
        #expect(waitFor { log().contains("accept failed; pausing accepts for 100 ms") })
        #expect(try first.command(#"{"execute": "query-status", "id": 1}"#).hasSuffix(#""id": 1}"#))
        crowd.removeAll()
        // Descriptors free again: a new client is served, the sidecar never stopped.
        let late = try TestClient.connecting(to: listen)
        try late.negotiate()
        #expect(try late.command(#"{"execute": "query-status", "id": 2}"#).hasSuffix(#""id": 2}"#))
        #expect(sidecar.isRunning, "\(log())")
    }
}

/// An event storm (10k events/s, from a fake QEMU: qmp-mock has no event generator at that rate)
/// while commands flow: every client gets every event, in order, and every reply.
@Suite struct EventStormTests {
    @Test func eventStormWhileCommandsFlow() throws {
        let dir = makeTempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let count = 20_000
        let qemu = try SpawnedProcess(
            "/usr/bin/python3", ["\(pythonDirectory)/storm_qemu.py", "\(dir)/vm.qmp", "\(count)", "10000"],
            fileActions: SpawnedProcess.stderr(to: "\(dir)/qemu.log"))
        defer { qemu.signal(SIGKILL) }
        guard waitFor({ FileManager.default.fileExists(atPath: "\(dir)/vm.qmp") }) else {
            throw TestFailure("the fake QEMU did not listen")
        }
        let sidecar = try SidecarInstance(dir: dir, upstream: "\(dir)/vm.qmp")
        let commander = try TestClient.connecting(to: sidecar.listenPath)
        let listener = try TestClient(path: sidecar.listenPath)
        try commander.negotiate()
        try listener.negotiate()
        // Both negotiated (events go only to negotiated clients): start the storm.
        #expect(try commander.command(#"{"execute": "x-start-storm", "id": "go"}"#) == #"{"return": {}, "id": "go"}"#)
        // Commands while the storm runs: replies in order, events kept aside by the client.
        var index = 0
        while commander.events.last?.contains("STORM_END") != true && index < 100_000 {
            let reply = try commander.command(#"{"execute": "query-status", "id": \#(index)}"#)
            #expect(reply == #"{"return": {}, "id": \#(index)}"#)
            index += 1
        }
        #expect(index > 10, "commands flowed during the storm")
        var listened: [String] = []
        while listened.last?.contains("STORM_END") != true, let line = listener.readLine(timeout: 30) {
            listened.append(line)
        }
        for (name, events) in [("commander", commander.events), ("listener", listened)] {
            let storm = events.filter { $0.contains(#""event": "STORM""#) }
            #expect(storm.count == count, "\(name) got \(storm.count) of \(count) events")
            #expect(
                storm.enumerated().allSatisfy { $0.element.hasSuffix(#""data": {"n": \#($0.offset + 1)}}"#) },
                "\(name): events out of order")
        }
        let rss = ProcessProbe.residentKiB(of: sidecar.pid) ?? .max
        #expect(rss < 64 << 10, "sidecar RSS \(rss) KiB")
    }
}
