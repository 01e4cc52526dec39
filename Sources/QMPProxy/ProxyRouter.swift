import QMPWire

/// The proxy's protocol core: one upstream QMP session shared by any number of clients.
///
/// A pure state machine. The I/O shell feeds it bytes (and fds) read from QEMU and from clients and
/// performs the returned ``Action``s in order. What it guarantees:
///
/// - The sidecar negotiates with QEMU itself (enabling `oob` when offered). Each client gets QEMU's
///   greeting bytes unchanged and negotiates on its own; until then it gets exactly QEMU 7.2's
///   capabilities-mode replies, produced locally, and no events.
/// - Every forwarded command carries an id of the sidecar's namespace (a decimal integer). QEMU's reply
///   goes back to the client that sent it, with the client's id restored as QEMU would have echoed it
///   (or removed when the client sent none); all other bytes are QEMU's.
/// - In-band replies reach each client in the order of its commands, including replies the sidecar
///   produces itself (malformed input, negotiation, local commands). OOB replies may overtake.
/// - Malformed input gets QEMU's error text on that client only and never reaches QEMU.
/// - File descriptors: per client, the fds of the latest read that carried fds are held, and a
///   `getfd`/`add-fd` whose bytes ended after that read began takes them (QEMU's char-socket rule).
///   Upstream, an fd batch travels with the first bytes of its command, and no second fd-carrying
///   command is sent before QEMU replied to the previous one (QEMU would replace the first batch).
///   The `getfd` namespace is QEMU's, one per QEMU connection, so all clients share it.
/// - Fairness: clients' in-band commands reach QEMU round robin with at most
///   ``Configuration/maxClientInFlight`` in flight per client (``FairScheduler``), as QEMU's
///   dispatcher serves monitors of their own; a client with ``Configuration/maxClientQueue``
///   commands waiting is not read further (``Action/setClientReading(_:enabled:)``). OOB commands
///   never wait.
///
/// - Important: fds handed in become the router's; every one leaves again in exactly one
///   ``Action/sendUpstream(_:fds:)`` or ``Action/closeFDs(_:)``.
public struct ProxyRouter: Sendable {
    public typealias ClientID = Int

    public struct Configuration: Sendable {
        /// Commands answered by the sidecar itself (``Action/localCommand(client:token:name:arguments:)``).
        public var localCommands: Set<String>
        /// Commands whose forwarding and reply are reported (``Action/commandObserved(name:arguments:)``,
        /// ``Action/observedReply(name:arguments:succeeded:)``): what the VFIO side must see, e.g.
        /// `device_add`, without the router knowing why.
        public var observedCommands: Set<String>
        /// Emit ``Action/trace(_:)`` for every message (off: no cost).
        public var tracing: Bool
        /// Hold clients' commands (after their own negotiation, which stays local and immediate) from
        /// each upstream negotiation until ``ProxyRouter/openClientGate()``: the sidecar's own start-up
        /// commands (cold-plug discovery) then finish before any client command reaches QEMU.
        public var gateClientCommands: Bool
        /// Per client: commands waiting for their turn beyond which the client is not read (QEMU
        /// suspends a monitor with `QMP_REQ_QUEUE_LEN_MAX`, 8, requests queued).
        public var maxClientQueue: Int
        /// Per client: in-band commands at QEMU unanswered. Another client's command waits behind at
        /// most this many of one client's in QEMU's queue. With 1, exactly what QEMU's dispatcher
        /// does with monitors of their own (it lets the running command finish); 2 keeps QEMU busy
        /// for a lone client pipelining while a reply crosses the sidecar, at the others' expense.
        public var maxClientInFlight: Int
        /// Emit ``Action/commandForwarded(sidecarID:)`` and ``Action/replyRouted(sidecarID:)`` so the
        /// performer can time each client command's round trip (off: no cost).
        public var reportsRoundTrips: Bool

