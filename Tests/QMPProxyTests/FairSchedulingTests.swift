import QMPWire
import Testing

@testable import QMPProxy

/// Fair sharing of the one upstream monitor: QEMU's own dispatcher serves monitors round robin and
/// stops reading a monitor with 8 requests queued; the sidecar must give its clients the same.
@Suite struct FairSchedulingTests {
    /// Plays QEMU for a scheduler: dispatches whatever may go, answers the oldest command in flight,
    /// repeats. Returns the order in which entries reached QEMU.
    private static func drain(_ scheduler: inout FairScheduler<String>) -> [String] {
        var atQEMU: [(client: Int, item: String, kind: FairScheduler<String>.Kind)] = []
        var order: [String] = []
        while true {
            while let next = scheduler.next() {
                order.append(next.item)
                if next.kind != .local { atQEMU.append(next) }
            }
            guard !atQEMU.isEmpty else { return order }
            let answered = atQEMU.removeFirst()
            scheduler.completed(answered.client, kind: answered.kind)
        }
    }

    @Test func aClientBehindAFloodWaitsForAtMostTheBoundOfItsCommands() {
        var scheduler = FairScheduler<String>(maxInFlight: 8, isOpen: false)
        for n in 0..<200 { scheduler.enqueue("A\(n)", kind: .command, from: 1) }
        scheduler.enqueue("B0", kind: .command, from: 2)
        #expect(scheduler.queued(1) == 200)
        scheduler.isOpen = true
        let order = Self.drain(&scheduler)
        let b = order.firstIndex(of: "B0")
        #expect(b != nil && b! <= 8, "B reached QEMU after \(b ?? -1) of A's commands")
        #expect(order.filter { $0.hasPrefix("A") } == (0..<200).map { "A\($0)" }, "A's order holds")
        #expect(scheduler.queued(1) == 0 && scheduler.inFlight(1) == 0)
    }

    @Test func inFlightIsBoundedPerClientAndTurnsRotate() {
        var scheduler = FairScheduler<String>(maxInFlight: 2)
        for n in 0..<4 {
            scheduler.enqueue("A\(n)", kind: .command, from: 1)
            scheduler.enqueue("B\(n)", kind: .command, from: 2)
        }
        var sent: [String] = []
        while let next = scheduler.next() { sent.append(next.item) }
        #expect(sent == ["A0", "B0", "A1", "B1"])
        #expect(scheduler.inFlight(1) == 2 && scheduler.queued(1) == 2)
        scheduler.completed(2, kind: .command)
        #expect(scheduler.next()?.item == "B2", "a freed slot goes to its client even if another waits")
        #expect(scheduler.next() == nil)
    }

    @Test func oneFDCommandInFlightOverAllClientsOthersGoOn() {
        var scheduler = FairScheduler<String>(maxInFlight: 8)
        scheduler.enqueue("A-getfd", kind: .fdCommand, from: 1)
        scheduler.enqueue("B-getfd", kind: .fdCommand, from: 2)
        scheduler.enqueue("B-after", kind: .command, from: 2)
        scheduler.enqueue("C-plain", kind: .command, from: 3)
        var sent: [String] = []
        while let next = scheduler.next() { sent.append(next.item) }
        #expect(sent == ["A-getfd", "C-plain"], "B's fd command waits, and B's next command stays behind it")
        scheduler.completed(1, kind: .fdCommand)
        sent = []
        while let next = scheduler.next() { sent.append(next.item) }
        #expect(sent == ["B-getfd", "B-after"])
    }

    @Test func localEntriesKeepTheirPlaceButTakeNoSlot() {
        var scheduler = FairScheduler<String>(maxInFlight: 1)
        scheduler.enqueue("A0", kind: .command, from: 1)
        scheduler.enqueue("A-local", kind: .local, from: 1)
        scheduler.enqueue("A1", kind: .command, from: 1)
        #expect(scheduler.next()?.item == "A0")
        #expect(scheduler.next()?.item == "A-local", "the local entry needs no slot at QEMU")
        #expect(scheduler.next() == nil, "A1 waits for A0's reply")
        scheduler.completed(1, kind: .command)
        #expect(scheduler.next()?.item == "A1")
    }

    @Test func removingAClientReturnsWhatNeverWent() {
        var scheduler = FairScheduler<String>(maxInFlight: 1)
        scheduler.enqueue("A0", kind: .command, from: 1)
        scheduler.enqueue("A1", kind: .fdCommand, from: 1)
        #expect(scheduler.next()?.item == "A0")
        #expect(scheduler.remove(1) == ["A1"])
        #expect(scheduler.queued(1) == 0)
        scheduler.enqueue("B0", kind: .command, from: 2)
        #expect(scheduler.removeAll() == ["B0"])
    }

