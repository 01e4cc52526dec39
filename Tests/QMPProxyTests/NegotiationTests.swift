import QMPWire
import Testing

@testable import QMPProxy

/// Capabilities-mode replies, each recorded from a real QEMU 7.2 (qemu-system-x86_64 7.2.22, Debian 12)
/// on a fresh connection. The integration suite repeats the comparison live.
@Suite struct NegotiationTests {
    static let beforeNegotiation: [(request: String, reply: String)] = [
        (
            #"{"execute":"query-status","id":1}"#,
            #"{"id": 1, "error": {"class": "CommandNotFound", "desc": "Expecting capabilities negotiation with 'qmp_capabilities'"}}"#
        ),
        (
            #"{"execute":"query-status"}"#,
            #"{"error": {"class": "CommandNotFound", "desc": "Expecting capabilities negotiation with 'qmp_capabilities'"}}"#
        ),
        (
            #"{"execute":"qmp_capabilities","id":"x","arguments":{"enable":["foo"]}}"#,
            #"{"id": "x", "error": {"class": "GenericError", "desc": "Parameter 'null' does not accept value 'foo'"}}"#
        ),
        (
            #"{"exec-oob":"qmp_capabilities","id":1}"#,
            #"{"id": 1, "error": {"class": "GenericError", "desc": "QMP input member 'exec-oob' is unexpected"}}"#
        ),
        (
            #"{"execute":"qmp_capabilities","arguments":{"enable":"oob"},"id":2}"#,
            #"{"id": 2, "error": {"class": "GenericError", "desc": "Invalid parameter type for 'enable', expected: array"}}"#
        ),
        (
            #"{"execute":"qmp_capabilities","arguments":{"foo":1},"id":3}"#,
            #"{"id": 3, "error": {"class": "GenericError", "desc": "Parameter 'foo' is unexpected"}}"#
        ),
        (
            #"{"execute":"qmp_capabilities","arguments":[],"id":4}"#,
            #"{"id": 4, "error": {"class": "GenericError", "desc": "QMP input member 'arguments' must be an object"}}"#
        ),
        (
            #"{"execute":1,"id":7}"#,
            #"{"id": 7, "error": {"class": "GenericError", "desc": "QMP input member 'execute' must be a string"}}"#
        ),
        (#"{"id":8}"#, #"{"id": 8, "error": {"class": "GenericError", "desc": "QMP input lacks member 'execute'"}}"#),
        (
            #"{"execute":"query-status","id":10,"foo":1}"#,
            #"{"id": 10, "error": {"class": "GenericError", "desc": "QMP input member 'foo' is unexpected"}}"#
        ),
        (
            #"{"execute":"qmp_capabilities","arguments":{"enable":["oob"]},"foo":2,"bar":3}"#,
            #"{"error": {"class": "GenericError", "desc": "QMP input member 'bar' is unexpected"}}"#
        ),
        (
            #"{"exec-oob":"x","execute":1}"#,
            #"{"error": {"class": "GenericError", "desc": "QMP input member 'exec-oob' is unexpected"}}"#
        ),
        (
            #"{"execute":"x","exec-oob":"y","id":9}"#,
            #"{"id": 9, "error": {"class": "GenericError", "desc": "QMP input member 'exec-oob' is unexpected"}}"#
        ),
        (
            #"{"execute":"qmp_capabilities","arguments":{"enable":["oob"], "x":1}}"#,
            #"{"error": {"class": "GenericError", "desc": "Parameter 'x' is unexpected"}}"#
        ),
        (
            #"{"execute":"qmp_capabilities","arguments":{"b":2,"enable":["foo"]}}"#,
            #"{"error": {"class": "GenericError", "desc": "Parameter 'null' does not accept value 'foo'"}}"#
        ),
        (
            #"{"execute":"qmp_capabilities","arguments":{"enable":[1]},"id":11}"#,
            #"{"id": 11, "error": {"class": "GenericError", "desc": "Invalid parameter type for 'enable[0]', expected: string"}}"#
        ),
        (
            #"{"execute":"qmp_capabilities","arguments":{"enable":null},"id":12}"#,
            #"{"id": 12, "error": {"class": "GenericError", "desc": "Invalid parameter type for 'enable', expected: array"}}"#
        ),
        (
            #"{"execute":"qmp-capabilities","id":[1,{"a":null,"b":true}]}"#,
            #"{"id": [1, {"a": null, "b": true}], "error": {"class": "CommandNotFound", "desc": "Expecting capabilities negotiation with 'qmp_capabilities'"}}"#
        ),
        (#"[1]"#, #"{"error": {"class": "GenericError", "desc": "QMP input must be a JSON object"}}"#),
        (
            #"{"execute":"qmp_capabilities","id":1,"execute":"x"}"#,
            #"{"error": {"class": "GenericError", "desc": "JSON parse error, duplicate key"}}"#
        ),
        (
            #"{"execute":"qmp_capabilities","id":{"a":[1,2]},"arguments":{"enable":["oob"]}}"#,
            #"{"return": {}, "id": {"a": [1, 2]}}"#
        ),
        (#"{"execute":"qmp_capabilities"}"#, #"{"return": {}}"#),
        (#"{'execute':'qmp_capabilities','id':'a\'b'}"#, #"{"return": {}, "id": "a'b"}"#),
        (#"{"execute":"qmp_capabilities","arguments":{"enable":["oob","oob"]},"id":5}"#, #"{"return": {}, "id": 5}"#),
    ]

    @Test(arguments: beforeNegotiation)
    func replyBeforeNegotiationIsQEMUs(request: String, reply: String) {
        var harness = RouterHarness()
        harness.connect(1)
        #expect(harness.take(1) == qemuGreeting)
        harness.send(1, request)
        #expect(harness.take(1) == reply + "\r\n")
        #expect(harness.upstream.isEmpty, "nothing reaches QEMU before negotiation")
    }

    @Test func doubleNegotiationGoesToQEMU() {
        // After negotiation QEMU itself answers qmp_capabilities ("already complete"); the sidecar
        // forwards it so the text is QEMU's own.
        var harness = RouterHarness()
        harness.negotiated(1)
        harness.send(1, #"{"execute":"qmp_capabilities","id":13}"#)
        #expect(harness.upstream.count == 1)
        #expect(harness.upstream[0].text.contains("qmp_capabilities"))
    }

    @Test func oobCapabilityRefusedWhenQEMUDidNotOfferIt() {
        let greeting =
            #"{"QMP": {"version": {"qemu": {"micro": 0, "minor": 0, "major": 5}, "package": ""}, "capabilities": []}}"#
        var harness = RouterHarness(greeting: greeting + "\r\n")
        harness.connect(1)
        _ = harness.take(1)
        harness.send(1, #"{"execute":"qmp_capabilities","arguments":{"enable":["oob"]},"id":1}"#)
        #expect(
            harness.take(1)
                == #"{"id": 1, "error": {"class": "GenericError", "desc": "Capability oob not available"}}"# + "\r\n")
        harness.send(1, #"{"execute":"qmp_capabilities","id":2}"#)
        #expect(harness.take(1) == #"{"return": {}, "id": 2}"# + "\r\n")
    }

    @Test func sidecarEnablesOOBOnlyWhenOffered() {
        let withOOB = RouterHarness(ready: false)
        #expect(
            withOOB.upstream.map(\.text) == [
                #"{"execute": "qmp_capabilities", "arguments": {"enable": ["oob"]}, "id": 1}"#
            ])
        let greeting = #"{"QMP": {"version": {}, "capabilities": []}}"# + "\r\n"
        var without = RouterHarness(greeting: greeting, ready: false)
        #expect(without.upstream.map(\.text) == [#"{"execute": "qmp_capabilities", "id": 1}"#])
        without.feedUpstream(#"{"return": {}, "id": 1}"# + "\r\n")
        #expect(without.other.contains(.upstreamReady(oob: false)))
    }

    @Test func execOOBWithoutOOBIsAnsweredLocallyAfterNegotiation() {
        var harness = RouterHarness()
        harness.negotiated(1, oob: false)
        harness.send(1, #"{"exec-oob":"migrate-pause","id":1}"#)
        #expect(
            harness.take(1)
                == #"{"id": 1, "error": {"class": "GenericError", "desc": "QMP input member 'exec-oob' is unexpected"}}"#
                + "\r\n")
        harness.send(1, #"{"execute":"x","foo":1,"exec-oob":2}"#)
        #expect(
            harness.take(1)
                == #"{"error": {"class": "GenericError", "desc": "QMP input member 'exec-oob' is unexpected"}}"#
                + "\r\n")
        #expect(harness.upstream.isEmpty)
    }

    @Test func qdictOrderMatchesQEMU() {
        func ordered(_ keys: [String]) -> [String] { QMPJSON.qdictOrder(keys).map { keys[$0] } }
        // Orders observed in QEMU 7.2 output: "id" before "error", "return" before "id",
        // "class" before "desc", "exec-oob" before "execute", "bar" before "foo".
        #expect(ordered(["error", "id"]) == ["id", "error"])
        #expect(ordered(["id", "return"]) == ["return", "id"])
        #expect(ordered(["desc", "class"]) == ["class", "desc"])
        #expect(ordered(["execute", "exec-oob"]) == ["exec-oob", "execute"])
        #expect(ordered(["foo", "bar"]) == ["bar", "foo"])
    }

    @Test func stringsAreQuotedAsQEMUDoes() {
        #expect(
            String(decoding: QMPJSON.quoted("a\"b\\c\n\u{01}é😀"), as: UTF8.self)
                == #""a\"b\\c\n\u0001\u00E9\uD83D\uDE00""#)
    }
}
