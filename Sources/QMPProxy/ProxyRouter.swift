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
        /// does with monitors of their own (it lets the running command finish).
        public var maxClientInFlight: Int
        /// Per client, while it is the only client connected: in-band commands at QEMU unanswered
        /// (never below ``maxClientInFlight``). Nobody waits behind a lone client, and with 2 QEMU
        /// already holds its next command when it sends a reply; a client that connects meanwhile
        /// waits behind these once, then the lone client is held to ``maxClientInFlight``.
        public var maxLoneClientInFlight: Int
        /// Emit ``Action/commandForwarded(sidecarID:)`` and ``Action/replyRouted(sidecarID:)`` so the
        /// performer can time each client command's round trip (off: no cost).
        public var reportsRoundTrips: Bool

        public init(
            localCommands: Set<String> = [], observedCommands: Set<String> = [], tracing: Bool = false,
            gateClientCommands: Bool = false, maxClientQueue: Int = 8, maxClientInFlight: Int = 1,
            maxLoneClientInFlight: Int = 2, reportsRoundTrips: Bool = false
        ) {
            self.localCommands = localCommands
            self.observedCommands = observedCommands
            self.tracing = tracing
            self.gateClientCommands = gateClientCommands
            self.maxClientQueue = max(1, maxClientQueue)
            self.maxClientInFlight = max(1, maxClientInFlight)
            self.maxLoneClientInFlight = max(self.maxClientInFlight, maxLoneClientInFlight)
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
        indirect case event(name: String, message: QMPMessage)
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

    enum UpstreamPhase: Equatable {
        case awaitingGreeting
        case negotiating
        case ready
    }

    enum Pending {
        case negotiation
        case sidecar
        /// `kind` is nil for OOB commands (they bypass the scheduler).
        case client(
            ClientID, originalID: ArraySlice<UInt8>?, kind: FairScheduler<ClientItem>.Kind?,
            observed: (name: String, arguments: [UInt8])?)
    }

    struct UpstreamItem: Sendable {
        var bytes: [UInt8]
        var fds: [Int32]
        var id: UInt64
    }

    /// What a client's queue holds: a command for QEMU, or one the sidecar answers itself.
    enum ClientItem: Sendable {
        case upstream(UpstreamItem)
        case local(Action)
    }

    let configuration: Configuration
    /// ``Configuration/localCommands`` and ``Configuration/observedCommands`` as lists: they hold a few
    /// names, and comparing a command's name token with each costs less than making a string of it
    /// and hashing that (twice per command).
    let localCommandNames: CommandNames
    let observedCommandNames: CommandNames
    /// Both lists in one: the commands the express lane leaves to the general path, found by one search.
    let generalPathCommandNames: CommandNames
    /// The commands that take the fds a client passed (QEMU's `getfd` and `add-fd`).
    static let fdCommandNames = CommandNames(["getfd", "add-fd"])
    var phase = UpstreamPhase.awaitingGreeting
    var upstreamFramer = QMPOutputFramer()
    /// QEMU's greeting line, CRLF included, once received.
    public internal(set) var greeting: [UInt8]?
    var offered: [String] = []
    var clients = IDTable<ClientSession>()
    var nextID: UInt64 = 1
    /// Keyed by the sidecar id (`Int(truncatingIfNeeded:)` of it).
    var pending = IDTable<Pending>()
    var localPending = IDTable<(client: ClientID, originalID: [UInt8]?)>()
    /// Clients' commands (and local commands, in their order) waiting for their turn at QEMU.
    var scheduler: FairScheduler<ClientItem>
    /// The sidecar's own and OOB commands written before the upstream negotiation finished.
    var early: [UpstreamItem] = []
    /// Clients not read because their queue is full.
    var pausedClients: Set<ClientID> = []
    var clientGateOpen: Bool
    /// The express lane's copy of a command's id, kept for its capacity: it is shared with the
    /// pending entry until the reply, so with one command in flight at a time it does not allocate.
    var expressCommandBytes: [UInt8] = []
    /// The express lane's command in flight whose bookkeeping waits for its reply (see
    /// ``settleExpress()``): nil whenever the general path runs.
    var expressInFlight: ExpressCommand?

    public init(configuration: Configuration = Configuration()) {
        self.configuration = configuration
        self.localCommandNames = CommandNames(configuration.localCommands)
        self.observedCommandNames = CommandNames(configuration.observedCommands)
        self.generalPathCommandNames = CommandNames(configuration.localCommands.union(configuration.observedCommands))
        self.clientGateOpen = !configuration.gateClientCommands
        self.scheduler = FairScheduler(
            maxInFlight: configuration.maxClientInFlight, loneInFlight: configuration.maxLoneClientInFlight,
            isOpen: clientGateOpen)
    }

    /// Whether clients' commands currently go on to QEMU (always true without
    /// ``Configuration/gateClientCommands``).
    public var isClientGateOpen: Bool { clientGateOpen }

    /// Number of client commands held by the closed gate.
    public var gatedCommands: Int { clientGateOpen ? 0 : scheduler.totalQueued }

    /// The client's commands waiting for their turn at QEMU (local commands included).
    public func queuedCommands(of client: ClientID) -> Int { scheduler.queued(client) }

    /// The client's in-band commands sent to QEMU and not yet answered.
    public func commandsInFlight(of client: ClientID) -> Int {
        scheduler.inFlight(client) + (expressInFlight?.client == client ? 1 : 0)
    }

    /// Opens the client gate (the sidecar's start-up work is done, or waiting for it gave up): held
    /// client commands go on in the order they arrived. Closed again when QEMU goes away.
    public mutating func openClientGate() -> [Action] {
        guard !clientGateOpen else { return [] }
        settleExpress()
        clientGateOpen = true
        scheduler.isOpen = true
        var actions: [Action] = []
        dispatch(into: &actions)
        return actions
    }

    /// Number of connected clients.
    public var clientCount: Int { clients.count }

    /// Messages seen so far, by direction.
    public internal(set) var traffic = ProxyTraffic()

    /// Each connected client's commands in flight to QEMU and still queued.
    public var clientLoads: [ClientID: ClientLoad] {
        var loads: [ClientID: ClientLoad] = [:]
        for id in clients.allKeys {
            loads[id] = ClientLoad(inFlight: commandsInFlight(of: id), queued: scheduler.queued(id))
        }
        return loads
    }

    /// Number of commands sent to (or queued for) QEMU whose reply has not arrived.
    public var commandsInFlight: Int { pending.count + (expressInFlight == nil ? 0 : 1) }
}
