/// Which client's command goes to QEMU next, when all clients share one upstream monitor.
///
/// QEMU with a monitor per client is fair: its dispatcher (`monitor_qmp_requests_pop_any_with_lock`
/// in `monitor/qmp.c`) takes one request from the first monitor that has one and moves that monitor
/// to the end of its list, and a monitor with `QMP_REQ_QUEUE_LEN_MAX` (8) requests queued is not read
/// further. Through one upstream connection QEMU sees a single monitor and serves it first in first
/// out, so the sidecar does the round robin itself:
///
/// - every client has its own first-in first-out queue; entries leave it in the client's order;
/// - a client has at most ``maxInFlight`` commands sent to QEMU and unanswered, so another client's
///   command waits behind at most that many of its commands in QEMU's queue;
/// - a client alone (the only one connected, ``connectedClients``, and no other client has an entry
///   waiting or a command in flight) may have up to ``loneInFlight``: nobody waits behind it, and
///   QEMU is not left idle while each reply crosses the sidecar. A client that is connected, even
///   idle, keeps everyone else at ``maxInFlight``, so its next command waits behind no more than on a
///   monitor of its own. Only a client that connects while a lone client has more than
///   ``maxInFlight`` at QEMU waits behind up to ``loneInFlight`` of its commands, once; the lone
///   client gets no slot until it is back under ``maxInFlight``;
/// - the client served last moves to the end of the round;
/// - at most one fd-carrying command is in flight over all clients (QEMU would replace its fds);
///   a client whose next command carries fds waits for that, the others go on;
/// - local entries (commands the sidecar answers itself) keep their place in their client's order
///   but take no slot at QEMU;
/// - while closed (``isOpen``) nothing leaves; entries wait in order.
///
/// OOB commands never enter the scheduler: they never wait.
struct FairScheduler<Item: Sendable>: Sendable {
    typealias ClientID = Int

    enum Kind: Equatable, Sendable {
        case command
        case fdCommand
        case local
    }

    private struct Queue: Sendable {
        var entries: [(item: Item, kind: Kind)] = []
        var head = 0
        var inFlight = 0

        var count: Int { entries.count - head }
        /// Whether the client has anything waiting or at QEMU.
        var isActive: Bool { head < entries.count || inFlight > 0 }

        /// Drops the first entry (its item was taken), counting it in flight unless it is local.
        mutating func popFirst(counting: Bool) {
            head += 1
            if head == entries.count {
                entries.removeAll(keepingCapacity: entries.capacity <= 64)
                head = 0
            } else if head > 64, head * 2 > entries.count {
                entries.removeFirst(head)
                head = 0
            }
            if counting { inFlight += 1 }
        }
    }

    /// Commands one client may have at QEMU, unanswered, while other clients are active.
    let maxInFlight: Int
    /// Commands a client may have at QEMU, unanswered, while no other client is active.
    let loneInFlight: Int
    /// While false, nothing is dispatched.
    var isOpen: Bool
    /// Clients connected, as the owner counts them (0 when it does not): the lone bound applies only
    /// while at most one is.
    var connectedClients = 0
    private var queues = IDTable<Queue>()
    /// The round: clients in the order they are offered a turn; the one served moves to the end.
    private var round: [ClientID] = []
    /// Whether an fd-carrying command is at QEMU, unanswered.
    private(set) var fdCommandInFlight = false

    /// A `loneInFlight` below `maxInFlight` counts as `maxInFlight`.
    init(maxInFlight: Int, loneInFlight: Int = 0, isOpen: Bool = true) {
        precondition(maxInFlight > 0, "FairScheduler: maxInFlight must be positive")
        self.maxInFlight = maxInFlight
        self.loneInFlight = max(maxInFlight, loneInFlight)
        self.isOpen = isOpen
    }

    /// Entries of `client` waiting to be dispatched.
    func queued(_ client: ClientID) -> Int { queues.read(client) { $0.count } ?? 0 }

    /// Commands of `client` dispatched and not yet ``completed(_:kind:)``.
    func inFlight(_ client: ClientID) -> Int { queues.read(client) { $0.inFlight } ?? 0 }

    /// Entries waiting over all clients.
    private(set) var totalQueued = 0
    /// Clients with an entry waiting or a command in flight.
    private var activeClients = 0

    /// Appends an entry to the client's queue.
    mutating func enqueue(_ item: Item, kind: Kind, from client: ClientID) {
        totalQueued += 1
        let wasActive = queues.withValue(forKey: client) { queue in
            let active = queue.isActive
            queue.entries.append((item, kind))
            return active
        }
        if wasActive == false { activeClients += 1 }
        if wasActive == nil {
            var queue = Queue()
            queue.entries.append((item, kind))
            queues[client] = queue
            round.append(client)
            activeClients += 1
        }
    }

    /// Dispatches the entry at once when nothing else is waiting and it may go (what ``next()`` would
    /// do right after ``enqueue(_:kind:from:)``, without queueing it); otherwise queues it and
    /// returns nil. Most commands arrive to an empty scheduler.
    mutating func admit(_ item: Item, kind: Kind, from client: ClientID) -> Item? {
        guard admitNow(kind: kind, from: client) else {
            enqueue(item, kind: kind, from: client)
            return nil
        }
        return item
    }