        public init(
            localCommands: Set<String> = [], observedCommands: Set<String> = [], tracing: Bool = false,
            gateClientCommands: Bool = false, maxClientQueue: Int = 8, maxClientInFlight: Int = 1,
            reportsRoundTrips: Bool = false
        ) {
            self.localCommands = localCommands
            self.observedCommands = observedCommands
            self.tracing = tracing
            self.gateClientCommands = gateClientCommands
            self.maxClientQueue = max(1, maxClientQueue)
            self.maxClientInFlight = max(1, maxClientInFlight)
            self.reportsRoundTrips = reportsRoundTrips
        }
    }

    /// Directions of the trace format (docs/ARCHITECTURE.md "Trace format").
    public enum TraceDirection: String, Sendable {
        case clientToQEMU = "client-to-qemu"
        case qemuToClient = "qemu-to-client"
        case sidecarToQEMU = "sidecar-to-qemu"
        case qemuToSidecar = "qemu-to-sidecar"
        case sidecarToClient = "sidecar-to-client"
    }

    /// One traced message: `message` holds its bytes without a trailing CR/LF.
    public struct TraceRecord: Equatable, Sendable {
        public var direction: TraceDirection
        /// The client number, 0 for none or for all (events).
        public var client: Int
        public var fds: Int
        public var message: [UInt8]
    }

    /// The answer to a local command.
    public enum LocalReply: Equatable, Sendable {
        /// `{"return": value}`; `value` is one JSON value, QEMU-style text.
        case success([UInt8])
        case failure(QMPErrorText)
    }

    public enum Action: Equatable, Sendable {
        /// Write these bytes (one or more complete lines) to the client.
        case sendToClient(ClientID, [UInt8])
        /// Write to QEMU; when `fds` is not empty they go in one `sendmsg` with the first bytes, and
        /// the performer closes its copies afterwards.
        case sendUpstream([UInt8], fds: [Int32])
        /// Close these fds (nobody will consume them).
        case closeFDs([Int32])
        /// Close the client's connection (QEMU went away).
        case disconnectClient(ClientID)
        /// Stop (false) or resume (true) reading the client: its queue is full (backpressure, as QEMU
        /// suspends a monitor) or has room again.
        case setClientReading(ClientID, enabled: Bool)
        /// The sidecar's own negotiation with QEMU succeeded.
        case upstreamReady(oob: Bool)
        /// QEMU refused the sidecar's negotiation: treat the upstream as failed.
        case upstreamFailed(String)
        /// An event from QEMU, parsed once here (its line is `message.bytes` plus CRLF). Broadcast it
        /// with ``ProxyRouter/broadcastEvent(_:synthesized:)`` unless it is held back.
        case event(name: String, message: QMPMessage)
        /// A client's command of ``Configuration/observedCommands`` is about to go to QEMU (reported
        /// before its bytes are in any ``Action/sendUpstream(_:fds:)``); `arguments` is the text of its
        /// arguments object (`{}` when absent).
        case commandObserved(name: String, arguments: [UInt8])
        /// QEMU answered an observed command.
        case observedReply(name: String, arguments: [UInt8], succeeded: Bool)
        /// A command the sidecar answers itself; reply with ``ProxyRouter/completeLocalCommand(token:reply:)``.
        case localCommand(client: ClientID, token: UInt64, name: String, arguments: [UInt8]?)
        /// The reply to one of the sidecar's own commands (never shown to a client).
        case internalReply(token: UInt64, message: [UInt8])
        /// Something unexpected worth a log line (e.g. QEMU output the proxy cannot route).
        case warning(String)
        case trace(TraceRecord)
        /// A client command was accepted for QEMU (``Configuration/reportsRoundTrips``).
        case commandForwarded(sidecarID: UInt64)
        /// QEMU's reply to that command was routed back (``Configuration/reportsRoundTrips``).
        case replyRouted(sidecarID: UInt64)
        /// A client completed its own `qmp_capabilities`.
        case clientNegotiated(ClientID, oob: Bool)
    }

    private enum UpstreamPhase: Equatable {
        case awaitingGreeting
        case negotiating
        case ready
    }

    private enum Pending {
        case negotiation
        case sidecar
        /// `kind` is nil for OOB commands (they bypass the scheduler).
        case client(
            ClientID, originalID: [UInt8]?, kind: FairScheduler<ClientItem>.Kind?,
            observed: (name: String, arguments: [UInt8])?)
    }

