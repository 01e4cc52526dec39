import Foundation
import QMPTestKit
import Testing

/// What an operator sees of a scripted session (qmp-sidecar in front of qmp-mock): the metrics
/// textfile, `qmp-sidecar status`, and the log at info.
@Suite struct OperatorViewTests {
    /// qmp-mock with group 7 (two devices, released on unplug) and group 8 (one device whose group fd
    /// the mock never closes: a release timeout), and a sidecar with metrics, info logs as JSON.
    final class Session {
        let dir = makeTempDir()
        let mock: SpawnedProcess
        let sidecar: SpawnedProcess
        var socket: String { "\(dir)/s.sock" }
        var metricsPath: String { "\(dir)/metrics.prom" }
        var logPath: String { "\(dir)/sidecar.log" }

        /// - Parameters:
        ///   - mockOptions: more qmp-mock options (`--native-group-events`).
        ///   - sidecarOptions: more qmp-sidecar options (`--socket-mode`).
        init(mockOptions: [String] = [], sidecarOptions: [String] = []) throws {
            chmod(dir, 0o755)  // for a client of another user
            mock = try SpawnedProcess(
                productsDirectory + "/qmp-mock",
                [
                    "--listen", "unix:\(dir)/vm.qmp", "--fake-host", "7=0000:01:00.0,0000:01:00.1", "--fake-host",
                    "8=0000:02:00.0", "--fake-host-root", "\(dir)/host", "--device",
                    "vfio-pci,host=0000:01:00.0,id=hostdev0", "--device", "vfio-pci,host=0000:01:00.1,id=hostdev1",
                    "--device", "vfio-pci,host=0000:02:00.0,id=hostdev2", "--leak-group", "8",
                ] + mockOptions)
            let dir = self.dir
            guard waitFor({ FileManager.default.fileExists(atPath: "\(dir)/vm.qmp") }) else {
                throw TestFailure("qmp-mock did not listen")
            }
            sidecar = try SpawnedProcess(
                productsDirectory + "/qmp-sidecar",
                [
                    "--upstream", "unix:\(dir)/vm.qmp", "--listen", "unix:\(dir)/s.sock", "--sysfs-root",
                    "\(dir)/host/sys", "--dev-root", "\(dir)/host/dev", "--release-timeout", "0.3", "--metrics-file",
                    "\(dir)/metrics.prom", "--metrics-delay", "0.05", "--log-level", "info", "--log-format", "json",
                ] + sidecarOptions, fileActions: SpawnedProcess.stderr(to: "\(dir)/sidecar.log"))
            guard waitFor({ FileManager.default.fileExists(atPath: "\(dir)/s.sock") }) else {
                throw TestFailure("qmp-sidecar did not listen: \(log)")
            }
        }

        var log: String { (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? "" }
        var metrics: String { (try? String(contentsOfFile: metricsPath, encoding: .utf8)) ?? "" }

        /// The sample lines of the textfile.
        var samples: Set<String> { Set(metrics.split(separator: "\n").map(String.init).filter { !$0.hasPrefix("#") }) }

        func status(_ arguments: [String] = []) throws -> String {
            let (status, output) = try SpawnedProcess.run(
                [productsDirectory + "/qmp-sidecar", "status"] + arguments + [socket])
            #expect(status == 0, "\(output)")
            // The first line says who emits the group events; tests of it read it themselves.
            return arguments.contains("--json") ? output : String(output.drop { $0 != "\n" }.dropFirst())
        }

        /// `qmp-sidecar status` as printed, header included.
        func statusWithHeader() throws -> String {
            try SpawnedProcess.run([productsDirectory + "/qmp-sidecar", "status", socket]).output
        }

        /// The sidecar's voluntary context switches (its only thread: the reactor).
        var contextSwitches: Int? {
            let status =
                (try? String(contentsOfFile: "/proc/\(sidecar.processIdentifier)/status", encoding: .utf8)) ?? ""
            return status.split(separator: "\n").first { $0.hasPrefix("voluntary_ctxt_switches:") }
                .flatMap { Int($0.split(separator: ":")[1].trimmingCharacters(in: .whitespaces)) }
        }

        /// The file's identity: a rename gives a new inode.
        var fileIdentity: ino_t? {
            var info = stat()
            return stat(metricsPath, &info) == 0 ? info.st_ino : nil
        }

        deinit {
            sidecar.terminate()
            sidecar.waitUntilExit()
            mock.terminate()
            mock.waitUntilExit()
            try? FileManager.default.removeItem(atPath: dir)
        }
    }

