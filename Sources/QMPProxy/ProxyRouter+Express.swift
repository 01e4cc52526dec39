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
    ///
    /// The lane takes a command only when its client waits for no other reply. Its bookkeeping (the
    /// count in flight, the client's reply order, the pending entry) then waits in
    /// ``expressInFlight`` for the reply, which usually comes back through the lane and leaves nothing
    /// to record; ``settleExpress()`` records it when anything else comes first.
    public mutating func expressCommand(
        _ clientID: ClientID, _ bytes: UnsafeRawBufferPointer, line: inout [UInt8]
    ) -> UInt64? {
        guard isExpressOpen, expressInFlight == nil,
            let (message, predicted) = clients.read(
                clientID, { $0.isExpressReady ? $0.framer.loneObject(bytes, predictedBy: $0.prediction) : nil }) ?? nil,
            // A predicted command is the client's last lane command but for its id: it passed these.
            predicted || isExpressCommand(message), scheduler.admitExpress(clientID)
        else { return nil }
        let id = allocateID()
        clients.withValue(forKey: clientID) { session in
            session.framer.consumeLoneObject(byteCount: bytes.count)
            session.received += bytes.count
            if !predicted { session.prediction.remember(message, read: bytes) }
        }
        // The client's id is kept for the reply in a buffer the router reuses: nothing allocates.
        let idBytes = message[.id]
        if let idBytes { expressCommandBytes.overwrite(with: idBytes) }
        expressInFlight = ExpressCommand(client: clientID, id: id, hasOriginalID: idBytes != nil)
        traffic.fromClients += 1
        traffic.toQEMU += 1
        message.writeLine(replacingIDWith: id, into: &line)
        return id
    }

    /// An in-band command QEMU answers: not local or observed, its name a plain token (anything else
    /// takes the general path).
    private func isExpressCommand(_ message: QMPMessageView) -> Bool {
        guard message.range(of: .execOOB) == nil, let name = message[.execute].flatMap(Envelope.plainText(of:))
        else { return false }
        return generalPathCommandNames.index(of: name) == nil
    }

    /// QEMU's read that is one whole successful reply to the express lane's command in flight, as
    /// QEMU writes it (``QMPOutputFramer/loneReply(_:id:)``): writes over `line` the bytes to write
    /// to its client, as ``upstreamReceived(_:into:)`` would have put them in its `sendToClient`
    /// action, and returns the client and the sidecar id of the command (which the general path
    /// reports in `replyRouted`). Nil, changing nothing, for any other read (errors, events,
    /// anything split or batched), which the general path takes.
    public mutating func expressReply(
        _ bytes: UnsafeRawBufferPointer, line: inout [UInt8]
    ) -> (client: ClientID, sidecarID: UInt64)? {
        // Nothing changed since the command went (anything else settles it first): the lane is open.
        guard let command = expressInFlight, let reply = upstreamFramer.loneReply(bytes, id: command.id) else {
            return nil
        }
        expressInFlight = nil
        traffic.fromQEMU += 1
        traffic.toClients += 1
        // The client's id in place of the sidecar's, or no id member when the command had none.
        let head = command.hasOriginalID ? reply.value.lowerBound : reply.member.lowerBound
        let echoed = command.hasOriginalID ? Self.echo(expressCommandBytes[...]) : []
        let tail = reply.end - reply.value.upperBound
        line.overwrite(count: head + echoed.count + tail + 2) { out in
            let from = bytes.bindMemory(to: UInt8.self)
            var to = out.baseAddress!
            to.update(from: from.baseAddress!, count: head)
            to += head
            if !echoed.isEmpty {
                echoed.withUnsafeBufferPointer { to.update(from: $0.baseAddress!, count: $0.count) }
                to += echoed.count
            }
            to.update(from: from.baseAddress! + reply.value.upperBound, count: tail)
            to[tail] = 0x0D
            to[tail + 1] = 0x0A
        }
        return (command.client, command.id)
    }

    /// Records the express command in flight as the general path would have on sending it: counted
    /// by the scheduler, last in its client's reply order, pending. Every entry point but the
    /// lane's calls this first, so the general path never sees the lane's shortcut.
    @inline(__always)
    mutating func settleExpress() {
        if let command = expressInFlight { settle(command) }
    }

    private mutating func settle(_ command: ExpressCommand) {
        expressInFlight = nil
        // Nothing changed since the lane admitted the command: the scheduler admits it again.
        let admitted = scheduler.admitNow(kind: .command, from: command.client)
        assert(admitted, "the express lane's command was admitted when it went")
        clients.withValue(forKey: command.client) { $0.enqueue(.waiting(command.id)) }
        pending[Int(truncatingIfNeeded: command.id)] = .client(
            command.client, originalID: command.hasOriginalID ? expressCommandBytes[...] : nil, kind: .command,
            observed: nil)
    }
}

/// The express lane's command in flight, before ``ProxyRouter/settleExpress()`` records it.
struct ExpressCommand: Sendable {
    let client: ProxyRouter.ClientID
    let id: UInt64
    /// Whether the command had an id (kept in ``ProxyRouter/expressCommandBytes``).
    let hasOriginalID: Bool
}