    /// Counts an entry as dispatched and returns true when ``admit(_:kind:from:)`` would let it go
    /// at once; otherwise changes nothing and returns false.
    mutating func admitNow(kind: Kind, from client: ClientID) -> Bool {
        guard let (queue, active) = admission(kind: kind, from: client) else { return false }
        // As served by `next()`: the client goes to the end of the round; a local entry takes no
        // slot and leaves the client as active as it was.
        let counting = kind != .local
        if queue == nil {
            var added = Queue()
            if counting { added.inFlight = 1 }
            queues[client] = added
            round.append(client)
        } else {
            if counting { queues.withValue(forKey: client) { $0.inFlight += 1 } }
            if round.last != client, let position = round.firstIndex(of: client) {
                round.remove(at: position)
                round.append(client)
            }
        }
        if counting { activeClients = active }
        if kind == .fdCommand { fdCommandInFlight = true }
        return true
    }

    /// The express lane's admission of an in-band command of `client`, which has no command in flight
    /// (the lane takes only clients that wait for no reply): true when ``admitNow(kind:from:)`` would
    /// admit it, which then only the closed gate or a queued entry prevents. Makes only the change
    /// that admitting and then completing the command leaves (the client served last, with a
    /// queue); the count in flight is ``admitNow(kind:from:)``'s once the lane settles the command,
    /// and never made when its reply comes back through the lane.
    mutating func admitExpress(_ client: ClientID) -> Bool {
        assert(inFlight(client) == 0, "the express lane's client has no command in flight")
        guard isOpen, totalQueued == 0 else { return false }
        if round.last != client {
            if let position = round.firstIndex(of: client) {
                round.remove(at: position)
            } else {
                queues[client] = Queue()
            }
            round.append(client)
        }
        return true
    }

    /// The test of ``admitNow(kind:from:)``, changing nothing: the client's queue (if it has one) and
    /// the number of active clients with it, or nil when the entry has to wait.
    private func admission(kind: Kind, from client: ClientID) -> (queue: (isActive: Bool, inFlight: Int)?, active: Int)?
    {
        guard isOpen, totalQueued == 0, kind != .fdCommand || !fdCommandInFlight else { return nil }
        let queue = queues.read(client) { (isActive: $0.isActive, inFlight: $0.inFlight) }
        // The client counts as active from this entry on, as it would once queued.
        let active = queue?.isActive == true ? activeClients : activeClients + 1
        let limit = active == 1 && connectedClients <= 1 ? loneInFlight : maxInFlight
        guard kind == .local || (queue?.inFlight ?? 0) < limit else { return nil }
        return (queue, active)
    }

    /// QEMU answered a command dispatched for `client` (the client may be gone by now).
    mutating func completed(_ client: ClientID, kind: Kind) {
        if kind == .fdCommand { fdCommandInFlight = false }
        guard kind != .local else { return }
        let idle = queues.withValue(forKey: client) { queue in
            guard queue.inFlight > 0 else { return false }
            queue.inFlight -= 1
            return !queue.isActive
        }
        if idle == true { activeClients -= 1 }
    }

    /// The next entry to dispatch, round robin over the clients that may send; nil when none may.
    mutating func next() -> (client: ClientID, item: Item, kind: Kind)? {
        // Most calls find nothing queued (each reply asks): answer those without a lookup.
        guard isOpen, totalQueued > 0 else { return nil }
        // Every client looked at below has an entry waiting, so it is active itself.
        let limit = activeClients == 1 && connectedClients <= 1 ? loneInFlight : maxInFlight
        for (position, client) in round.enumerated() {
            // In place: one lookup, no copy of the queue's entries.
            let fdBusy = fdCommandInFlight
            let taken = queues.withValue(forKey: client) { queue -> (item: Item, kind: Kind, idle: Bool)? in
                guard queue.count > 0 else { return nil }
                let (item, kind) = queue.entries[queue.head]
                switch kind {
                case .local: break
                case .command: guard queue.inFlight < limit else { return nil }
                case .fdCommand: guard queue.inFlight < limit, !fdBusy else { return nil }
                }
                queue.popFirst(counting: kind != .local)
                return (item, kind, !queue.isActive)
            }
            guard let (item, kind, idle) = taken ?? nil else { continue }
            if idle { activeClients -= 1 }
            totalQueued -= 1
            if kind == .fdCommand { fdCommandInFlight = true }
            if position != round.count - 1 {
                round.remove(at: position)
                round.append(client)
            }
            return (client, item, kind)
        }
        return nil
    }

    /// Forgets a client; returns its entries that were never dispatched. Its commands in flight still
    /// count for the fd rule until ``completed(_:kind:)``.
    mutating func remove(_ client: ClientID) -> [Item] {
        guard let queue = queues.removeValue(forKey: client) else { return [] }
        totalQueued -= queue.count
        if queue.isActive { activeClients -= 1 }
        round.removeAll { $0 == client }
        return queue.entries[queue.head...].map(\.item)
    }

    /// Forgets everything (QEMU went away); returns every undispatched entry.
    mutating func removeAll() -> [Item] {
        let items = round.flatMap { client in queues.read(client) { $0.entries[$0.head...].map(\.item) } ?? [] }
        queues.removeAll()
        round = []
        totalQueued = 0
        activeClients = 0
        fdCommandInFlight = false
        return items
    }
}