    private struct UpstreamItem: Sendable {
        var bytes: [UInt8]
        var fds: [Int32]
        var id: UInt64
    }

    /// What a client's queue holds: a command for QEMU, or one the sidecar answers itself.
    private enum ClientItem: Sendable {
        case upstream(UpstreamItem)
        case local(Action)
    }

    private let configuration: Configuration
    private var phase = UpstreamPhase.awaitingGreeting
    private var upstreamFramer = QMPOutputFramer()
    /// QEMU's greeting line, CRLF included, once received.
    public private(set) var greeting: [UInt8]?
    private var offered: [String] = []
    private var clients: [ClientID: ClientSession] = [:]
    private var nextID: UInt64 = 1
    private var pending: [UInt64: Pending] = [:]
    private var localPending: [UInt64: (client: ClientID, originalID: [UInt8]?)] = [:]
    /// Clients' commands (and local commands, in their order) waiting for their turn at QEMU.
    private var scheduler: FairScheduler<ClientItem>
    /// The sidecar's own and OOB commands written before the upstream negotiation finished.
    private var early: [UpstreamItem] = []
    /// Clients not read because their queue is full.
    private var pausedClients: Set<ClientID> = []
    private var clientGateOpen: Bool

    public init(configuration: Configuration = Configuration()) {
        self.configuration = configuration
        self.clientGateOpen = !configuration.gateClientCommands
        self.scheduler = FairScheduler(maxInFlight: configuration.maxClientInFlight, isOpen: clientGateOpen)
    }

    /// Whether clients' commands currently go on to QEMU (always true without
    /// ``Configuration/gateClientCommands``).
    public var isClientGateOpen: Bool { clientGateOpen }

    /// Number of client commands held by the closed gate.
    public var gatedCommands: Int { clientGateOpen ? 0 : scheduler.totalQueued }

    /// The client's commands waiting for their turn at QEMU (local commands included).
    public func queuedCommands(of client: ClientID) -> Int { scheduler.queued(client) }

    /// The client's in-band commands sent to QEMU and not yet answered.
    public func commandsInFlight(of client: ClientID) -> Int { scheduler.inFlight(client) }

    /// Opens the client gate (the sidecar's start-up work is done, or waiting for it gave up): held
    /// client commands go on in the order they arrived. Closed again when QEMU goes away.
    public mutating func openClientGate() -> [Action] {
        guard !clientGateOpen else { return [] }
        clientGateOpen = true
        scheduler.isOpen = true
        var actions: [Action] = []
        dispatch(into: &actions)
        return actions
    }

    /// Number of connected clients.
    public var clientCount: Int { clients.count }

    /// Messages seen so far, by direction.
    public private(set) var traffic = ProxyTraffic()

    /// Each connected client's commands in flight to QEMU and still queued.
    public var clientLoads: [ClientID: ClientLoad] {
        var loads: [ClientID: ClientLoad] = [:]
        for id in clients.keys {
            loads[id] = ClientLoad(inFlight: scheduler.inFlight(id), queued: scheduler.queued(id))
        }
        return loads
    }

    /// Number of commands sent to (or queued for) QEMU whose reply has not arrived.
    public var commandsInFlight: Int { pending.count }

    // MARK: - Upstream

