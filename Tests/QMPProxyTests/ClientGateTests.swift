import QMPWire
import Testing

@testable import QMPProxy

/// The client gate: clients' commands wait until the sidecar's start-up work (cold-plug discovery)
/// is done, so QEMU never sees a client's `device_del` before the sidecar knows the device.
@Suite struct ClientGateTests {
    static let gated = ProxyRouter.Configuration(
        localCommands: ["x-query"], gateClientCommands: true, maxClientInFlight: 8)

    @Test func clientCommandsWaitForTheGateWhileInternalCommandsPass() throws {
        var h = RouterHarness(configuration: Self.gated)
        #expect(!h.router.isClientGateOpen)
        h.negotiated(1)
        h.send(1, #"{"execute":"device_del","arguments":{"id":"d0"},"id":1}{"execute":"x-query","id":2}"#)
        h.send(1, #"{"execute":"query-status","id":3}"#)
        #expect(h.upstream.isEmpty, "nothing of the client reaches QEMU before the gate opens")
        #expect(!h.other.contains { if case .localCommand = $0 { true } else { false } })
        #expect(h.router.gatedCommands == 3)
        let (token, actions) = h.router.sendInternalCommand("qom-list", arguments: Array(#"{"path": "/a"}"#.utf8))
        h.perform(actions)
        #expect(h.upstream.count == 1, "the sidecar's own discovery is not held")
        h.feedUpstream(#"{"return": [], "id": \#(token)}"# + "\r\n")
        h.upstream.removeAll()

        h.perform(h.router.openClientGate())
        #expect(h.router.isClientGateOpen)
        #expect(h.router.gatedCommands == 0)
        #expect(h.upstream.map(\.text).count == 2)
        #expect(h.upstream[0].text.contains(#""device_del""#))
        #expect(h.upstream[1].text.contains(#""query-status""#))
        let local = try #require(
            h.other.compactMap { if case .localCommand(1, let token, "x-query", nil) = $0 { token } else { nil } }
                .first)
        h.perform(h.router.completeLocalCommand(token: local, reply: .success(Array("[]".utf8))))
        h.replyUpstream(0)
        h.replyUpstream(1)
        #expect(
            h.take(1)
                == #"{"return": {}, "id": 1}"# + "\r\n" + #"{"return": [], "id": 2}"# + "\r\n"
                + #"{"return": {}, "id": 3}"# + "\r\n")
        #expect(h.router.openClientGate().isEmpty, "opening twice does nothing")
    }

    @Test func negotiationStaysLocalAndImmediateWhileTheGateIsClosed() {
        var h = RouterHarness(configuration: Self.gated)
        h.connect(1)
        _ = h.take(1)
        h.send(1, #"{"execute":"qmp_capabilities","id":"n"}"#)
        #expect(h.take(1) == #"{"return": {}, "id": "n"}"# + "\r\n")
        #expect(h.upstream.isEmpty)
    }

    @Test func upstreamLossClosesGatedFDsAndClosesTheGateAgain() {
        var h = RouterHarness(configuration: Self.gated)
        h.negotiated(1)
        h.send(1, " ", fds: [41])
        h.send(1, #"{"execute":"getfd","arguments":{"fdname":"f"},"id":1}"#)
        #expect(h.upstream.isEmpty)
        h.perform(h.router.upstreamClosed())
        #expect(h.closed == [41])
        #expect(h.router.gatedCommands == 0)
        h.perform(h.router.openClientGate())
        #expect(h.router.isClientGateOpen)
        h.perform(h.router.upstreamClosed())
        #expect(!h.router.isClientGateOpen, "each new QEMU session starts gated")
    }

    @Test func heldCommandsAreTracedWhenTheyReachQEMU() {
        var h = RouterHarness(configuration: .init(tracing: true, gateClientCommands: true))
        h.negotiated(1)
        h.other.removeAll()
        h.send(1, #"{"execute":"device_del","arguments":{"id":"d0"},"id":1}"#)
        h.perform(h.router.sendInternalCommand("qom-list", arguments: nil).actions)
        h.perform(h.router.openClientGate())
        let directions = h.other.compactMap { if case .trace(let record) = $0 { record.direction } else { nil } }
        #expect(directions == [.sidecarToQEMU, .clientToQEMU], "the trace keeps the order QEMU sees")
    }

    @Test func withoutGatingCommandsGoStraightOn() {
        var h = RouterHarness()
        #expect(h.router.isClientGateOpen)
        h.negotiated(1)
        h.send(1, #"{"execute":"query-status","id":1}"#)
        #expect(h.upstream.count == 1)
    }
}
