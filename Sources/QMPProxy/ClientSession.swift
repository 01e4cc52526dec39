import QMPWire

/// One client's side of the proxy: its input stream, its negotiation state, its held file
/// descriptors and its ordered reply queue. Owned and driven by ``ProxyRouter``.
struct ClientSession: Sendable {
    enum Phase: Equatable, Sendable {
        /// Connected before QEMU's greeting reached the sidecar; input waits.
        case awaitingGreeting
        /// Greeting sent; only `qmp_capabilities` succeeds (QEMU's capabilities negotiation mode).
        case capabilities
        /// Negotiated; `oob` when the client enabled out-of-band execution.
        case negotiated(oob: Bool)
    }

    /// A place in the client's in-band reply order.
    enum Slot: Sendable {
        case ready([UInt8])
        /// Waiting for the reply to the sidecar id (or local-command token).
        case waiting(UInt64)
    }

    var phase: Phase
    var framer = QMPFramer()
    /// The client's last command through the express lane, to recognise the next by comparison.
    var prediction = LonePrediction()
    /// Bytes received so far: the stream offset of the next byte.
    var received = 0
    /// Units that arrived before the greeting; handled once it is sent.
    var deferred: [QMPInputUnit] = []
    /// The fds of the latest read that carried fds, with the stream offset at which that read began.
    ///
    /// QEMU's char-socket keeps only the fds of the latest `recvmsg` that carried any, closing older
    /// unconsumed ones; since a read with fds never extends past the end of the `sendmsg` that carried
    /// them, one held batch per client reproduces that exactly.
    var heldFDs: (start: Int, fds: [Int32])?
    private var slots: [Slot] = []
    private var head = 0

    init(phase: Phase) {
        self.phase = phase
    }

    var isNegotiated: Bool {
        if case .negotiated = phase { return true }
        return false
    }

    /// Whether a read may take the express lane: negotiated, no fds held, nothing deferred, no reply
    /// due (the framer's own state is checked by ``QMPFramer/loneObject(_:)``).
    var isExpressReady: Bool {
        guard case .negotiated = phase else { return false }
        return heldFDs == nil && deferred.isEmpty && head == slots.count
    }

    mutating func enqueue(_ slot: Slot) {
        slots.append(slot)
    }

    /// Fills the slot waiting for `token`; false when there is none.
    mutating func fill(_ token: UInt64, with line: [UInt8]) -> Bool {
        for index in head..<slots.count {
            if case .waiting(token) = slots[index] {
                slots[index] = .ready(line)
                return true
            }
        }
        return false
    }

    /// Removes the ready lines at the head of the queue and returns them as one write (a single
    /// line is returned as it is, without a copy), with their number; nil when none is ready.
    mutating func takeReady() -> (bytes: [UInt8], lines: Int)? {
        var bytes: [UInt8] = []
        var lines = 0
        while head < slots.count, case .ready(let line) = slots[head] {
            if lines == 0 { bytes = line } else { bytes += line }
            lines += 1
            slots[head] = .waiting(0)
            head += 1
        }
        defer { compact() }
        return lines == 0 ? nil : (bytes, lines)
    }

    private mutating func compact() {
        if head == slots.count {
            slots.removeAll(keepingCapacity: true)
            head = 0
        } else if head > 64, head * 2 > slots.count {
            slots.removeFirst(head)
            head = 0
        }
    }
}
