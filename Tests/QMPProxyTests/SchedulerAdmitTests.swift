import Testing

@testable import QMPProxy

/// `FairScheduler.admit` is a shortcut: an entry it lets go at once is the one `next()` would have
/// returned right after `enqueue`, and the scheduler is left in the same state. Checked by running
/// both ways side by side over random arrivals, replies, departures, gate and connection changes.
@Suite struct SchedulerAdmitTests {
    private typealias Scheduler = FairScheduler<Int>

    @Test(arguments: [(1, 1), (1, 2), (2, 2), (3, 5)], [11, 12, 13] as [UInt64])
    func admitDispatchesWhatEnqueueAndNextWould(bounds: (Int, Int), seed: UInt64) {
        var random = Xorshift(seed: seed)
        var viaAdmit = Scheduler(maxInFlight: bounds.0, loneInFlight: bounds.1)
        var viaQueue = Scheduler(maxInFlight: bounds.0, loneInFlight: bounds.1)
        var atQEMU: [(client: Int, kind: Scheduler.Kind)] = []
        var admittedAtOnce = 0
        for step in 0..<5_000 {
            let client = Int.random(in: 1...4, using: &random)
            var sentByAdmit: [Int] = []
            var sentByQueue: [Int] = []
            func drain() {
                while let next = viaAdmit.next() { sentByAdmit.append(next.item) }
                while let next = viaQueue.next() {
                    sentByQueue.append(next.item)
                    if next.kind != .local { atQEMU.append((next.client, next.kind)) }
                }
            }
            switch Int.random(in: 0..<19, using: &random) {
            case 0..<9:
                let kind: Scheduler.Kind = [.command, .command, .command, .fdCommand, .local].randomElement(
                    using: &random)!
                if let item = viaAdmit.admit(step, kind: kind, from: client) {
                    sentByAdmit.append(item)
                    admittedAtOnce += 1
                }
                viaQueue.enqueue(step, kind: kind, from: client)
                drain()
            case 9..<16:
                guard !atQEMU.isEmpty else { continue }
                let answered = atQEMU.remove(at: Int.random(in: 0..<atQEMU.count, using: &random))
                viaAdmit.completed(answered.client, kind: answered.kind)
                viaQueue.completed(answered.client, kind: answered.kind)
                drain()
            case 16:
                #expect(viaAdmit.remove(client) == viaQueue.remove(client))
                drain()
            default:
                Self.changeAlike(&viaAdmit, &viaQueue, using: &random)
                drain()
            }
            #expect(sentByAdmit == sentByQueue, "step \(step)")
            Self.expectAlike(viaAdmit, viaQueue, step)
            #expect(viaAdmit.fdCommandInFlight == viaQueue.fdCommandInFlight)
        }
        #expect(admittedAtOnce > 20, "the shortcut was taken")
    }

    /// `admitExpress` (the express lane's admission, for a client with no command in flight) answers
    /// as `admitNow` would, and leaves what `admitNow` then `completed` leave: a lane round trip,
    /// whose count in flight is never made.
    /// When the lane settles its command instead, `admitNow` must admit it again, and from there on
    /// both schedulers serve the same order.
    @Test(arguments: [(1, 1), (2, 2), (3, 5)], [31, 32, 33] as [UInt64])
    func expressAdmissionLeavesWhatARoundTripLeaves(bounds: (Int, Int), seed: UInt64) {
        var random = Xorshift(seed: seed)
        var viaExpress = Scheduler(maxInFlight: bounds.0, loneInFlight: bounds.1)
        var viaAdmit = Scheduler(maxInFlight: bounds.0, loneInFlight: bounds.1)
        var atQEMU: [Int] = []
        var roundTrips = 0
        for step in 0..<5_000 {
            let client = Int.random(in: 1...4, using: &random)
            var sentByExpress: [Int] = []
            var sentByAdmit: [Int] = []
            func drain() {
                while let next = viaExpress.next() { sentByExpress.append(next.item) }
                while let next = viaAdmit.next() {
                    sentByAdmit.append(next.item)
                    atQEMU.append(next.client)
                }
            }
            switch Int.random(in: 0..<21, using: &random) {
            case 0..<6:
                let byExpress = viaExpress.admit(step, kind: .command, from: client)
                let byAdmit = viaAdmit.admit(step, kind: .command, from: client)
                #expect(byExpress == byAdmit, "step \(step)")
                if byAdmit != nil { atQEMU.append(client) }
                drain()
            case 6..<12:
                guard !atQEMU.isEmpty else { continue }
                let answered = atQEMU.remove(at: Int.random(in: 0..<atQEMU.count, using: &random))
                viaExpress.completed(answered, kind: .command)
                viaAdmit.completed(answered, kind: .command)
                drain()
            case 12..<18:
                // The lane takes only a client with no command in flight.
                guard viaAdmit.inFlight(client) == 0 else { continue }
                let admitted = viaAdmit.admitNow(kind: .command, from: client)
                let admittedByLane = viaExpress.admitExpress(client)
                #expect(admittedByLane == admitted, "step \(step)")
                guard admitted else { continue }
                if Bool.random(using: &random) {
                    // The reply comes back through the lane.
                    viaAdmit.completed(client, kind: .command)
                    roundTrips += 1
                } else {
                    // Anything else comes first: the lane settles the command.
                    let settled = viaExpress.admitNow(kind: .command, from: client)
                    #expect(settled, "step \(step)")
                    atQEMU.append(client)
                }
            case 18:
                #expect(viaExpress.remove(client) == viaAdmit.remove(client))
                atQEMU.removeAll { $0 == client }
                drain()
            default:
                // Opening the gate frees every client's queue at once: the round's order decides.
                Self.changeAlike(&viaExpress, &viaAdmit, using: &random)
                drain()
            }
            #expect(sentByExpress == sentByAdmit, "step \(step)")
            Self.expectAlike(viaExpress, viaAdmit, step)
        }
        #expect(roundTrips > 20, "the lane's round trips were made: \(roundTrips)")
    }

    /// The same random change to both schedulers: the number of connected clients, or the gate.
    private static func changeAlike(_ a: inout Scheduler, _ b: inout Scheduler, using random: inout Xorshift) {
        if Bool.random(using: &random) {
            let connected = Int.random(in: 0...3, using: &random)
            a.connectedClients = connected
            b.connectedClients = connected
        } else {
            a.isOpen.toggle()
            b.isOpen = a.isOpen
        }
    }

    /// Both schedulers hold the same entries for every client.
    private static func expectAlike(_ a: Scheduler, _ b: Scheduler, _ step: Int) {
        for id in 1...4 {
            #expect(a.queued(id) == b.queued(id) && a.inFlight(id) == b.inFlight(id), "step \(step)")
        }
        #expect(a.totalQueued == b.totalQueued, "step \(step)")
    }
}