    /// Bytes read from QEMU.
    public mutating func upstreamReceived(_ bytes: [UInt8]) -> [Action] {
        var actions: [Action] = []
        actions.reserveCapacity(4)  // a reply, the next commands: no regrowth
        // QEMU's output is not bound by its input rules (size, token and nesting limits; `inf`/`nan`):
        // split it by brace depth and parse it with the output grammar.
        for bytes in upstreamFramer.append(bytes) {
            switch QMPMessage.parseOutput(bytes) {
            case .failure(let error):
                actions.append(.warning("unparsable output from QEMU: \(error.desc)"))
            case .success(let message):
                traffic.fromQEMU += 1
                handleUpstream(Envelope(message), into: &actions)
            }
        }
        return actions
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
            pending[id] = .negotiation
            let arguments = offered.contains("oob") ? ", \"arguments\": {\"enable\": [\"oob\"]}" : ""
            let request = Array("{\"execute\": \"qmp_capabilities\"\(arguments), \"id\": \(id)}".utf8)
            trace(.sidecarToQEMU, client: 0, fds: 0, request, into: &actions)
            traffic.toQEMU += 1
            actions.append(.sendUpstream(request + QEMUReply.crlf, fds: []))
            for clientID in clients.keys.sorted() where clients[clientID]!.phase == .awaitingGreeting {
                var session = clients.removeValue(forKey: clientID)!
                sendGreeting(clientID, &session, into: &actions)
                let frames = session.deferred
                session.deferred = []
                for frame in frames {
                    handleClientFrame(frame, clientID, &session, into: &actions)
                }
                flushClient(clientID, &session, into: &actions)
                clients[clientID] = session
            }
            return
        }
        if let name = message.eventName {
            trace(.qemuToClient, client: 0, fds: 0, message.bytes, into: &actions)
            actions.append(.event(name: name, message: message.message))
            return
        }
        guard message.isReply, let id = message.sidecarID, let entry = pending.removeValue(forKey: id) else {
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
            guard var session = clients.removeValue(forKey: clientID) else { return }  // gone: drop quietly
            var line = message.message.replacingID(with: originalID.map(Self.echo), spare: 2)
            line.append(contentsOf: QEMUReply.crlf)
            if kind == nil {
                traffic.toClients += 1
                actions.append(.sendToClient(clientID, line))
            } else {
                _ = session.fill(id, with: line)
                flushClient(clientID, &session, into: &actions)
            }
            clients[clientID] = session
        }
    }

    /// QEMU closed the connection (or the sidecar gave up on it). Every client is disconnected, held
    /// and unsent fds are closed, and the router waits for a new QEMU greeting.
    public mutating func upstreamClosed() -> [Action] {
        var actions: [Action] = []
        for clientID in clients.keys.sorted() {
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
        clients = [:]
        pending = [:]
        localPending = [:]
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
        var actions: [Action] = []
        let id = allocateID()
        pending[id] = .sidecar
        var request = Array("{\"execute\": ".utf8) + QMPJSON.quoted(name)
        if let arguments {
            request += Array(", \"arguments\": ".utf8) + arguments
        }
        request += Array(", \"id\": \(id)}".utf8)
        sendEarly(UpstreamItem(bytes: request + QEMUReply.crlf, fds: [], id: id), into: &actions)
        return (id, actions)
    }

    // MARK: - Clients

    /// A client connected; it gets QEMU's greeting now, or as soon as the sidecar has it.
    public mutating func clientConnected(_ clientID: ClientID) -> [Action] {
        var actions: [Action] = []
        var session = ClientSession(phase: .awaitingGreeting)
        if greeting != nil {
            sendGreeting(clientID, &session, into: &actions)
        }
        clients[clientID] = session
        return actions
    }

    /// Bytes (and the fds of the same `recvmsg`) read from a client.
    public mutating func clientReceived(_ clientID: ClientID, _ bytes: [UInt8], fds: [Int32] = [])
        -> [Action]
    {
        var actions: [Action] = []
        actions.reserveCapacity(4)  // the command, its trace or reply: no regrowth
        guard var session = clients.removeValue(forKey: clientID) else {
            if !fds.isEmpty { actions.append(.closeFDs(fds)) }
            return actions
        }
        let start = session.received
        session.received += bytes.count
        if !fds.isEmpty {
            if let old = session.heldFDs {
                actions.append(.closeFDs(old.fds))
            }
            session.heldFDs = (start, fds)
        }
        let frames = bytes.withUnsafeBytes { session.framer.append($0) }
        if session.phase == .awaitingGreeting {
            session.deferred += frames
        } else {
            for frame in frames {
                handleClientFrame(frame, clientID, &session, into: &actions)
            }
            flushClient(clientID, &session, into: &actions)
        }
        clients[clientID] = session
        if scheduler.queued(clientID) >= configuration.maxClientQueue, pausedClients.insert(clientID).inserted {
            actions.append(.setClientReading(clientID, enabled: false))
        }
        return actions
    }

    /// The client went away. Replies to its commands in flight will be dropped quietly.
    public mutating func clientClosed(_ clientID: ClientID) -> [Action] {
        guard let session = clients.removeValue(forKey: clientID) else { return [] }
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
        var actions: [Action] = []
        actions.reserveCapacity(clients.count + 1)
        if synthesized {
            trace(.sidecarToClient, client: 0, fds: 0, Self.trimmed(line), into: &actions)
        }
        for clientID in clients.keys.sorted() where clients[clientID]!.isNegotiated {
            traffic.toClients += 1
            actions.append(.sendToClient(clientID, line))
        }
        return actions
    }

    /// Sends one of the sidecar's own events to every negotiated client, each its own line (CRLF
    /// included): the same event told to each as far as it may know (traced per client).
    public mutating func broadcastEvent(lineFor line: (ClientID) -> [UInt8]) -> [Action] {
        var actions: [Action] = []
        for clientID in clients.keys.sorted() where clients[clientID]!.isNegotiated {
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
        guard let entry = localPending.removeValue(forKey: token),
            var session = clients.removeValue(forKey: entry.client)
        else { return [] }
        let echoed = entry.originalID.map(Self.echo)
        let line: [UInt8]
        switch reply {
        case .success(let value): line = QEMUReply.success(value, echoedID: echoed)
        case .failure(let error): line = QEMUReply.error(error, echoedID: echoed)
        }
        var actions: [Action] = []
        trace(.sidecarToClient, client: entry.client, fds: 0, Self.trimmed(line), into: &actions)
        _ = session.fill(token, with: line)
        flushClient(entry.client, &session, into: &actions)
        clients[entry.client] = session
        return actions
    }

    // MARK: - Client input

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
            let name = message.commandName
            if message.message.execute != nil, let name, configuration.localCommands.contains(name) {
                if let error = QEMURequestRules.checkRequest(members(), allowOOB: oob) {
                    replyLocally(error, id: message.idBytes, clientID, &session, into: &actions)
                    return
                }
                let token = allocateID()
                localPending[token] = (clientID, message.idBytes)
                session.enqueue(.waiting(token))
                let local = Action.localCommand(
                    client: clientID, token: token, name: name, arguments: message.argumentBytes)
                scheduler.enqueue(.local(local), kind: .local, from: clientID)
                dispatch(into: &actions)
                return
            }
            forward(message, name: name, end: end, clientID, &session, into: &actions)
        }
    }

    private mutating func forward(
        _ message: Envelope, name: String?, end: Int, _ clientID: ClientID, _ session: inout ClientSession,
        into actions: inout [Action]
    ) {
        let id = allocateID()
        let oob = message.isOOBRequest
        var fds: [Int32] = []
        // QEMU refuses `getfd`/`add-fd` as OOB before their handler runs, so their fds stay held.
        if !oob, name == "getfd" || name == "add-fd", let held = session.heldFDs, held.start < end {
            fds = held.fds
            session.heldFDs = nil
        }
        var bytes = message.message.replacingID(with: Self.decimal(id), spare: 2)
        bytes.append(contentsOf: QEMUReply.crlf)
        let item = UpstreamItem(bytes: bytes, fds: fds, id: id)
        let kind: FairScheduler<ClientItem>.Kind? = oob ? nil : (fds.isEmpty ? .command : .fdCommand)
        if configuration.reportsRoundTrips { actions.append(.commandForwarded(sidecarID: id)) }
        var observed: (name: String, arguments: [UInt8])?
        if let name, configuration.observedCommands.contains(name) {
            let arguments = message.argumentBytes ?? Array("{}".utf8)
            observed = (name, arguments)
            // Reported before the command can reach QEMU: the VFIO side watches what it will open.
            actions.append(.commandObserved(name: name, arguments: arguments))
        }
        pending[id] = .client(clientID, originalID: message.idBytes, kind: kind, observed: observed)
        guard let kind else {
            sendEarly(item, client: clientID, direction: .clientToQEMU, into: &actions)
            return
        }
        session.enqueue(.waiting(id))
        scheduler.enqueue(.upstream(item), kind: kind, from: clientID)
        dispatch(into: &actions)
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

    /// The id QEMU would echo for the client's id bytes.
    ///
    /// Fast path for the ids clients really use (libvirt's `"libvirt-N"`, qemu.qmp's `"__qmp#00001"`,
    /// small integers): a double-quoted string of printable ASCII without escapes, or a decimal
    /// integer without leading zeros below 2^53, is echoed unchanged by QEMU.
    static func echo(_ id: [UInt8]) -> [UInt8] {
        if id.count >= 2, id.first == 0x22, id.last == 0x22,
            id.dropFirst().dropLast().allSatisfy({ $0 >= 0x20 && $0 < 0x7F && $0 != 0x22 && $0 != 0x5C })
        {
            return id
        }
        if !id.isEmpty, id.count <= 15, id.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }), id.count == 1 || id[0] != 0x30 {
            return id
        }
        return QMPJSON.echoed(id) ?? id
    }

    // MARK: - Helpers

    private mutating func sendGreeting(
        _ clientID: ClientID, _ session: inout ClientSession, into actions: inout [Action]
    ) {
        guard let greeting else { return }
        session.phase = .capabilities
        trace(.sidecarToClient, client: clientID, fds: 0, Self.trimmed(greeting), into: &actions)
        traffic.toClients += 1
        actions.append(.sendToClient(clientID, greeting))
    }

    private mutating func flushClient(
        _ clientID: ClientID, _ session: inout ClientSession, into actions: inout [Action]
    ) {
        guard let ready = session.takeReady() else { return }
        traffic.toClients += ready.lines
        actions.append(.sendToClient(clientID, ready.bytes))
    }

    /// The decimal digits of a sidecar id (without going through `String`).
    static func decimal(_ value: UInt64) -> [UInt8] {
        var digits: [UInt8] = []
        digits.reserveCapacity(20)
        var rest = value
        repeat {
            digits.append(UInt8(truncatingIfNeeded: rest % 10) + 0x30)
            rest /= 10
        } while rest > 0
        digits.reverse()
        return digits
    }

    /// Sends a command that never waits for a turn (the sidecar's own, OOB), or holds it until the
    /// upstream negotiation is done. Such commands carry no fds.
    private mutating func sendEarly(
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
    private mutating func dispatch(into actions: inout [Action]) {
        guard phase == .ready else { return }
        for item in early {
            traffic.toQEMU += 1
            actions.append(.sendUpstream(item.bytes, fds: []))
        }
        early = []
        while let (clientID, item, _) = scheduler.next() {
            switch item {
            case .local(let action):
                actions.append(action)
            case .upstream(let item):
                trace(.clientToQEMU, client: clientID, fds: item.fds.count, Self.trimmed(item.bytes), into: &actions)
                traffic.toQEMU += 1
                actions.append(.sendUpstream(item.bytes, fds: item.fds))
            }
            if scheduler.queued(clientID) < configuration.maxClientQueue, pausedClients.remove(clientID) != nil {
                actions.append(.setClientReading(clientID, enabled: true))
            }
        }
    }

    private mutating func allocateID() -> UInt64 {
        defer { nextID += 1 }
        return nextID
    }

    private func trace(
        _ direction: TraceDirection, client: Int, fds: Int, _ message: @autoclosure () -> [UInt8],
        into actions: inout [Action]
    ) {
        guard configuration.tracing else { return }
        actions.append(.trace(TraceRecord(direction: direction, client: client, fds: fds, message: message())))
    }

    private static func trimmed(_ line: [UInt8]) -> [UInt8] {
        var end = line.count
        while end > 0, line[end - 1] == 0x0A || line[end - 1] == 0x0D { end -= 1 }
        return Array(line[..<end])
    }

    private static func excerpt(_ bytes: [UInt8]) -> String {
        String(decoding: bytes.prefix(200), as: UTF8.self)
    }
}
