import QMPWire
import Testing

@testable import QMPProxy

@Suite struct RouterTests {
    @Test func replyGetsClientIDBackAndOtherBytesUnchanged() throws {
        var h = RouterHarness()
        h.negotiated(1)
        h.send(1, #"{'execute': 'query-status', 'id': 'a\'b'}"#)
        try #require(h.upstream.count == 1)
        let id = h.upstreamID(0)
        #expect(!h.upstream[0].text.contains("a'b"), "the client's id never reaches QEMU")
        h.feedUpstream(#"{"return": {"status": "prelaunch", "running": false}, "id": \#(id)}"# + "\r\n")
        #expect(h.take(1) == #"{"return": {"status": "prelaunch", "running": false}, "id": "a'b"}"# + "\r\n")
    }

    @Test func replyWithNonFiniteNumbersIsForwardedWhole() throws {
        // QEMU's writer prints non-finite doubles as `inf`, `-inf`, `nan`, which its own input
        // grammar rejects: the upstream side must not frame QEMU's output with the input rules.
        var h = RouterHarness()
        h.negotiated(1)
        h.send(1, #"{"execute":"qom-get","id":"x"}"#)
        let id = h.upstreamID(0)
        h.feedUpstream(#"{"return": [inf, -inf, nan, {"v": -nan}], "id": \#(id)}"# + "\r\n")
        #expect(h.take(1) == #"{"return": [inf, -inf, nan, {"v": -nan}], "id": "x"}"# + "\r\n")
        let warnings = h.other.filter {
            if case .warning = $0 { return true }
            return false
        }
        #expect(warnings.isEmpty, "no warning about unparsable output")
    }

    @Test func commandWithoutIDGetsReplyWithoutID() throws {
        var h = RouterHarness()
        h.negotiated(1)
        h.send(1, #"{"execute":"query-status"}"#)
        let id = h.upstreamID(0)
        h.feedUpstream(#"{"return": {"big": 18446744073709551615}, "id": \#(id)}"# + "\r\n")
        #expect(h.take(1) == #"{"return": {"big": 18446744073709551615}}"# + "\r\n")
    }

    @Test func repliesGoToTheirOwnClients() {
        var h = RouterHarness()
        h.negotiated(1)
        h.negotiated(2)
        h.send(1, #"{"execute":"a","id":1}"#)
        h.send(2, #"{"execute":"b","id":1}"#)
        let (a, b) = (h.upstreamID(0), h.upstreamID(1))
        #expect(a != b)
        h.feedUpstream(#"{"return": "A", "id": \#(a)}"# + "\r\n" + #"{"return": "B", "id": \#(b)}"# + "\r\n")
        #expect(h.take(1) == #"{"return": "A", "id": 1}"# + "\r\n")
        #expect(h.take(2) == #"{"return": "B", "id": 1}"# + "\r\n")
    }

    @Test func localRepliesKeepInBandOrder() {
        var h = RouterHarness()
        h.negotiated(1)
        // A forwarded command, then malformed input, then another forwarded command.
        h.send(1, #"{"execute":"a","id":1}[1]{"execute":"b","id":2}"#)
        #expect(h.take(1) == "", "the error waits behind the reply to command 1")
        #expect(h.upstream.count == 2)
        h.replyUpstream(0)
        #expect(
            h.take(1)
                == #"{"return": {}, "id": 1}"# + "\r\n"
                + #"{"error": {"class": "GenericError", "desc": "QMP input must be a JSON object"}}"# + "\r\n")
        h.replyUpstream(1)
        #expect(h.take(1) == #"{"return": {}, "id": 2}"# + "\r\n")
    }

    @Test func oobReplyOvertakesInBand() {
        var h = RouterHarness()
        h.negotiated(1, oob: true)
        h.send(1, #"{"execute":"slow","id":"s"}{"exec-oob":"migrate-pause","id":"o"}"#)
        #expect(h.upstream.count == 2)
        h.replyUpstream(1)
        #expect(h.take(1) == #"{"return": {}, "id": "o"}"# + "\r\n")
        h.replyUpstream(0)
        #expect(h.take(1) == #"{"return": {}, "id": "s"}"# + "\r\n")
    }

    @Test func eventsReachOnlyNegotiatedClientsUnchanged() {
        var h = RouterHarness()
        h.negotiated(1)
        h.negotiated(2)
        h.connect(3)
        _ = h.take(3)
        let event =
            #"{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "DEVICE_DELETED", "data": {"path": "/machine/peripheral/k"}}"#
            + "\r\n"
        h.feedUpstream(event)
        #expect(h.take(1) == event)
        #expect(h.take(2) == event)
        #expect(h.take(3) == "", "no event before negotiation")
        #expect(h.events.map(\.name) == ["DEVICE_DELETED"])
    }

    @Test func malformedInputStaysOnItsClient() {
        var h = RouterHarness()
        h.negotiated(1)
        h.negotiated(2)
        h.send(1, #"{"execute": bad}"#)
        #expect(h.take(1).hasPrefix(#"{"error": {"class": "GenericError", "desc": "JSON parse error"#))
        #expect(h.take(2) == "")
        #expect(h.upstream.isEmpty)
        h.send(2, #"{"execute":"query-status","id":7}"#)
        h.replyUpstream(0)
        #expect(h.take(2) == #"{"return": {}, "id": 7}"# + "\r\n")
    }

    @Test func disconnectedClientsRepliesAreDroppedQuietly() {
        var h = RouterHarness()
        h.negotiated(1)
        h.negotiated(2)
        h.send(1, #"{"execute":"a","id":1}"#)
        h.perform(h.router.clientClosed(1))
        h.replyUpstream(0)
        #expect(h.clientOutput[1, default: ""] == "")
        #expect(h.take(2) == "")
        #expect(!h.other.contains { if case .warning = $0 { true } else { false } })
        #expect(h.router.commandsInFlight == 0)
    }

    @Test func clientConnectingBeforeGreetingGetsItLater() {
        var h = RouterHarness(greeting: nil)
        h.connect(1)
        h.send(1, #"{"execute":"qmp_capabilities","id":1}{"execute":"query-status","id":2}"#)
        #expect(h.take(1) == "")
        h.feedUpstream(qemuGreeting)
        #expect(h.take(1) == qemuGreeting + #"{"return": {}, "id": 1}"# + "\r\n")
        // The sidecar's negotiation is in flight: the client's command waits for it.
        #expect(h.upstream.count == 1)
        h.replyUpstream(0)
        #expect(h.upstream.count == 2)
        #expect(h.upstream[1].text.contains("query-status"))
    }

    @Test func upstreamClosedDisconnectsEveryClientAndClosesFDs() {
        var h = RouterHarness()
        h.negotiated(1)
        h.negotiated(2)
        h.send(1, " ", fds: [40])
        h.perform(h.router.upstreamClosed())
        #expect(h.disconnected == [1, 2])
        #expect(h.closed == [40])
        #expect(h.router.clientCount == 0)
        #expect(h.router.greeting == nil)
        // A new QEMU: the router negotiates again.
        h.upstream.removeAll()
        h.feedUpstream(qemuGreeting)
        #expect(h.upstream.count == 1)
    }

    @Test func observedCommandsAreReportedBeforeForwardingAndAtTheirReply() {
        var h = RouterHarness(configuration: .init(observedCommands: ["device_add"]))
        h.negotiated(1)
        h.other.removeAll()
        h.send(1, #"{"execute":"device_add","arguments":{"driver":"vfio-pci","host":"0000:01:00.0","id":"h"},"id":1}"#)
        h.send(1, #"{"execute":"device_add","id":2}"#)
        h.send(1, #"{"execute":"device_del","arguments":{"id":"h"},"id":3}"#)
        #expect(
            h.other == [
                .commandObserved(
                    name: "device_add", arguments: Array(#"{"driver":"vfio-pci","host":"0000:01:00.0","id":"h"}"#.utf8)),
                .commandObserved(name: "device_add", arguments: Array("{}".utf8)),
            ])
        h.other.removeAll()
        h.replyUpstream(0)
        h.feedUpstream(
            #"{"id": \#(h.upstreamID(1)), "error": {"class": "GenericError", "desc": "no host"}}"# + "\r\n")
        h.replyUpstream(2)
        #expect(
            h.other == [
                .observedReply(
                    name: "device_add", arguments: Array(#"{"driver":"vfio-pci","host":"0000:01:00.0","id":"h"}"#.utf8),
                    succeeded: true),
                .observedReply(name: "device_add", arguments: Array("{}".utf8), succeeded: false),
            ])
        #expect(h.take(1).contains(#""id": 3"#))
    }

    @Test func commandNamesMatchAsQEMUDecodesThem() throws {
        // QEMU looks up the decoded name: an escape or single quotes name the same command.
        var h = RouterHarness(
            configuration: .init(
                localCommands: ["x-query-vfio-groups"], observedCommands: ["device_add"], maxClientInFlight: 8))
        h.negotiated(1)
        h.other.removeAll()
        h.send(1, #"{"execute":"device_add","id":1}{'execute':'device_add','id':2}{"execute":"device_addx","id":3}"#)
        #expect(
            h.other == [
                .commandObserved(name: "device_add", arguments: Array("{}".utf8)),
                .commandObserved(name: "device_add", arguments: Array("{}".utf8)),
            ])
        h.other.removeAll()
        h.send(1, #"{"execute":"x-query-vfio-groups","id":4}{"execute":"x-query-vfio-group","id":5}"#)
        #expect(h.upstream.count == 4, "the local command never reaches QEMU, the other name does")
        #expect(
            h.other.contains { if case .localCommand(1, _, "x-query-vfio-groups", nil) = $0 { true } else { false } })
        // getfd spelled with an escape takes the fds that came with it.
        h.send(1, #"{"execute": "getfd", "arguments": {"fdname": "f"}, "id": 6}"#, fds: [70])
        #expect(h.upstream.last?.fds == [70])
    }

    @Test func nothingIsObservedUnlessConfigured() {
        var h = RouterHarness()
        h.negotiated(1)
        h.other.removeAll()
        h.send(1, #"{"execute":"device_add","arguments":{"driver":"vfio-pci","id":"h"},"id":1}"#)
        h.replyUpstream(0)
        #expect(h.other.isEmpty)
    }

    @Test func internalCommandRepliesNeverReachClients() throws {
        var h = RouterHarness()
        h.negotiated(1)
        let (token, actions) = h.router.sendInternalCommand(
            "qom-list", arguments: Array(#"{"path": "/machine/peripheral"}"#.utf8))
        h.perform(actions)
        #expect(
            h.upstream.last?.text
                == #"{"execute": "qom-list", "arguments": {"path": "/machine/peripheral"}, "id": \#(token)}"#)
        h.feedUpstream(#"{"return": [], "id": \#(token)}"# + "\r\n")
        #expect(h.take(1) == "")
        #expect(
            h.other.contains(.internalReply(token: token, message: Array(#"{"return": [], "id": \#(token)}"#.utf8))))
    }

    @Test func localCommandIsAnsweredInOrderAndNeverForwarded() throws {
        var h = RouterHarness(configuration: .init(localCommands: ["x-query-vfio-groups"]))
        h.negotiated(1)
        h.send(1, #"{"execute":"query-status","id":1}{"execute":"x-query-vfio-groups","id":2}"#)
        #expect(h.upstream.count == 1)
        let token = try #require(
            h.other.compactMap {
                if case .localCommand(1, let token, "x-query-vfio-groups", nil) = $0 { token } else { nil }
            }
            .first)
        h.perform(h.router.completeLocalCommand(token: token, reply: .success(Array("[]".utf8))))
        #expect(h.take(1) == "", "waits for the reply to command 1")
        h.replyUpstream(0)
        #expect(h.take(1) == #"{"return": {}, "id": 1}"# + "\r\n" + #"{"return": [], "id": 2}"# + "\r\n")
    }
}

@Suite struct FDPassingTests {
    @Test func fdsSentWithASpaceBeforeGetfdReachQEMUWithIt() {
        // qemu.qmp's send_fd_scm: sendmsg(" ", fd), then the getfd command in a later write.
        var h = RouterHarness()
        h.negotiated(1)
        h.send(1, " ", fds: [50])
        h.send(1, #"{"execute": "getfd", "arguments": {"fdname": "f"}, "id": 1}"#)
        #expect(h.upstream.count == 1)
        #expect(h.upstream[0].fds == [50])
        #expect(h.closed.isEmpty)
    }

    @Test func fdsWithTheCommandBytesTravelWithTheCommand() {
        var h = RouterHarness()
        h.negotiated(1)
        h.send(
            1, #"{"execute":"query-status","id":0}{"execute": "add-fd", "arguments": {"fdset-id": 1}, "id": 1}"#,
            fds: [51, 52])
        #expect(h.upstream.map(\.fds) == [[], [51, 52]])
    }

    @Test func otherCommandsNeverCarryFDsAndLaterBatchesWait() {
        var h = RouterHarness()
        h.negotiated(1)
        h.send(1, #"{"execute":"query-status","id":0}"#, fds: [60])
        #expect(h.upstream.map(\.fds) == [[]])
        // A newer batch replaces the older unconsumed one, as QEMU's char-socket does.
        h.send(1, #"{"execute":"getfd","arguments":{"fdname":"a"}"#, fds: [61])
        #expect(h.closed == [60])
        h.send(1, #","id":1}"#)
        #expect(h.upstream.last?.fds == [61])
        // A getfd with no fds of its own gets none (QEMU answers with its own error). (The reply to
        // the first command frees the client's second slot at QEMU.)
        h.replyUpstream(0)
        h.send(1, #"{"execute":"getfd","arguments":{"fdname":"b"},"id":2}"#)
        #expect(h.upstream.count == 3, "an fd-less command is not held back")
        #expect(h.upstream[2].fds == [])
    }

    @Test func secondFDCommandWaitsForTheFirstReply() {
        var h = RouterHarness()
        h.negotiated(1)
        h.negotiated(2)
        h.send(1, #"{"execute":"getfd","arguments":{"fdname":"a"},"id":1}"#, fds: [70])
        h.send(2, #"{"execute":"getfd","arguments":{"fdname":"b"},"id":1}"#, fds: [71])
        h.send(2, #"{"execute":"query-status","id":2}"#)
        #expect(h.upstream.map(\.fds) == [[70]], "QEMU would replace the first batch with the second")
        h.replyUpstream(0)
        #expect(h.upstream.map(\.fds) == [[70], [71], []])
        #expect(h.take(1) == #"{"return": {}, "id": 1}"# + "\r\n")
    }

    @Test func disconnectClosesHeldFDs() {
        var h = RouterHarness()
        h.negotiated(1)
        h.send(1, " ", fds: [80, 81])
        h.perform(h.router.clientClosed(1))
        #expect(h.closed == [80, 81])
    }

    @Test func fdsOfUnknownClientAreClosed() {
        var h = RouterHarness()
        h.send(9, " ", fds: [90])
        #expect(h.closed == [90])
    }
}

@Suite struct EchoFastPathTests {
    @Test(arguments: [
        #""libvirt-12""#, #""__qmp#00001""#, "0", "7", "123456789012345", "007", "-1", "1.50", #""a\"b""#,
        #""é""#, "'x'", #""""#, "1e3", "9007199254740993", #"{"b": 1, "a": 2}"#,
    ])
    func fastPathAgreesWithQEMUEcho(id: String) {
        let bytes = Array(id.utf8)
        #expect(ProxyRouter.echo(bytes) == (QMPJSON.echoed(bytes) ?? bytes))
    }
}
