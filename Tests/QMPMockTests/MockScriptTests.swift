import QMPWire
import Testing

@testable import QMPMock

@Suite("Scenario scripts")
struct ScenarioScriptTests {
    static func scenario(_ text: String) throws -> ScenarioScript {
        try ScenarioScript(parsing: Array(text.utf8))
    }

    @Test func cannedRepliesEventsAndUnmetSteps() throws {
        let script = try Self.scenario(
            #"""
            {"ordered": true, "fallback": "error", "events": [{"after-ms": 10, "event": "RESUME"}],
             "steps": [
               {"execute": "query-status", "return": {"running": true, "singlestep": false, "status": "running"}},
               {"execute": "device_del", "arguments": {"id": "d0"}, "return": {},
                "events": [{"after-ms": 1500, "event": "DEVICE_DELETED", "data": {"device": "d0", "path": "/machine/peripheral/d0"}}]},
               {"execute": "qom-get", "error": {"class": "GenericError", "desc": "boom"}}
             ]}
            """#)
        var h = try Harness(script: script)
        h.negotiate()
        #expect(h.pendingTimers.map(\.after) == [10_000_000], "top-level event after negotiation")
        #expect(
            h.execute("device_del", [JSONMember("id", .string("d0"))], id: 1).first?.contains(
                "qmp-mock scenario: unexpected device_del {\\\"id\\\": \\\"d0\\\"}, expected step 1 (query-status)")
                == true)
        #expect(
            h.execute("query-status", id: 2) == [
                #"{"return": {"status": "running", "singlestep": false, "running": true}, "id": 2}"# + "\r\n"
            ])
        #expect(
            h.execute("device_del", [JSONMember("id", .string("d0"))], id: 3) == [#"{"return": {}, "id": 3}"# + "\r\n"])
        #expect(h.pendingTimers.map(\.after) == [10_000_000, 1_500_000_000])
        let fired = h.fireTimers()
        #expect(fired.count == 2)
        #expect(fired.last?.contains(#""event": "DEVICE_DELETED", "data": {"device": "d0""#) == true)
        #expect(h.machine.unmetExpectations.count == 2, "one violation, one step never came")
    }

    @Test func expectationOnlyStepsLetTheModelAnswer() throws {
        let script = try Self.scenario(
            #"{"steps": [{"execute": "device_add"}, {"execute": "query-version"}]}"#)
        var h = try Harness(script: script)
        h.negotiate()
        #expect(
            h.execute("device_add", [JSONMember("driver", .string("usb-kbd")), JSONMember("id", .string("k"))], id: 1)
                == [
                    #"{"return": {}, "id": 1}"# + "\r\n"
                ])
        #expect(h.machine.devicePaths == ["/machine/peripheral/k"])
        #expect(h.execute("query-version", id: 2).first?.contains(#""major": 7"#) == true)
        #expect(h.machine.unmetExpectations.isEmpty)
    }

    @Test func stepsCanRequireDescriptors() throws {
        let script = try Self.scenario(#"{"fallback": "error", "steps": [{"execute": "getfd", "fds": 1}]}"#)
        var h = try Harness(script: script)
        h.negotiate()
        #expect(
            h.execute("getfd", [JSONMember("fdname", .string("f"))]).first?.contains(
                "qmp-mock scenario: unexpected getfd {\\\"fdname\\\": \\\"f\\\"}, expected step 1 (getfd)") == true)
        #expect(h.execute("getfd", [JSONMember("fdname", .string("f"))], fds: [70]) == [#"{"return": {}}"# + "\r\n"])
        #expect(h.machine.unmetExpectations.count == 1, "the fd-less getfd is reported")
    }

    @Test(arguments: [
        (#"{"steps": 1}"#, "missing \"steps\""),
        (#"{"steps": [{"return": {}}]}"#, "step 1: missing \"execute\""),
        (#"{"steps": [{"execute": "x", "error": {"class": "GenericError"}}]}"#, "needs \"class\" and \"desc\""),
        (#"{"fallback": "maybe", "steps": []}"#, "use \"model\" or \"error\""),
        (#"{"steps": [], "events": [{"after-ms": 1}]}"#, "missing \"event\""),
        (#"nope"#, "not valid JSON"),
    ])
    func badFilesNameTheFix(text: String, expected: String) {
        #expect {
            _ = try Self.scenario(text)
        } throws: { error in
            (error as? MockError)?.description.contains(expected) == true
        }
    }

    @Test func shippedExamplesParse() throws {
        for name in ["two-device-group-unplug", "canned-replies"] {
            let path = packageRoot() + "/examples/scenarios/\(name).json"
            let bytes = try #require(readAll(path), "cannot read \(path)")
            _ = try ScenarioScript(parsing: bytes, name: name)
        }
    }
}

@Suite("Replay of sidecar traces")
struct ReplayScriptTests {
    /// A trace as `qmp-sidecar --trace` writes it (the sidecar's negotiation, one client, one event).
    static let trace = """
        {"t": 100, "dir": "qemu-to-sidecar", "client": 0, "fds": 0, "msg": "{\\"QMP\\": {\\"version\\": {\\"qemu\\": {\\"micro\\": 22, \\"minor\\": 2, \\"major\\": 7}, \\"package\\": \\"Debian\\"}, \\"capabilities\\": [\\"oob\\"]}}"}
        {"t": 200, "dir": "sidecar-to-qemu", "client": 0, "fds": 0, "msg": "{\\"execute\\": \\"qmp_capabilities\\", \\"arguments\\": {\\"enable\\": [\\"oob\\"]}, \\"id\\": 1}"}
        {"t": 300, "dir": "qemu-to-sidecar", "client": 0, "fds": 0, "msg": "{\\"return\\": {}, \\"id\\": 1}"}
        {"t": 400, "dir": "sidecar-to-qemu", "client": 0, "fds": 0, "msg": "{\\"execute\\": \\"qom-list\\", \\"arguments\\": {\\"path\\": \\"/machine/peripheral\\"}, \\"id\\": 2}"}
        {"t": 500, "dir": "qemu-to-sidecar", "client": 0, "fds": 0, "msg": "{\\"return\\": [{\\"name\\": \\"type\\", \\"type\\": \\"string\\"}], \\"id\\": 2}"}
        {"t": 1000, "dir": "client-to-qemu", "client": 1, "fds": 0, "msg": "{\\"execute\\":\\"device_del\\",\\"arguments\\":{\\"id\\":\\"hostdev0\\"},\\"id\\":3}"}
        {"t": 1100, "dir": "qemu-to-client", "client": 1, "fds": 0, "msg": "{\\"return\\": {}, \\"id\\": 3}"}
        {"t": 51100, "dir": "qemu-to-client", "client": 0, "fds": 0, "msg": "{\\"timestamp\\": {\\"seconds\\": 1, \\"microseconds\\": 2}, \\"event\\": \\"DEVICE_DELETED\\", \\"data\\": {\\"device\\": \\"hostdev0\\", \\"path\\": \\"/machine/peripheral/hostdev0\\"}}"}
        {"t": 51100, "dir": "qemu-to-client", "client": 2, "fds": 0, "msg": "{\\"timestamp\\": {\\"seconds\\": 1, \\"microseconds\\": 2}, \\"event\\": \\"DEVICE_DELETED\\", \\"data\\": {\\"device\\": \\"hostdev0\\", \\"path\\": \\"/machine/peripheral/hostdev0\\"}}"}
        {"t": 60000, "dir": "client-to-qemu", "client": 1, "fds": 0, "msg": "{\\"execute\\":\\"query-pci\\",\\"id\\":4}"}
        {"t": 60100, "dir": "qemu-to-client", "client": 1, "fds": 0, "msg": "{\\"return\\": [{\\"bus\\": 0, \\"big\\": 18446744073709551615}], \\"id\\": 4}"}
        """

    @Test func repliesByCommandAndArgumentsWithNewIDs() throws {
        let replay = try ReplayScript(parsing: Array(Self.trace.utf8))
        #expect(replay.greetingVersion == MockQEMUVersion(major: 7, minor: 2, micro: 22, package: "Debian"))
        var h = try Harness(script: replay)
        h.negotiate()
        // Recorded bytes come back verbatim, big integers included, with this client's id.
        #expect(
            h.execute("query-pci", id: 9) == [
                #"{"return": [{"bus": 0, "big": 18446744073709551615}], "id": 9}"# + "\r\n"
            ])
        #expect(
            h.execute("device_del", [JSONMember("id", .string("hostdev0"))], id: 10) == [
                #"{"return": {}, "id": 10}"# + "\r\n"
            ])
        #expect(h.pendingTimers.map(\.after) == [50_000_000], "the event 50 ms after the recorded reply, once")
        let events = h.fireTimers()
        #expect(events.count == 1)
        #expect(
            events.first?.contains(#""data": {"device": "hostdev0", "path": "/machine/peripheral/hostdev0"}"#) == true)
        #expect(
            h.execute("device_del", [JSONMember("id", .string("hostdev0"))], id: 11).first?.contains(
                "qmp-mock replay: no recorded reply for device_del") == true)
        #expect(h.machine.unmetExpectations.count == 2, "one miss, the sidecar's qom-list not replayed")
    }

    @Test func recordedRepliesWithNonFiniteNumbersReplayVerbatim() throws {
        let trace = """
            {"t": 1, "dir": "client-to-qemu", "client": 1, "fds": 0, "msg": "{\\"execute\\":\\"qom-get\\",\\"id\\":1}"}
            {"t": 2, "dir": "qemu-to-client", "client": 1, "fds": 0, "msg": "{\\"return\\": [inf, -inf, nan], \\"id\\": 1}"}
            """
        var h = try Harness(script: try ReplayScript(parsing: Array(trace.utf8)))
        h.negotiate()
        #expect(h.execute("qom-get", id: 7) == [#"{"return": [inf, -inf, nan], "id": 7}"# + "\r\n"])
    }

    @Test func fallbackToModel() throws {
        let replay = try ReplayScript(parsing: Array(Self.trace.utf8), fallbackToModel: true)
        var h = try Harness(script: replay)
        h.negotiate()
        #expect(h.execute("query-status", id: 1).first?.contains(#""status": "prelaunch""#) == true)
    }

    @Test func badTraceLinesNameTheLine() {
        #expect {
            _ = try ReplayScript(parsing: Array("{\"t\": 1, \"dir\": \"client-to-qemu\"}\n".utf8), name: "x.jsonl")
        } throws: { error in
            (error as? MockError)?.description.contains("x.jsonl:1") == true
        }
    }
}
