import QMPWire
import Testing

@testable import QMPMock

@Suite("Mock QMP negotiation and dispatch")
struct MockNegotiationTests {
    @Test func greetingHasVersionAndOOB() throws {
        var configuration = MockConfiguration()
        configuration.version = MockQEMUVersion(major: 7, minor: 2, micro: 22, package: "Debian")
        var machine = MockMachine(configuration: configuration, host: FakeMockHost())
        let (client, actions) = machine.clientConnected(now: QMPTimestamp(seconds: 0, microseconds: 0))
        let expected =
            #"{"QMP": {"version": {"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": "Debian"}, "capabilities": ["oob"]}}"#
            + "\r\n"
        #expect(actions == [.send(client: client, bytes: Array(expected.utf8))])
    }

    @Test func commandsBeforeNegotiationAreRefused() throws {
        var h = try Harness()
        #expect(
            h.execute("query-status", id: 1) == [
                #"{"id": 1, "error": {"class": "CommandNotFound", "desc": "Expecting capabilities negotiation with 'qmp_capabilities'"}}"#
                    + "\r\n"
            ])
        #expect(
            h.execute("qmp_capabilities", [JSONMember("enable", .array([.string("foo")]))], id: 2) == [
                #"{"id": 2, "error": {"class": "GenericError", "desc": "Parameter 'null' does not accept value 'foo'"}}"#
                    + "\r\n"
            ])
        #expect(
            h.execute("qmp_capabilities", [JSONMember("enable", .array([.string("oob")]))], id: 3) == [
                #"{"return": {}, "id": 3}"# + "\r\n"
            ])
        #expect(
            h.execute("qmp_capabilities", id: 4) == [
                #"{"id": 4, "error": {"class": "CommandNotFound", "desc": "Capabilities negotiation is already complete, command ignored"}}"#
                    + "\r\n"
            ])
        #expect(
            h.send(.object([JSONMember("exec-oob", .string("query-status"))]), id: .string("o")) == [
                #"{"id": "o", "error": {"class": "GenericError", "desc": "The command query-status does not support OOB"}}"#
                    + "\r\n"
            ])
    }

    @Test func malformedInputGetsQEMUErrors() throws {
        var h = try Harness()
        #expect(
            h.send(.array([.integer(1)])) == [
                #"{"error": {"class": "GenericError", "desc": "QMP input must be a JSON object"}}"# + "\r\n"
            ])
        #expect(
            h.send(.object([])) == [
                #"{"error": {"class": "GenericError", "desc": "QMP input lacks member 'execute'"}}"# + "\r\n"
            ])
        #expect(
            h.send(.object([JSONMember("execute", .string("query-status")), JSONMember("foo", .integer(1))])) == [
                #"{"error": {"class": "GenericError", "desc": "QMP input member 'foo' is unexpected"}}"# + "\r\n"
            ])
        #expect(
            h.send(.object([JSONMember("exec-oob", .string("qmp_capabilities"))]), id: .integer(1)) == [
                #"{"id": 1, "error": {"class": "GenericError", "desc": "QMP input member 'exec-oob' is unexpected"}}"#
                    + "\r\n"
            ])
        let invalid = h.collect(
            h.machine.receive(.invalid(desc: "JSON parse error, stray '}'"), fds: [], from: h.client, now: h.now))
        #expect(invalid == [#"{"error": {"class": "GenericError", "desc": "JSON parse error, stray '}'"}}"# + "\r\n"])
    }

    @Test func capabilitiesArgumentsAreCheckedAsQEMUDoes() throws {
        // Each reply recorded from QEMU 7.2: elements are visited before leftover members.
        let cases: [([JSONMember], String)] = [
            ([JSONMember("enable", .array([.integer(1)]))], "Invalid parameter type for 'enable[0]', expected: string"),
            (
                [JSONMember("enable", .array([.string("foo")])), JSONMember("zz", .integer(1))],
                "Parameter 'null' does not accept value 'foo'"
            ),
            (
                [JSONMember("enable", .string("oob")), JSONMember("zz", .integer(1))],
                "Invalid parameter type for 'enable', expected: array"
            ),
            (
                [JSONMember("zz", .integer(1)), JSONMember("enable", .array([.integer(2)]))],
                "Invalid parameter type for 'enable[0]', expected: string"
            ),
        ]
        for (arguments, desc) in cases {
            var h = try Harness()
            #expect(
                h.execute("qmp_capabilities", arguments, id: 1) == [
                    #"{"id": 1, "error": {"class": "GenericError", "desc": "\#(desc)"}}"# + "\r\n"
                ])
        }
    }

    @Test func clashIsReportedBeforeLaterMembersAsQEMUDoes() throws {
        // Recorded from QEMU 7.2 with OOB enabled: QDict order is exec-oob, execute, zz; the clash
        // comes before the unexpected member.
        var h = try Harness()
        _ = h.send(
            .object([
                JSONMember("execute", .string("qmp_capabilities")),
                JSONMember("arguments", .object([JSONMember("enable", .array([.string("oob")]))])),
            ]))
        #expect(
            h.send(
                .object([
                    JSONMember("exec-oob", .string("query-status")), JSONMember("execute", .string("query-status")),
                    JSONMember("zz", .integer(1)),
                ]), id: .integer(5)) == [
                    #"{"id": 5, "error": {"class": "GenericError", "desc": "QMP input member 'execute' clashes with 'exec-oob'"}}"#
                        + "\r\n"
                ])
    }

    @Test func queriesAndUnknownCommands() throws {
        var h = try Harness()
        h.negotiate()
        #expect(
            h.execute("query-status", id: 1) == [
                #"{"return": {"status": "prelaunch", "singlestep": false, "running": false}, "id": 1}"# + "\r\n"
            ])
        #expect(
            h.execute("nosuch", id: 2) == [
                #"{"id": 2, "error": {"class": "CommandNotFound", "desc": "The command nosuch has not been found"}}"#
                    + "\r\n"
            ])
        #expect(
            h.execute("query-status", [JSONMember("x", .integer(1))], id: 3) == [
                #"{"id": 3, "error": {"class": "GenericError", "desc": "Parameter 'x' is unexpected"}}"# + "\r\n"
            ])
        #expect(
            h.execute("device_del", id: 4) == [
                #"{"id": 4, "error": {"class": "GenericError", "desc": "Parameter 'id' is missing"}}"# + "\r\n"
            ])
        let commands = h.execute("query-commands", id: 6).first ?? ""
        #expect(
            commands.hasPrefix(#"{"return": [{"name": "add-fd"}, "#) && commands.contains(#"{"name": "device_del"}"#))
        let cont = h.execute("cont", id: 5)
        #expect(cont.count == 2)
        #expect(cont.first?.contains(#""event": "RESUME""#) == true)
        #expect(cont.last == #"{"return": {}, "id": 5}"# + "\r\n")
    }

    @Test func eventsOnlyReachNegotiatedClients() throws {
        var h = try Harness()
        h.negotiate()
        let other = h.machine.clientConnected(now: h.now).client
        _ = h.execute("device_add", [JSONMember("driver", .string("usb-kbd")), JSONMember("id", .string("kb0"))])
        var actions = h.machine.receive(
            .message(
                .object([
                    JSONMember("execute", .string("device_del")),
                    JSONMember("arguments", .object([JSONMember("id", .string("kb0"))])),
                ]), id: nil
            ),
            fds: [], from: h.client, now: h.now)
        for case .schedule(let timer, _) in actions { actions += h.machine.timerFired(timer, now: h.now) }
        let recipients = actions.compactMap { action -> Int? in
            if case .send(let to, let bytes) = action, String(decoding: bytes, as: UTF8.self).contains("DEVICE_DELETED")
            {
                return to
            }
            return nil
        }
        #expect(recipients == [h.client])
        #expect(!recipients.contains(other))
    }
}
