import QMPWire

// The clients' side of the router: connections, their input (framing, negotiation, local commands,
// forwarding with fds), event fan-out and local replies.
extension ProxyRouter {
    /// A client connected; it gets QEMU's greeting now, or as soon as the sidecar has it.
    public mutating func clientConnected(_ clientID: ClientID) -> [Action] {
        settleExpress()
        var actions: [Action] = []
        var session = ClientSession(phase: .awaitingGreeting)
        if greeting != nil {
            sendGreeting(clientID, &session, into: &actions)
        }
        clients[clientID] = session
        scheduler.connectedClients = clients.count
        return actions
    }

    /// Bytes (and the fds of the same `recvmsg`) read from a client.
    public mutating func clientReceived(_ clientID: ClientID, _ bytes: [UInt8], fds: [Int32] = [])
        -> [Action]
    {
        var actions: [Action] = []
        actions.reserveCapacity(4)  // the command, its trace or reply: no regrowth
        bytes.withUnsafeBytes { clientReceived(clientID, $0, fds: fds, into: &actions) }
        return actions
    }

    /// ``clientReceived(_:_:fds:)`` from a read buffer (valid only during the call), appending to
    /// `actions` (the sidecar reuses one array for every read).
    public mutating func clientReceived(
        _ clientID: ClientID, _ bytes: UnsafeRawBufferPointer, fds: [Int32] = [], into actions: inout [Action]
    ) {
        settleExpress()
        let known: Void? = withSession(clientID) { router, session in
            let start = session.received
            session.received += bytes.count
            if !fds.isEmpty {
                if let old = session.heldFDs {
                    actions.append(.closeFDs(old.fds))
                }
                session.heldFDs = (start, fds)
            }
            // The framer leaves the session while it hands units over, which go on to the session.
            var framer = QMPFramer()
            swap(&framer, &session.framer)
            if session.phase == .awaitingGreeting {
                framer.append(
                    bytes, parsed: { session.deferred.append(.parsed($0, end: $1)) },
                    frame: { session.deferred.append(.frame($0)) })
            } else {
                framer.append(
                    bytes,
                    parsed: { router.handleParsedMessage($0, end: $1, clientID, &session, into: &actions) },
                    frame: { router.handleClientFrame($0, clientID, &session, into: &actions) })
                router.flushClient(clientID, &session, into: &actions)
            }
            swap(&framer, &session.framer)
        }
        guard known != nil else {
            if !fds.isEmpty { actions.append(.closeFDs(fds)) }
            return
        }
        // The total bounds every client's queue: most reads need no lookup.
        if scheduler.totalQueued >= configuration.maxClientQueue,
            scheduler.queued(clientID) >= configuration.maxClientQueue,
            pausedClients.insert(clientID).inserted
        {
            actions.append(.setClientReading(clientID, enabled: false))
        }
    }

    /// The client went away. Replies to its commands in flight will be dropped quietly.
    public mutating func clientClosed(_ clientID: ClientID) -> [Action] {
        settleExpress()
        guard let session = clients.removeValue(forKey: clientID) else { return [] }
        scheduler.connectedClients = clients.count
        pausedClients.remove(clientID)
        var actions: [Action] = []
        if let held = session.heldFDs {
            actions.append(.closeFDs(held.fds))
        }
        for case .upstream(let item) in scheduler.remove(clientID) where !item.fds.isEmpty {
            actions.append(.closeFDs(item.fds))
        }
        return actions
    }

    /// Sends an event line (CRLF included) to every negotiated client.
    ///
    /// - Parameter synthesized: true for the sidecar's own events (only changes the trace direction).
    public mutating func broadcastEvent(_ line: [UInt8], synthesized: Bool = false) -> [Action] {
        settleExpress()
        var actions: [Action] = []
        actions.reserveCapacity(clients.count + 1)
        if synthesized {
            trace(.sidecarToClient, client: 0, fds: 0, Self.trimmed(line), into: &actions)
        }
        for clientID in clients.sortedKeys where clients.read(clientID, \.isNegotiated) == true {
            traffic.toClients += 1
            actions.append(.sendToClient(clientID, line))
        }
        return actions
    }

    /// Sends one of the sidecar's own events to every negotiated client, each its own line (CRLF
    /// included): the same event told to each as far as it may know (traced per client).
    public mutating func broadcastEvent(lineFor line: (ClientID) -> [UInt8]) -> [Action] {
        settleExpress()
        var actions: [Action] = []
        for clientID in clients.sortedKeys where clients.read(clientID, \.isNegotiated) == true {
            let bytes = line(clientID)
            trace(.sidecarToClient, client: clientID, fds: 0, Self.trimmed(bytes), into: &actions)
            traffic.toClients += 1
            actions.append(.sendToClient(clientID, bytes))
        }
        return actions
    }

    /// Completes a ``Action/localCommand(client:token:name:arguments:)``; its reply takes its place in
    /// the client's in-band order.
    public mutating func completeLocalCommand(token: UInt64, reply: LocalReply) -> [Action] {
        settleExpress()
        guard let entry = localPending.removeValue(forKey: Int(truncatingIfNeeded: token)) else { return [] }
        var actions: [Action] = []
        withSession(entry.client) { router, session in
            let echoed = entry.originalID.map(Self.echo)
            let line: [UInt8]
            switch reply {
            case .success(let value): line = QEMUReply.success(value, echoedID: echoed)
            case .failure(let error): line = QEMUReply.error(error, echoedID: echoed)
            }
            router.trace(.sidecarToClient, client: entry.client, fds: 0, Self.trimmed(line), into: &actions)
            _ = session.fill(token, with: line)
            router.flushClient(entry.client, &session, into: &actions)
        }
        return actions
    }

