import QMPWire

// The express lane: header prediction (as in TCP) for the round trip almost every read is. A client
// read that is one whole plain command while nobody waits, and a QEMU read that is one whole reply
// the client is waiting for next, are routed here without actions, batches or a framer pass. The
// lane changes the router's state exactly as the general path would and returns the same bytes; any
// read it does not recognise is left untouched for the general path (`clientReceived`,
// `upstreamReceived`). `ExpressLaneTests` runs both side by side on random traffic.
extension ProxyRouter {
    /// Whether reads may take the express lane at all: no trace wanted, QEMU ready, the gate open, no
    /// client's command waiting for its turn. Round-trip reports (metrics) are the caller's: the lane
    /// returns the sidecar id they need.
    private var isExpressOpen: Bool {
        !configuration.tracing && phase == .ready && clientGateOpen
            && scheduler.totalQueued == 0 && pausedClients.isEmpty && early.isEmpty
    }

    /// A client's read (without fds) that is one whole in-band command for QEMU which may go now:
    /// writes over `line` the bytes to write to QEMU, as ``clientReceived(_:_:fds:into:)`` would have
    /// put them in its `sendUpstream` action, and returns the sidecar id the command got (with
    /// ``Configuration/reportsRoundTrips`` the general path also reports it in `commandForwarded`).
    /// Nil, changing nothing, for any other read.
    public mutating func expressCommand(
        _ clientID: ClientID, _ bytes: UnsafeRawBufferPointer, line: inout [UInt8]
    ) -> UInt64? {
        guard isExpressOpen,
            let message = clients.read(clientID, { $0.isExpressReady ? $0.framer.loneObject(bytes) : nil }) ?? nil,
            message.range(of: .execOOB) == nil, let name = message[.execute].flatMap(Envelope.plainText(of:)),
            // Local and observed commands take the general path, as do names that are not plain tokens.
            generalPathCommandNames.index(of: name) == nil, scheduler.admitNow(kind: .command, from: clientID)
        else { return nil }
        let id = allocateID()
        clients.withValue(forKey: clientID) { session in
            session.framer.consumeLoneObject(byteCount: bytes.count)
            session.received += bytes.count
            session.enqueue(.waiting(id))
        }
        // The client's id is kept for the reply in a buffer the router keeps: with one command in
        // flight at a time it is unshared again when the next command comes, and no copy allocates.
        var originalID: ArraySlice<UInt8>?
        if let idBytes = message[.id] {
            expressCommandBytes.overwrite(with: idBytes)
            originalID = expressCommandBytes[...]
        }
        pending[Int(truncatingIfNeeded: id)] = .client(clientID, originalID: originalID, kind: .command, observed: nil)
        traffic.fromClients += 1
        traffic.toQEMU += 1
        message.writeLine(replacingIDWith: id, into: &line)
        return id
    }

    /// QEMU's read that is one whole reply to a client's in-band command whose reply that client
    /// gets next: writes over `line` the bytes to write to that client, as
    /// ``upstreamReceived(_:into:)`` would have put them in its `sendToClient` action, and returns the
    /// client and the sidecar id of the command (which the general path reports in `replyRouted`).
    /// Nil, changing nothing, for any other read.
    public mutating func expressReply(
        _ bytes: UnsafeRawBufferPointer, line: inout [UInt8]
    ) -> (client: ClientID, sidecarID: UInt64)? {
        guard isExpressOpen, let message = upstreamFramer.loneMessage(bytes), message.range(of: .qmp) == nil,
            message.range(of: .event) == nil,
            message.range(of: .returnValue) != nil || message.range(of: .error) != nil,
            let id = message[.id].flatMap(Envelope.sidecarID),
            let (clientID, originalID) = pending.read(Int(truncatingIfNeeded: id), Self.expressEntry) ?? nil,
            clients.withValue(forKey: clientID, { $0.takeIfNext(id) }) == true
        else { return nil }
        pending.removeValue(forKey: Int(truncatingIfNeeded: id))
        scheduler.completed(clientID, kind: .command)
        traffic.fromQEMU += 1
        traffic.toClients += 1
        message.writeLine(replacingIDWith: originalID.map(Self.echo), into: &line)
        return (clientID, id)
    }

    /// The client and id of a pending in-band command without fds that nothing observes: the only
    /// kind whose reply the express lane routes.
    private static func expressEntry(_ entry: Pending) -> (ClientID, ArraySlice<UInt8>?)? {
        guard case .client(let clientID, let originalID, .command?, let observed) = entry, observed == nil
        else { return nil }
        return (clientID, originalID)
    }
}
