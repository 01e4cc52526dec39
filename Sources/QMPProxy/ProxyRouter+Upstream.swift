import QMPWire

// QEMU's side of the router: its greeting, the sidecar's own negotiation, replies and events coming
// back, QEMU going away, and the sidecar's internal commands.
extension ProxyRouter {
    /// Bytes read from QEMU.
    public mutating func upstreamReceived(_ bytes: [UInt8]) -> [Action] {
        var actions: [Action] = []
        actions.reserveCapacity(4)  // a reply, the next commands: no regrowth
        bytes.withUnsafeBytes { upstreamReceived($0, into: &actions) }
        return actions
    }

    /// ``upstreamReceived(_:)`` from a read buffer (valid only during the call), appending to `actions`.
    public mutating func upstreamReceived(_ bytes: UnsafeRawBufferPointer, into actions: inout [Action]) {
        settleExpress()
        // QEMU's output is not bound by its input rules (size, token and nesting limits; `inf`/`nan`):
        // split it by brace depth and find its members by structure (the output grammar for the rest).
        // The framer leaves `self` while it hands messages over, which go on to `self`.
        var framer = upstreamFramer
        upstreamFramer = QMPOutputFramer()
        framer.append(
            bytes,
            scanned: { message in
                traffic.fromQEMU += 1
                handleUpstream(Envelope(message), into: &actions)
            },
            unscanned: { bytes in
                // What QEMU's writer never prints: the grammar says what is wrong, or parses it.
                switch QMPMessage.parseOutput(bytes) {
                case .failure(let error):
                    actions.append(.warning("unparsable output from QEMU: \(error.desc)"))
                case .success(let message):
                    traffic.fromQEMU += 1
                    handleUpstream(Envelope(message), into: &actions)
                }
            })
        upstreamFramer = framer
    }

    private mutating func handleUpstream(_ message: Envelope, into actions: inout [Action]) {
        if message.isGreeting {
            guard phase == .awaitingGreeting else {
                actions.append(.warning("second greeting from QEMU ignored"))
                return
            }
            trace(.qemuToSidecar, client: 0, fds: 0, message.bytes, into: &actions)
            greeting = message.bytes + QEMUReply.crlf
            offered = message.offeredCapabilities
            phase = .negotiating
            let id = allocateID()
            pending[Int(truncatingIfNeeded: id)] = .negotiation
            let arguments = offered.contains("oob") ? ", \"arguments\": {\"enable\": [\"oob\"]}" : ""
            let request = Array("{\"execute\": \"qmp_capabilities\"\(arguments), \"id\": \(id)}".utf8)
            trace(.sidecarToQEMU, client: 0, fds: 0, request, into: &actions)
            traffic.toQEMU += 1
            actions.append(.sendUpstream(request + QEMUReply.crlf, fds: []))
            for clientID in clients.sortedKeys where clients.read(clientID, { $0.phase == .awaitingGreeting }) == true {
                withSession(clientID) { router, session in
                    router.sendGreeting(clientID, &session, into: &actions)
                    let units = session.deferred
                    session.deferred = []
                    for unit in units {
                        router.handleClientUnit(unit, clientID, &session, into: &actions)
                    }
                    router.flushClient(clientID, &session, into: &actions)
                }
            }
            return
        }
        if let name = message.eventName {
            trace(.qemuToClient, client: 0, fds: 0, message.bytes, into: &actions)
            actions.append(.event(name: name, message: message.message))
            return
        }
        guard message.isReply, let id = message.sidecarID,
            let entry = pending.removeValue(forKey: Int(truncatingIfNeeded: id))
        else {
            actions.append(.warning("QEMU sent a message the sidecar cannot route: \(Self.excerpt(message.bytes))"))
            return
        }
        switch entry {
        case .negotiation:
            trace(.qemuToSidecar, client: 0, fds: 0, message.bytes, into: &actions)
            guard message.isSuccess else {
                actions.append(.upstreamFailed("QEMU refused qmp_capabilities: \(Self.excerpt(message.bytes))"))
                return
            }
            phase = .ready
            actions.append(.upstreamReady(oob: offered.contains("oob")))
            dispatch(into: &actions)
        case .sidecar:
            trace(.qemuToSidecar, client: 0, fds: 0, message.bytes, into: &actions)
            actions.append(.internalReply(token: id, message: message.bytes))
        case .client(let clientID, let originalID, let kind, let observed):
            trace(.qemuToClient, client: clientID, fds: 0, message.bytes, into: &actions)
            if configuration.reportsRoundTrips { actions.append(.replyRouted(sidecarID: id)) }
            if let kind {
                scheduler.completed(clientID, kind: kind)
                dispatch(into: &actions)
            }
            if let observed {
                actions.append(
                    .observedReply(name: observed.name, arguments: observed.arguments, succeeded: message.isSuccess))
            }
            guard clients.contains(clientID) else { return }  // gone: drop quietly
            var line = message.message.replacingID(withSlice: originalID.map(Self.echo), spare: 2)
            line.append(contentsOf: QEMUReply.crlf)
            if kind == nil {
                traffic.toClients += 1
                actions.append(.sendToClient(clientID, line))
            } else {
                withSession(clientID) { router, session in
                    _ = session.fill(id, with: line)
                    router.flushClient(clientID, &session, into: &actions)
                }
            }
        }
    }

    /// QEMU closed the connection (or the sidecar gave up on it). Every client is disconnected, held
    /// and unsent fds are closed, and the router waits for a new QEMU greeting.
    public mutating func upstreamClosed() -> [Action] {
        settleExpress()
        var actions: [Action] = []
        for clientID in clients.sortedKeys {
            if let held = clients[clientID]!.heldFDs {
                actions.append(.closeFDs(held.fds))
            }
            actions.append(.disconnectClient(clientID))
        }
        for case .upstream(let item) in scheduler.removeAll() where !item.fds.isEmpty {
            actions.append(.closeFDs(item.fds))
        }
        clientGateOpen = !configuration.gateClientCommands
        scheduler.isOpen = clientGateOpen
        clients.removeAll()
        scheduler.connectedClients = 0
        pending.removeAll()
        localPending.removeAll()
        early = []
        pausedClients = []
        upstreamFramer = QMPOutputFramer()
        greeting = nil
        offered = []
        phase = .awaitingGreeting
        return actions
    }

    /// Sends a command of the sidecar's own; its reply comes back as
    /// ``Action/internalReply(token:message:)`` with the returned token and never reaches a client.
    ///
    /// - Parameter arguments: the text of a JSON object, or nil.
    public mutating func sendInternalCommand(_ name: String, arguments: [UInt8]?) -> (token: UInt64, actions: [Action])
    {
        settleExpress()
        var actions: [Action] = []
        let id = allocateID()
        pending[Int(truncatingIfNeeded: id)] = .sidecar
        var request = Array("{\"execute\": ".utf8) + QMPJSON.quoted(name)
        if let arguments {
            request += Array(", \"arguments\": ".utf8) + arguments
        }
        request += Array(", \"id\": \(id)}".utf8)
        sendEarly(UpstreamItem(bytes: request + QEMUReply.crlf, fds: [], id: id), into: &actions)
        return (id, actions)
    }

    private static func excerpt(_ bytes: [UInt8]) -> String {
        String(decoding: bytes.prefix(200), as: UTF8.self)
    }
}
