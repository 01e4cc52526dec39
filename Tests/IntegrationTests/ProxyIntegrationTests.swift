import CQMPShims
import Foundation
import QMPTestKit
import Testing

/// qmp-sidecar in front of a real QEMU 7.2. Each test starts its own QEMU with two
/// monitors: one behind the sidecar, one direct for byte comparisons.
@Suite(.enabled(if: Requirements.qemuUsable, "needs /usr/bin/qemu-system-x86_64"))
struct ProxyIntegrationTests {
    @Test func greetingIsQEMUsAndQueryStatusWorks() throws {
        let vm = try ProxiedQEMU()
        let direct = try vm.direct()
        let client = try vm.client()
        let directGreeting = try #require(direct.readLine())
        let proxiedGreeting = try #require(client.readLine())
        #expect(proxiedGreeting == directGreeting)
        #expect(try client.command(#"{"execute": "qmp_capabilities", "id": 1}"#) == #"{"return": {}, "id": 1}"#)
        #expect(
            try client.command(#"{"execute": "query-status", "id": "s"}"#)
                == #"{"return": {"status": "prelaunch", "singlestep": false, "running": false}, "id": "s"}"#)
    }

    @Test func capabilitiesModeRepliesMatchQEMU() throws {
        let vm = try ProxiedQEMU()
        let requests = [
            #"{"execute":"query-status","id":1}"#,
            #"{"execute":"qmp_capabilities","id":"x","arguments":{"enable":["foo"]}}"#,
            #"{"exec-oob":"qmp_capabilities","id":1}"#,
            #"{"execute":"qmp_capabilities","arguments":{"foo":1,"bar":2},"id":3}"#,
            #"{"execute":"qmp_capabilities","arguments":[],"id":4}"#,
            #"{"id":8}"#,
            #"{"execute":"x","exec-oob":"y","zz":1,"id":9}"#,
            #"{"execute":"qmp_capabilities","arguments":{"enable":[1]},"id":11}"#,
            #"{"execute":"qmp-capabilities","id":{"b":[1,{"c":null}],"a":1.5}}"#,
            "[1]",
            #"{"execute":"qmp_capabilities","id":1,"execute":"x"}"#,
            #"{"execute":"qmp_capabilities","arguments":{"enable":["oob"]},"id":"n"}"#,
            // A NUL in a key (jansson cannot hold one; a fuzz finding): QEMU names the key.
            #"{"execute":"qmp_capabilities","\u0000":1}"#, #"{"execute":"qmp_capabilities","a\u0000b":1,"id":1}"#,
        ]
        for request in requests {
            // Each on a fresh connection: the direct monitor takes one client at a time.
            let direct = try vm.direct()
            let client = try vm.client()
            _ = direct.readLine()
            _ = client.readLine()
            let expected = try direct.command(request)
            #expect(try client.command(request) == expected, "request \(request)")
        }
        // Double negotiation, and exec-oob from a client that did not enable OOB.
        let direct = try vm.direct()
        let client = try vm.client()
        try direct.negotiate()
        try client.negotiate()
        for request in [
            #"{"execute":"qmp_capabilities","id":13}"#, #"{"exec-oob":"migrate-pause","id":1}"#,
            #"{"exec-oob":1,"execute":"query-status"}"#, "{'exec-oob':'x','\\u0000':2}",
        ] {
            #expect(try client.command(request) == direct.command(request), "request \(request)")
        }
    }

    @Test func deviceDeletedReachesTwoClientsAtOnce() throws {
        let vm = try ProxiedQEMU()
        let a = try vm.client()
        let b = try vm.client()
        try a.negotiate()
        try b.negotiate()
        #expect(
            try a.command(#"{"execute": "device_add", "arguments": {"driver": "usb-kbd", "id": "kbd0"}, "id": 1}"#)
                == #"{"return": {}, "id": 1}"#)
        #expect(
            try a.command(#"{"execute": "device_del", "arguments": {"id": "kbd0"}, "id": 2}"#)
                == #"{"return": {}, "id": 2}"#)
        let eventA = try #require(a.event(named: "DEVICE_DELETED"))
        let eventB = try #require(b.event(named: "DEVICE_DELETED"))
        #expect(eventA == eventB)
        #expect(eventA.contains(#""data": {"device": "kbd0", "path": "/machine/peripheral/kbd0"}"#))
    }

    @Test func queryQMPSchemaIsByteIdenticalToDirect() throws {
        let vm = try ProxiedQEMU()
        let direct = try vm.direct()
        let client = try vm.client()
        try direct.negotiate()
        try client.negotiate()
        let request = #"{"execute": "query-qmp-schema", "id": {"n": 1}}"#
        let proxied = try client.command(request)
        let expected = try direct.command(request)
        #expect(proxied.utf8.count > 10000)
        #expect(proxied == expected)
    }

    @Test func getfdAndClosefdWithARealFD() throws {
        let vm = try ProxiedQEMU()
        let client = try vm.client()
        try client.negotiate()
        var pipeFDs: [Int32] = [0, 0]
        #expect(cqmp_pipe(&pipeFDs, 0) == 0)  // close-on-exec: no concurrently spawned child keeps it
        defer { close(pipeFDs[0]) }
        let pipeName = try FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/fd/\(pipeFDs[1])")
        client.send(Array(#"{"execute": "getfd", "arguments": {"fdname": "myfd"}, "id": 1}"#.utf8), fds: [pipeFDs[1]])
        close(pipeFDs[1])
        #expect(try client.reply() == #"{"return": {}, "id": 1}"#)
        #expect(openFiles(of: vm.qemu.pid).contains(pipeName), "QEMU holds the passed fd")
        #expect(
            waitFor(seconds: 5) { !openFiles(of: vm.sidecar.pid).contains(pipeName) }, "the sidecar closed its copy")
        #expect(
            try client.command(#"{"execute": "closefd", "arguments": {"fdname": "myfd"}, "id": 2}"#)
                == #"{"return": {}, "id": 2}"#)
        #expect(!openFiles(of: vm.qemu.pid).contains(pipeName), "closefd closed it in QEMU")
        // Without an fd QEMU answers with its own error, as directly.
        #expect(
            try client.command(#"{"execute": "getfd", "arguments": {"fdname": "none"}, "id": 3}"#)
                == #"{"id": 3, "error": {"class": "GenericError", "desc": "No file descriptor supplied via SCM_RIGHTS"}}"#
        )
    }

    @Test func addFDThenQueryFDSets() throws {
        let vm = try ProxiedQEMU()
        let client = try vm.client()
        try client.negotiate()
        let fd = open("/dev/null", O_RDWR | O_CLOEXEC)
        client.send(
            Array(#"{"execute": "add-fd", "arguments": {"fdset-id": 7, "opaque": "o"}, "id": 1}"#.utf8), fds: [fd])
        close(fd)
        let reply = try client.reply()
        #expect(
            reply.hasPrefix(#"{"return": {"fd": "#) && reply.contains(#""fdset-id": 7"#)
                && reply.hasSuffix(#""id": 1}"#))
        let sets = try client.command(#"{"execute": "query-fdsets", "id": 2}"#)
        #expect(sets.contains(#""fdset-id": 7"#) && sets.contains(#""opaque": "o""#))
    }

    @Test func malformedInputOnOneClientLeavesOthersAlone() throws {
        let vm = try ProxiedQEMU()
        let bad = try vm.client()
        let good = try vm.client()
        try bad.negotiate()
        try good.negotiate()
        let direct = try vm.direct()
        try direct.negotiate()
        for input in [#"{"execute": bad}"#, "}", #"{"execute": "query-status", "id": 1, "id": 2}"#, "[]"] {
            #expect(try bad.command(input) == direct.command(input), "input \(input)")
        }
        #expect(try good.command(#"{"execute": "query-status", "id": 5}"#).hasSuffix(#""id": 5}"#))
        #expect(good.events.isEmpty)
        #expect(try bad.command(#"{"execute": "query-status", "id": 6}"#).hasSuffix(#""id": 6}"#))
    }

    @Test func tooDeepNestingGetsQEMUsErrorsAndNeverReachesQEMU() throws {
        let vm = try ProxiedQEMU()
        let client = try vm.client()
        let direct = try vm.direct()
        try client.negotiate()
        try direct.negotiate()
        let deep =
            #"{"execute": "query-status", "arguments": "# + String(repeating: "[", count: 1100)
            + String(repeating: "]", count: 1100) + "}" + #"{"execute": "query-name", "id": 1}"#
        func replies(_ c: TestClient) throws -> [String] {
            c.send(deep)
            var lines: [String] = []
            while true {
                let line = try c.reply()
                lines.append(line)
                if line.hasSuffix(#""id": 1}"#) { return lines }
            }
        }
        let proxied = try replies(client)
        #expect(proxied.first?.hasPrefix(#"{"error": {"class": "GenericError""#) == true)
        #expect(proxied == (try replies(direct)))
    }

    @Test func clientKilledMidCommand() throws {
        let vm = try ProxiedQEMU()
        let other = try vm.client()
        try other.negotiate()
        do {
            let victim = try vm.client()
            try victim.negotiate()
            victim.send(#"{"execute": "query-qmp-schema", "id": 1}{"execute": "query-status", "id": 2}"#)
        }  // closed with both replies in flight
        #expect(try other.command(#"{"execute": "query-status", "id": 3}"#).hasSuffix(#""id": 3}"#))
        #expect(vm.sidecar.process.isRunning)
        let again = try vm.client()
        try again.negotiate()
        #expect(try again.command(#"{"execute": "query-name", "id": 4}"#) == #"{"return": {}, "id": 4}"#)
    }

    @Test func qemuKilledDisconnectsClientsAndSidecarExitsNonZero() throws {
        let vm = try ProxiedQEMU()
        let a = try vm.client()
        let b = try vm.client()
        try a.negotiate()
        _ = b.readLine()
        vm.killQEMU()
        #expect(a.isClosed())
        #expect(b.isClosed())
        let status = vm.sidecar.exitStatus()
        #expect(status != nil && status != 0)
        #expect(vm.sidecar.log.contains("QEMU closed the QMP connection"))
    }

    @Test func reconnectServesANewQEMU() throws {
        let dir = makeTempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let first = try QEMUInstance(dir: dir, monitors: 1)
        let sidecar = try SidecarInstance(dir: dir, upstream: first.monitors[0], extra: ["--reconnect"])
        let a = try TestClient(path: sidecar.listenPath)
        try a.negotiate()
        first.kill()
        #expect(a.isClosed())
        try? FileManager.default.removeItem(atPath: first.monitors[0])
        let second = try QEMUInstance(dir: dir, monitors: 1)
        defer { second.kill() }
        let b = try TestClient(path: sidecar.listenPath)
        try b.negotiate()
        #expect(try b.command(#"{"execute": "query-status", "id": 1}"#).hasSuffix(#""id": 1}"#))
        #expect(sidecar.process.isRunning)
        sidecar.terminate()
        #expect(sidecar.process.terminationStatus == 0)
    }

    @Test func traceRecordsBothDirections() throws {
        let qemu = try QEMULauncher()
        let dir = qemu.directory
        let sidecar = try SidecarInstance(
            dir: dir, upstream: qemu.socketPath, extra: ["--trace", "\(dir)/trace.jsonl"])
        let client = try TestClient(path: sidecar.listenPath)
        try client.negotiate()
        _ = try client.command(#"{"execute": "query-status", "id": "q"}"#)
        sidecar.terminate()
        let lines = try String(contentsOfFile: "\(dir)/trace.jsonl", encoding: .utf8).split(separator: "\n")
        let records = try lines.map { try JSONSerialization.jsonObject(with: Data($0.utf8)) as! [String: Any] }
        let directions = records.map { $0["dir"] as! String }
        #expect(directions.contains("client-to-qemu") && directions.contains("qemu-to-client"))
        #expect(directions.contains("sidecar-to-qemu") && directions.contains("sidecar-to-client"))
        let forwarded = try #require(records.first { ($0["dir"] as! String) == "client-to-qemu" })
        #expect((forwarded["msg"] as! String).contains("query-status"))
        #expect(forwarded["client"] as? Int == 1)
        #expect(records.allSatisfy { $0["t"] is Int && $0["fds"] is Int })
    }

    @Test func takeOverListensWhereQEMUWasAndRestoresIt() throws {
        let qemu = try QEMULauncher()
        let dir = qemu.directory
        let path = qemu.socketPath
        let sidecar = try SidecarInstance(
            dir: dir, upstream: nil, extra: ["--take-over", path], listen: path, waitForSocket: false)
        #expect(waitFor { sidecar.log.contains("took over") })
        let a = try TestClient(path: path)
        let b = try TestClient(path: path)
        try a.negotiate()
        try b.negotiate()
        #expect(try a.command(#"{"execute": "query-status", "id": 1}"#).hasSuffix(#""id": 1}"#))
        sidecar.terminate()
        #expect(sidecar.process.terminationStatus == 0)
        // QEMU is back at its path, directly.
        let direct = try TestClient(path: path)
        try direct.negotiate()
        #expect(try direct.command(#"{"execute": "query-status", "id": 2}"#).hasSuffix(#""id": 2}"#))
    }

    @Test func inheritedListeningSocket() throws {
        let qemu = try QEMULauncher()
        let dir = qemu.directory
        // A python parent creates the listening socket and execs qmp-sidecar with it as fd 3.
        let path = "\(dir)/inherited.sock"
        let script = """
            import os, socket, sys
            s = socket.socket(socket.AF_UNIX); s.bind(sys.argv[1]); s.listen(8)
            os.dup2(s.fileno(), 3); os.set_inheritable(3, True)
            os.execv(sys.argv[2], [sys.argv[2], "--upstream", "unix:" + sys.argv[3], "--listen-fd", "3"])
            """
        let process = try SpawnedProcess(
            "python3", ["-c", script, path, productsDirectory + "/qmp-sidecar", qemu.socketPath], searchPath: true)
        defer {
            process.terminate()
            process.waitUntilExit()
        }
        let client = try TestClient.connecting(to: path)
        try client.negotiate()
        #expect(try client.command(#"{"execute": "query-status", "id": 1}"#).hasSuffix(#""id": 1}"#))
    }

    @Test func slowReaderIsDisconnectedWithoutStallingOthers() throws {
        let vm = try ProxiedQEMU(extra: ["--client-output-limit", "200000"])
        let slow = try vm.client()
        let fast = try vm.client()
        try slow.negotiate()
        try fast.negotiate()
        // Each schema reply is ~200 KB; the slow client never reads.
        for i in 0..<20 { slow.send(#"{"execute": "query-qmp-schema", "id": \#(i)}"#) }
        #expect(waitFor { vm.sidecar.log.contains("client stopped reading") })
        #expect(try fast.command(#"{"execute": "query-status", "id": "f"}"#).hasSuffix(#""id": "f"}"#))
        #expect(slow.isClosed())
    }

    @Test func sidecarsOwnCommandsNeverReachClients() throws {
        // A cold-plugged device makes the VFIO monitor's discovery (qom-list) run at start-up, while
        // a client is already firing commands.
        let qemu = try QEMULauncher(extraArguments: ["-device", "usb-kbd,id=k0"])
        let sidecar = try SidecarInstance(
            dir: qemu.directory, upstream: qemu.socketPath, extra: ["--trace", "\(qemu.directory)/t.jsonl"])
        let client = try TestClient.connecting(to: sidecar.listenPath)
        try client.negotiate()
        for i in 0..<50 { client.send(#"{"execute": "query-status", "id": \#(i)}"#) }
        for i in 0..<50 {
            #expect(try client.reply().hasSuffix(#""id": \#(i)}"#))
        }
        #expect(
            try client.command(#"{"execute": "__org.qmp-sidecar_query-vfio-groups", "id": "v"}"#)
                == #"{"return": [], "id": "v"}"#)
        #expect(client.readLine(timeout: 0.2) == nil, "nothing else arrives")
        sidecar.terminate()
        let trace = try String(contentsOfFile: "\(qemu.directory)/t.jsonl", encoding: .utf8)
        #expect(trace.contains(#""dir": "sidecar-to-qemu""#) && trace.contains("qom-list"))
        let forwarded = trace.split(separator: "\n").filter { $0.contains(#""dir": "client-to-qemu""#) }
        #expect(forwarded.count == 50)
        #expect(!forwarded.contains { $0.contains("query-vfio-groups") }, "the local command is never forwarded")
    }

    @Test func oobCommandsBehaveAsDirect() throws {
        let vm = try ProxiedQEMU()
        let client = try vm.client()
        let direct = try vm.direct()
        try client.negotiate(oob: true)
        try direct.negotiate(oob: true)
        for request in [
            #"{"exec-oob": "migrate-pause", "id": "o"}"#, #"{"exec-oob": "query-status", "id": "n"}"#,
            #"{"exec-oob": "x-oob-test", "id": 1}"#, #"{"execute": "query-status", "id": 2}"#,
        ] {
            #expect(try client.command(request) == direct.command(request), "request \(request)")
        }
    }
}