    /// Runs the session: three commands, an unplug of group 7 with its release, group 8's timeout.
    func script(_ session: Session, client: TestClient) throws {
        _ = try client.negotiate()
        for id in 1...3 {
            #expect(try client.command(#"{"execute": "query-status", "id": \#(id)}"#).contains(#""id": \#(id)"#))
        }
        for device in ["hostdev0", "hostdev1"] {
            _ = try client.command(#"{"execute": "device_del", "arguments": {"id": "\#(device)"}}"#)
        }
        #expect(client.event(named: "GROUP_RELEASED")?.contains(#""group": 7"#) == true)
        _ = try client.command(#"{"execute": "device_del", "arguments": {"id": "hostdev2"}}"#)
        #expect(client.event(named: "GROUP_RELEASE_TIMEOUT")?.contains(#""group": 8"#) == true)
    }

    @Test func metricsAfterAScriptedSession() throws {
        let session = try Session()
        let client = try TestClient.connecting(to: session.socket)
        try script(session, client: client)
        let expected = [
            #"qmp_sidecar_messages_total{direction="from-clients"} 7"#,
            #"qmp_sidecar_events_total{event="DEVICE_DELETED",source="qemu"} 3"#,
            #"qmp_sidecar_events_total{event="GROUP_RELEASED",source="sidecar"} 1"#,
            #"qmp_sidecar_events_total{event="GROUP_RELEASE_TIMEOUT",source="sidecar"} 1"#,
            "qmp_sidecar_release_timeouts_total 1",
            "qmp_sidecar_release_latency_seconds_count 1",
            "qmp_sidecar_command_round_trip_seconds_count 6",
            #"qmp_sidecar_vfio_groups{state="released"} 1.0"#,
            #"qmp_sidecar_vfio_groups{state="timed-out"} 1.0"#,
            #"qmp_sidecar_vfio_groups{state="attached"} 0.0"#,
            "qmp_sidecar_clients 1.0",
            #"qmp_sidecar_commands_in_flight{client="1"} 0.0"#,
            #"qmp_sidecar_commands_queued{client="1"} 0.0"#,
            "qmp_sidecar_fds_passed_total 0",
            "qmp_sidecar_native_group_events 0.0",
        ]
        let complete = waitFor(seconds: 5) { expected.allSatisfy(session.samples.contains) }
        #expect(complete, "missing \(expected.filter { !session.samples.contains($0) }) in:\n\(session.metrics)")
        #expect(session.samples.contains { $0.hasPrefix(#"qmp_sidecar_bytes_total{direction="to-qemu"} "#) })
        #expect(session.samples.contains { $0.hasPrefix(#"qmp_sidecar_fallback_scans_total{kind="all-processes"} "#) })
    }

    @Test func textfileIsRewrittenOnlyWhenSomethingChanged() throws {
        let session = try Session()
        let client = try TestClient.connecting(to: session.socket)
        _ = try client.negotiate()
        #expect(
            waitFor { session.samples.contains(#"qmp_sidecar_messages_total{direction="from-clients"} 1"#) },
            "\(session.metrics)")
        // Settled: cold-plug discovery and its bounded learning scans may still be changing counters
        // on a loaded machine; wait until the file has stayed the same file for 6 × --metrics-delay.
        let settled = steady(every: 300_000, tries: 100) { session.fileIdentity }
        // The write is followed by the reactor going back to sleep in poll (one more switch): let it.
        let switches = steady(every: 20_000, tries: 20) { session.contextSwitches }
        usleep(400_000)  // 8 × --metrics-delay: a periodic writer would have replaced it by now.
        #expect(session.fileIdentity == settled)
        // And the sidecar slept through it: no timer, no wake-up (each return from poll counts one).
        #expect(session.contextSwitches == switches, "the idle sidecar woke up")
        _ = try client.command(#"{"execute": "query-status"}"#)
        #expect(waitFor { session.fileIdentity != settled }, "a command changed the counters: the file is replaced")
        #expect(
            waitFor { session.samples.contains(#"qmp_sidecar_messages_total{direction="from-clients"} 2"#) },
            "\(session.metrics)")
        #expect(
            !FileManager.default.fileExists(atPath: session.metricsPath + ".tmp.\(session.sidecar.processIdentifier)"))
    }

    @Test func statusTableAndJSONForAKnownState() throws {
        let session = try Session()
        let mockPID = session.mock.processIdentifier
        #expect(waitFor { (try? session.status())?.contains("8      attached") == true })
        #expect(
            try session.status() == """
                GROUP  STATE     DEVICES                                           DELETED  MEMBERS                    HOLDERS
                7      attached  hostdev0 (0000:01:00.0), hostdev1 (0000:01:00.1)  -        0000:01:00.0 0000:01:00.1  \(mockPID) qmp-mock
                8      attached  hostdev2 (0000:02:00.0)                           -        0000:02:00.0               \(mockPID) qmp-mock

                """)
        let client = try TestClient.connecting(to: session.socket)
        try script(session, client: client)
        let json = try session.status(["--json"])
        let groups = try #require(
            try JSONSerialization.jsonObject(with: Data(json.utf8)) as? [[String: Any]], "not a JSON array: \(json)")
        #expect(groups.map { $0["group"] as? Int } == [7, 8])
        #expect(groups.map { $0["state"] as? String } == ["released", "timed-out"])
        #expect(groups[0]["deleted"] as? [String] == [])
        #expect(groups[1]["deleted"] as? [String] == ["hostdev2"])
        #expect((groups[1]["holders"] as? [[String: Any]])?.first?["comm"] as? String == "qmp-mock")
    }

    /// Holders show only in `/proc/<pid>/fd`, readable by their own user and root: a client of another
    /// user is not told who holds a group, in the query command or in `GROUP_RELEASE_TIMEOUT`, only how
    /// many are hidden; root (the mock runs as root) still sees the mock named.
    @Test func aClientOfAnotherUserIsNotToldWhoHoldsAGroup() throws {
        let session = try Session(sidecarOptions: ["--socket-mode", "0666"])
        #expect(waitFor { (try? session.status())?.contains("8      attached") == true })
        let root = try TestClient.connecting(to: session.socket)
        try root.negotiate()
        // nobody queries, unplugs hostdev2 (its group fd leaks: a timeout) and prints what it was told.
        let script = """
            import json, socket, sys
            s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); s.settimeout(20)
            f = s.makefile("rb")
            def until(test):
                while True:
                    m = json.loads(f.readline())
                    if test(m): return m
            until(lambda m: "QMP" in m)
            s.sendall(b'{"execute": "qmp_capabilities"}'); until(lambda m: "return" in m)
            s.sendall(b'{"execute": "__org.qmp-sidecar_query-vfio-groups", "id": 1}')
            groups = until(lambda m: m.get("id") == 1)["return"]
            print(json.dumps([[g["group"], g["holders"], g["hidden-holders"]] for g in groups]))
            s.sendall(b'{"execute": "device_del", "arguments": {"id": "hostdev2"}}')
            print(json.dumps(until(lambda m: m.get("event") == "GROUP_RELEASE_TIMEOUT")["data"]["holders"]))
            """
        let nobody = try SpawnedProcess.run(
            [
                "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "/usr/bin/python3", "-c", script,
                session.socket,
            ])
        #expect(nobody.status == 0, "\(nobody.output)")
        #expect(nobody.output == "[[7, [], 1], [8, [], 1]]\n[]\n")
        // Root's view of the same event and state: the mock named.
        let mockPID = session.mock.processIdentifier
        let timeout = try #require(root.event(named: "GROUP_RELEASE_TIMEOUT"))
        #expect(timeout.contains(#""pid": \#(mockPID)"#) && timeout.contains(#""comm": "qmp-mock""#), "\(timeout)")
        #expect(try session.status().contains("\(mockPID) qmp-mock"))
    }

    @Test func logLinesOfAScriptedSessionAtInfo() throws {
        let session = try Session()
        // The client connects once discovery is done, so its lines come after the sidecar's own.
        #expect(waitFor { session.log.contains(#""device": "hostdev2""#) }, "\(session.log)")
        do {
            let client = try TestClient.connecting(to: session.socket)
            try script(session, client: client)
        }
        #expect(waitFor { session.log.contains(#""message": "client disconnected""#) })
        let lines = session.log.split(separator: "\n").compactMap {
            try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: String]
        }
        #expect(
            lines.count == session.log.split(separator: "\n").count, "every line is one JSON object:\n\(session.log)")
        #expect(lines.allSatisfy { $0["level"] == "info" || $0["level"] == "warning" })
        let seen = lines.map { line in
            [line["message"]!, line["client"], line["group"], line["device"]].compactMap { $0 }.joined(separator: " ")
        }
        #expect(
            seen == [
                "qmp-sidecar running",
                "connected to QEMU",
                "QMP session with QEMU negotiated",
                "VFIO device tracked 7 hostdev0",
                "VFIO device tracked 7 hostdev1",
                "VFIO device tracked 8 hostdev2",
                "client connected 1",
                "client negotiated 1",
                "IOMMU group detaching: its last guest device was deleted 7 hostdev1",
                "IOMMU group released 7",
                "IOMMU group detaching: its last guest device was deleted 8 hostdev2",
                "IOMMU group not released in time 8",
                "client disconnected 1",
            ], "\(session.log)")
    }
}

/// The value `read` gives once two readings `every` microseconds apart agree (or after `tries` readings).
private func steady<Value: Equatable>(every microseconds: UInt32, tries: Int, _ read: () -> Value) -> Value {
    var last = read()
    for _ in 0..<tries {
        usleep(microseconds)
        let now = read()
        if now == last { break }
        last = now
    }
    return last
}