    // MARK: - Client input

    mutating func handleClientUnit(
        _ unit: QMPInputUnit, _ clientID: ClientID, _ session: inout ClientSession, into actions: inout [Action]
    ) {
        switch unit {
        case .parsed(let message, let end): handleParsedMessage(message, end: end, clientID, &session, into: &actions)
        case .frame(let frame): handleClientFrame(frame, clientID, &session, into: &actions)
        }
    }

    /// A unit the framer parsed already.
    private mutating func handleParsedMessage(
        _ message: QMPMessage, end: Int, _ clientID: ClientID, _ session: inout ClientSession,
        into actions: inout [Action]
    ) {
        traffic.fromClients += 1
        handleClientMessage(Envelope(message), end: end, clientID, &session, into: &actions)
    }

    private mutating func handleClientFrame(
        _ frame: QMPFrame, _ clientID: ClientID, _ session: inout ClientSession, into actions: inout [Action]
    ) {
        traffic.fromClients += 1
        switch frame {
        case .invalid(let error, _):
            replyLocally(QMPBuilder.error(error), clientID, &session, into: &actions)
        case .message(let bytes, let end):
            switch QMPMessage.parse(bytes) {
            case .failure(let error):
                replyLocally(QMPBuilder.error(error), clientID, &session, into: &actions)
            case .success(let message):
                handleClientMessage(Envelope(message), end: end, clientID, &session, into: &actions)
            }
        }
    }

    private mutating func handleClientMessage(
        _ message: Envelope, end: Int, _ clientID: ClientID, _ session: inout ClientSession,
        into actions: inout [Action]
    ) {
        let members = { (try? JSONValue(parsing: message.bytes))?.objectValue ?? [] }
        switch session.phase {
        case .awaitingGreeting:
            preconditionFailure("frames of a client without greeting are deferred")
        case .capabilities:
            switch QEMURequestRules.negotiate(members(), offered: offered) {
            case .error(let error):
                replyLocally(error, id: message.idBytes, clientID, &session, into: &actions)
            case .negotiated(let oob):
                session.phase = .negotiated(oob: oob)
                actions.append(.clientNegotiated(clientID, oob: oob))
                let line = QEMUReply.success(Array("{}".utf8), echoedID: message.idBytes.map(Self.echo))
                trace(.sidecarToClient, client: clientID, fds: 0, Self.trimmed(line), into: &actions)
                session.enqueue(.ready(line))
            }
        case .negotiated(let oob):
            if message.hasExecOOB && !oob {
                replyLocally(
                    QEMURequestRules.rejectWithoutOOB(members()), id: message.idBytes, clientID, &session,
                    into: &actions)
                return
            }
            if message.message.execute != nil, let name = message.commandName(in: localCommandNames) {
                if let error = QEMURequestRules.checkRequest(members(), allowOOB: oob) {
                    replyLocally(error, id: message.idBytes, clientID, &session, into: &actions)
                    return
                }
                let token = allocateID()
                localPending[Int(truncatingIfNeeded: token)] = (clientID, message.idBytes)
                session.enqueue(.waiting(token))
                let local = Action.localCommand(
                    client: clientID, token: token, name: name, arguments: message.argumentBytes)
                schedule(.local(local), kind: .local, from: clientID, into: &actions)
                return
            }
            forward(message, end: end, clientID, &session, into: &actions)
        }
    }

    private mutating func forward(
        _ message: Envelope, end: Int, _ clientID: ClientID, _ session: inout ClientSession,
        into actions: inout [Action]
    ) {
        let id = allocateID()
        let oob = message.isOOBRequest
        var fds: [Int32] = []
        // QEMU refuses `getfd`/`add-fd` as OOB before their handler runs, so their fds stay held.
        if !oob, let held = session.heldFDs, held.start < end, message.commandName(in: Self.fdCommandNames) != nil {
            fds = held.fds
            session.heldFDs = nil
        }
        var bytes = message.message.replacingID(with: id, spare: 2)
        bytes.append(contentsOf: QEMUReply.crlf)
        let item = UpstreamItem(bytes: bytes, fds: fds, id: id)
        let kind: FairScheduler<ClientItem>.Kind? = oob ? nil : (fds.isEmpty ? .command : .fdCommand)
        if configuration.reportsRoundTrips { actions.append(.commandForwarded(sidecarID: id)) }
        var observed: (name: String, arguments: [UInt8])?
        if let name = message.commandName(in: observedCommandNames) {
            let arguments = message.argumentBytes ?? Array("{}".utf8)
            observed = (name, arguments)
            // Reported before the command can reach QEMU: the VFIO side watches what it will open.
            actions.append(.commandObserved(name: name, arguments: arguments))
        }
        pending[Int(truncatingIfNeeded: id)] = .client(
            clientID, originalID: message.idSlice, kind: kind, observed: observed)
        guard let kind else {
            sendEarly(item, client: clientID, direction: .clientToQEMU, into: &actions)
            return
        }
        session.enqueue(.waiting(id))
        schedule(.upstream(item), kind: kind, from: clientID, into: &actions)
    }

    private mutating func replyLocally(
        _ error: QMPErrorText, id: [UInt8]?, _ clientID: ClientID, _ session: inout ClientSession,
        into actions: inout [Action]
    ) {
        replyLocally(QEMUReply.error(error, echoedID: id.map(Self.echo)), clientID, &session, into: &actions)
    }

    private func replyLocally(
        _ line: [UInt8], _ clientID: ClientID, _ session: inout ClientSession, into actions: inout [Action]
    ) {
        trace(.sidecarToClient, client: clientID, fds: 0, Self.trimmed(line), into: &actions)
        session.enqueue(.ready(line))
    }
}
