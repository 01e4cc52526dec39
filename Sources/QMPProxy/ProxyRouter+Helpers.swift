import QMPWire

// Shared by both sides of the router: id echo and decimal ids, greeting and flushing a client, sending
// to QEMU (early or round robin), tracing.
extension ProxyRouter {
    /// The id QEMU would echo for the client's id bytes.
    ///
    /// Fast path for the ids clients really use (libvirt's `"libvirt-N"`, qemu.qmp's `"__qmp#00001"`,
    /// small integers): a double-quoted string of printable ASCII without escapes, or a decimal
    /// integer without leading zeros below 2^53, is echoed unchanged by QEMU.
    static func echo(_ id: ArraySlice<UInt8>) -> ArraySlice<UInt8> {
        if id.withUnsafeBufferPointer({ Envelope.plainText(of: $0) != nil }) { return id }
        if !id.isEmpty, id.count <= 15, id.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }),
            id.count == 1 || id.first != 0x30
        {
            return id
        }
        return QMPJSON.echoed(id).map { $0[...] } ?? id
    }

    static func echo(_ id: [UInt8]) -> [UInt8] { Array(echo(id[...])) }

    mutating func sendGreeting(
        _ clientID: ClientID, _ session: inout ClientSession, into actions: inout [Action]
    ) {
        guard let greeting else { return }
        session.phase = .capabilities
        trace(.sidecarToClient, client: clientID, fds: 0, Self.trimmed(greeting), into: &actions)
        traffic.toClients += 1
        actions.append(.sendToClient(clientID, greeting))
    }

    mutating func flushClient(
        _ clientID: ClientID, _ session: inout ClientSession, into actions: inout [Action]
    ) {
        guard let ready = session.takeReady() else { return }
        traffic.toClients += ready.lines
        actions.append(.sendToClient(clientID, ready.bytes))
    }

    /// Sends a command that never waits for a turn (the sidecar's own, OOB), or holds it until the
    /// upstream negotiation is done. Such commands carry no fds.
    mutating func sendEarly(
        _ item: UpstreamItem, client: ClientID = 0, direction: TraceDirection = .sidecarToQEMU,
        into actions: inout [Action]
    ) {
        trace(direction, client: client, fds: 0, Self.trimmed(item.bytes), into: &actions)
        if phase == .ready {
            traffic.toQEMU += 1
            actions.append(.sendUpstream(item.bytes, fds: []))
        } else {
            early.append(item)
        }
    }

    /// Sends what may go to QEMU now: held early commands, then clients' commands round robin.
    mutating func dispatch(into actions: inout [Action]) {
        guard phase == .ready else { return }
        for item in early {
            traffic.toQEMU += 1
            actions.append(.sendUpstream(item.bytes, fds: []))
        }
        early = []
        while let (clientID, item, _) = scheduler.next() {
            send(item, of: clientID, into: &actions)
        }
    }

    /// Gives a client's entry to the scheduler: sent at once when it may go now (most commands find
    /// nobody waiting), else queued for its turn.
    mutating func schedule(
        _ item: ClientItem, kind: FairScheduler<ClientItem>.Kind, from clientID: ClientID, into actions: inout [Action]
    ) {
        // Early commands are flushed as the upstream becomes ready: none wait ahead of this one.
        guard phase == .ready else {
            scheduler.enqueue(item, kind: kind, from: clientID)
            return
        }
        if let item = scheduler.admit(item, kind: kind, from: clientID) {
            send(item, of: clientID, into: &actions)
        } else {
            dispatch(into: &actions)
        }
    }

    /// An entry the scheduler let go: a local command to answer, or bytes for QEMU.
    private mutating func send(_ item: ClientItem, of clientID: ClientID, into actions: inout [Action]) {
        switch item {
        case .local(let action):
            actions.append(action)
        case .upstream(let item):
            trace(.clientToQEMU, client: clientID, fds: item.fds.count, Self.trimmed(item.bytes), into: &actions)
            traffic.toQEMU += 1
            actions.append(.sendUpstream(item.bytes, fds: item.fds))
        }
        if !pausedClients.isEmpty, scheduler.queued(clientID) < configuration.maxClientQueue,
            pausedClients.remove(clientID) != nil
        {
            actions.append(.setClientReading(clientID, enabled: true))
        }
    }

    /// Runs `body` with the client's session taken out of the table (moved, not copied) while the
    /// router's own methods run on it; nil when the client is not connected.
    @discardableResult
    mutating func withSession<Result>(
        _ clientID: ClientID, _ body: (inout ProxyRouter, inout ClientSession) -> Result
    ) -> Result? {
        var session = clients.checkOut(clientID)
        guard session != nil else { return nil }
        defer { clients.checkIn(&session, forKey: clientID) }
        return body(&self, &session!)
    }

    mutating func allocateID() -> UInt64 {
        defer { nextID += 1 }
        return nextID
    }

    func trace(
        _ direction: TraceDirection, client: Int, fds: Int, _ message: @autoclosure () -> [UInt8],
        into actions: inout [Action]
    ) {
        guard configuration.tracing else { return }
        actions.append(.trace(TraceRecord(direction: direction, client: client, fds: fds, message: message())))
    }

    static func trimmed(_ line: [UInt8]) -> [UInt8] {
        var end = line.count
        while end > 0, line[end - 1] == 0x0A || line[end - 1] == 0x0D { end -= 1 }
        return Array(line[..<end])
    }
}