    @Test func aLoneClientGetsTheLoneBoundUntilAnotherArrives() {
        var scheduler = FairScheduler<String>(maxInFlight: 1, loneInFlight: 2)
        for n in 0..<4 { scheduler.enqueue("A\(n)", kind: .command, from: 1) }
        #expect(scheduler.next()?.item == "A0")
        #expect(scheduler.next()?.item == "A1", "nobody else is active: A may keep QEMU busy")
        #expect(scheduler.next() == nil, "the lone bound holds")
        scheduler.enqueue("B0", kind: .command, from: 2)
        #expect(scheduler.next()?.item == "B0", "B goes at once, behind A's two")
        scheduler.completed(1, kind: .command)
        #expect(scheduler.next() == nil, "while B is at QEMU, A is held to one in flight")
        scheduler.completed(1, kind: .command)
        #expect(scheduler.next()?.item == "A2")
        #expect(scheduler.next() == nil)
        scheduler.completed(2, kind: .command)
        #expect(scheduler.next()?.item == "A3", "B is done: A is alone again")
    }

    @Test func aClientBehindALoneFloodWaitsForAtMostTheLoneBound() {
        var scheduler = FairScheduler<String>(maxInFlight: 1, loneInFlight: 2)
        for n in 0..<200 { scheduler.enqueue("A\(n)", kind: .command, from: 1) }
        var atQEMU: [(client: Int, item: String, kind: FairScheduler<String>.Kind)] = []
        while let next = scheduler.next() { atQEMU.append(next) }
        #expect(atQEMU.map(\.item) == ["A0", "A1"])
        scheduler.enqueue("B0", kind: .command, from: 2)
        while let next = scheduler.next() { atQEMU.append(next) }
        #expect(atQEMU.map(\.item) == ["A0", "A1", "B0"], "B is at QEMU behind A's lone bound")
        // QEMU answers in order; once B is done, A is alone again and back to two in flight.
        var order = atQEMU.map(\.item)
        while !atQEMU.isEmpty {
            let answered = atQEMU.removeFirst()
            scheduler.completed(answered.client, kind: answered.kind)
            while let next = scheduler.next() {
                atQEMU.append(next)
                order.append(next.item)
            }
            #expect(atQEMU.count <= 2)
        }
        #expect(order.filter { $0.hasPrefix("A") } == (0..<200).map { "A\($0)" }, "A's order holds")
        #expect(scheduler.inFlight(1) == 0 && scheduler.inFlight(2) == 0)
    }

    @Test func aConnectedIdleClientKeepsAFlooderAtTheBound() {
        var scheduler = FairScheduler<String>(maxInFlight: 1, loneInFlight: 2)
        scheduler.connectedClients = 2  // B is connected, idle between its commands
        for n in 0..<200 { scheduler.enqueue("A\(n)", kind: .command, from: 1) }
        var sent: [String] = []
        while let next = scheduler.next() { sent.append(next.item) }
        #expect(sent == ["A0"], "B may send any time: A has one at QEMU, as on a monitor of its own")
        scheduler.enqueue("B0", kind: .command, from: 2)
        while let next = scheduler.next() { sent.append(next.item) }
        #expect(sent == ["A0", "B0"], "B waits behind A's one running command only")
        scheduler.completed(1, kind: .command)
        scheduler.completed(2, kind: .command)
        scheduler.connectedClients = 1  // B left
        while let next = scheduler.next() { sent.append(next.item) }
        #expect(sent == ["A0", "B0", "A1", "A2"], "alone again: the lone bound")
    }

    @Test func aRemovedClientStopsCountingAsActive() {
        var scheduler = FairScheduler<String>(maxInFlight: 1, loneInFlight: 3)
        scheduler.enqueue("B0", kind: .command, from: 2)
        scheduler.enqueue("B1", kind: .command, from: 2)
        for n in 0..<3 { scheduler.enqueue("A\(n)", kind: .command, from: 1) }
        var sent: [String] = []
        while let next = scheduler.next() { sent.append(next.item) }
        #expect(sent == ["B0", "A0"], "two active clients: one each")
        #expect(scheduler.remove(2) == ["B1"])
        while let next = scheduler.next() { sent.append(next.item) }
        #expect(sent == ["B0", "A0", "A1", "A2"], "B gone: A is alone and gets the lone bound")
    }

    // MARK: Through the router

    private static let schema = #"{"execute":"query-qmp-schema","id":"s"}"#

