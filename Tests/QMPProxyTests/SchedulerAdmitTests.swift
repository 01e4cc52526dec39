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
            switch Int.random(in: 0..<20, using: &random) {
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
            case 17:
                let connected = Int.random(in: 0...3, using: &random)
                viaAdmit.connectedClients = connected
                viaQueue.connectedClients = connected
                drain()
            default:
                viaAdmit.isOpen.toggle()
                viaQueue.isOpen = viaAdmit.isOpen
                drain()
            }
            #expect(sentByAdmit == sentByQueue, "step \(step)")
            for id in 1...4 {
                #expect(viaAdmit.queued(id) == viaQueue.queued(id) && viaAdmit.inFlight(id) == viaQueue.inFlight(id))
            }
            #expect(viaAdmit.fdCommandInFlight == viaQueue.fdCommandInFlight)
            #expect(viaAdmit.totalQueued == viaQueue.totalQueued)
        }
        #expect(admittedAtOnce > 20, "the shortcut was taken")
    }
}