    @Test func routerFloodBoundOOBOvertakesAndRepliesKeepEachClientsOrder() throws {
        // The sidecar's defaults: 1 in flight (2 for a client alone), 8 queued. B is connected.
        var h = RouterHarness(configuration: .init())
        h.negotiated(1, oob: true)
        h.negotiated(2)
        h.send(1, String(repeating: Self.schema, count: 200) + "[")
        #expect(h.upstream.count == 1, "B is connected: A has one command at QEMU, as on a monitor of its own")
        #expect(h.router.commandsInFlight(of: 1) == 1 && h.router.queuedCommands(of: 1) == 199)
        #expect(h.other.contains { if case .setClientReading(1, enabled: false) = $0 { true } else { false } })
        h.send(2, #"{"execute":"query-status","id":"b"}"#)
        #expect(h.upstream.count == 2 && h.upstream[1].text.contains("query-status"), "B is not queued behind A")
        // A's malformed command (local error) and an OOB command, with 199 of its commands waiting.
        h.send(1, #"1]{"exec-oob":"migrate-pause","id":"o"}"#)
        #expect(h.upstream.count == 3 && h.upstream[2].text.contains("migrate-pause"), "OOB never waits")

        h.replyUpstream(2)
        #expect(h.take(1) == #"{"return": {}, "id": "o"}"# + "\r\n", "the OOB reply overtakes")
        h.feedUpstream(#"{"return": [], "id": \#(h.upstreamID(0))}"# + "\r\n")
        #expect(h.upstream.count == 4 && h.upstream[3].text.contains("query-qmp-schema"), "A's next takes its slot")
        h.feedUpstream(#"{"return": {"status": "running"}, "id": \#(h.upstreamID(1))}"# + "\r\n")
        #expect(h.take(2).contains(#""id": "b""#))
        #expect(h.upstream.count == 4, "B is idle but connected: A stays at one in flight")

        // QEMU answers A's commands in order until all went through.
        var answered = 0
        var resumed = false
        while answered < h.upstream.count {
            let text = h.upstream[answered].text
            if text.contains("query-qmp-schema"), answered != 0 {
                h.feedUpstream(#"{"return": [], "id": \#(h.upstreamID(answered))}"# + "\r\n")
            }
            answered += 1
            resumed =
                resumed || h.other.contains { if case .setClientReading(1, enabled: true) = $0 { true } else { false } }
        }
        #expect(resumed, "A is read again once its queue has room")
        let replies = h.take(1)
        let lines = replies.split(separator: "\r\n", omittingEmptySubsequences: true)
        #expect(lines.count == 201)
        #expect(lines.prefix(200).allSatisfy { $0 == #"{"return": [], "id": "s"}"# })
        #expect(lines.last?.contains("GenericError") == true, "the local error keeps its place after A's 200")
        #expect(h.router.commandsInFlight(of: 1) == 0 && h.router.queuedCommands(of: 1) == 0)
    }

    @Test func routerLoneClientKeepsTwoAtQEMUUntilAnotherConnects() {
        var h = RouterHarness(configuration: .init())
        h.negotiated(1)
        h.send(1, String(repeating: Self.schema, count: 20))
        #expect(h.upstream.count == 2, "A, the only client, has the lone bound at QEMU")
        h.negotiated(2)
        h.send(2, #"{"execute":"query-status","id":"b"}"#)
        #expect(h.upstream.count == 3 && h.upstream[2].text.contains("query-status"), "B goes at once, behind A's two")
        h.replyUpstream(0)
        #expect(h.upstream.count == 3, "B is connected: A is held to one in flight")
        h.replyUpstream(1)
        #expect(h.upstream.count == 4, "A back under the bound: its next goes")
        h.replyUpstream(2)
        #expect(h.take(2).contains(#""id": "b""#))
        h.perform(h.router.clientClosed(2))
        h.replyUpstream(3)
        #expect(h.upstream.count == 6, "B gone: A alone again keeps two at QEMU")
        #expect(h.router.commandsInFlight(of: 1) == 2)
    }

    @Test func aClosingClientsQueuedFDsAreClosed() {
        var h = RouterHarness(configuration: .init(maxClientInFlight: 2))
        h.negotiated(1)
        h.send(1, String(repeating: Self.schema, count: 2))
        h.send(1, " ", fds: [51])
        h.send(1, #"{"execute":"getfd","arguments":{"fdname":"f"},"id":1}"#)
        #expect(h.upstream.count == 2 && h.router.queuedCommands(of: 1) == 1)
        h.perform(h.router.clientClosed(1))
        #expect(h.closed == [51])
        #expect(h.router.queuedCommands(of: 1) == 0)
    }
}
