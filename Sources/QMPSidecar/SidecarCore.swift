import Logging
import QMPProxy
import QMPRuntime
import QMPWire
import Synchronization
import VFIOTracking

#if canImport(Glibc)
import Glibc
#endif

/// The sidecar on its reactor thread: performs the ``ProxyRouter``'s actions on real sockets.
///
/// - Important: Created and used on the reactor thread only. The reactor's registrations (listeners,
///   connections, timers) keep it alive while it runs.
final class SidecarCore {
    let reactor: Reactor
    let configuration: SidecarConfiguration
    let upstreamAddress: SocketAddress
    let logger: Logger
    let trace: TraceWriter?
    let outcome: SidecarOutcome
    var router: ProxyRouter
    var hooks: (any SidecarVFIOHooks)?
    var upstream: Connection?
    var qemuPID: pid_t?
    var retry: ConnectRetry?
    var listeners: [Listener] = []
    var clients = IDTable<Connection>()
    /// What each client may be told about holders (its SO_PEERCRED uid).
    var disclosures: [Int: HolderDisclosure] = [:]
    var nextClient = 1
    var internalReplies: [UInt64: ([UInt8]) -> Void] = [:]
    /// Bumped on every upstream session: a late discovery completion or gate timer of an old session
    /// does nothing.
    var gateGeneration = 0
    var gateTimer: Reactor.TimerID?
    /// `--metrics-file`: nil without it (then metrics cost nothing).
    var instruments: SidecarInstruments?
    /// Who emits the group events in this QMP session (``GroupEventSource``).
    var groupEvents = GroupEventSource.sidecar
    /// Whether the current QMP session ended with QEMU shutting down normally (exit status 0).
    var ending = QEMUEnding()
    /// Watches a child QEMU's exit (pidfd) while the sidecar ends with it.
    var childExitWatcher: ProcessExitWatcher?
    /// Upstream output beyond which clients are not read (QEMU is slower than they are).
    static let upstreamBacklogLimit = 4 << 20
    var clientsPaused = false
    /// Clients not read because their queue in the router is full.
    var fullClients: Set<Int> = []

    init(
        reactor: Reactor, configuration: SidecarConfiguration, upstreamAddress: SocketAddress, trace: TraceWriter?,
        outcome: SidecarOutcome, logger: Logger
    ) {
        self.reactor = reactor
        self.configuration = configuration
        self.upstreamAddress = upstreamAddress
        self.trace = trace
        self.outcome = outcome
        self.logger = logger
        self.router = ProxyRouter(
            configuration: .init(
                tracing: trace != nil, maxClientQueue: configuration.maxClientQueue,
                maxClientInFlight: configuration.maxClientInFlight,
                maxLoneClientInFlight: configuration.maxLoneClientInFlight,
                reportsRoundTrips: configuration.metricsFile != nil)
        )
        if let path = configuration.metricsFile {
            let names = configuration.vfio.map { ($0.releasedEventName, $0.timeoutEventName) } ?? ("", "")
            instruments = SidecarInstruments(
                path: path, delay: configuration.metricsDelay, eventNames: names, reactor: reactor, logger: logger
            ) { [unowned self] in
                SidecarInstruments.State(
                    traffic: router.traffic, clients: clients.count, clientLoads: router.clientLoads,
                    vfio: hooks?.metricsSnapshot() ?? VFIOMetricsSnapshot(),
                    nativeGroupEvents: groupEvents == .qemu)
            }
        }
    }

    /// Installs the VFIO hooks (before ``start(listeningFDs:)``).
    func install(hooks: any SidecarVFIOHooks) {
        self.hooks = hooks
        router = ProxyRouter(
            configuration: .init(
                localCommands: hooks.localCommandNames.union([GroupEventSource.queryCommandName]),
                observedCommands: hooks.observedCommands,
                tracing: trace != nil, gateClientCommands: true, maxClientQueue: configuration.maxClientQueue,
                maxClientInFlight: configuration.maxClientInFlight,
                maxLoneClientInFlight: configuration.maxLoneClientInFlight,
                reportsRoundTrips: instruments != nil))
    }

    /// Starts accepting on the listening sockets and connecting to QEMU.
    func start(listeningFDs: [Int32]) {
        for fd in listeningFDs {
            listeners.append(
                Listener(fd: fd, reactor: reactor, logger: logger) { client in self.accept(client) })
        }
        connectUpstream(deadline: .now + configuration.connectTimeout)
        instruments?.flush()
    }

    // MARK: Clients

    func accept(_ fd: Int32) {
        let peer = Sockets.peerCredentials(fd)
        if case .refuse(let reason) = configuration.admission.decide(peer: peer, connectedClients: clients.count) {
            // Closed before anything is sent: a refused peer never sees the greeting.
            Glibc.close(fd)
            logger.warning(
                "client refused",
                metadata: [
                    "reason": "\(reason)", "pid": "\(peer.map { String($0.pid) } ?? "?")",
                    "uid": "\(peer.map { String($0.uid) } ?? "?")",
                ])
            return
        }
        let id = nextClient
        nextClient += 1
        var clientLogger = logger
        clientLogger[metadataKey: "client"] = "\(id)"
        let connection = Connection(
            fd: fd, reactor: reactor, maxPendingBytes: configuration.clientOutputLimit, logger: clientLogger)
        connection.onRead = { bytes, fds in
            if fds.isEmpty, let upstream = self.upstream,
                let sidecarID = self.router.expressCommand(id, bytes, line: &self.expressCommandLine)
            {
                // The express lane; metrics count it as they count the general path's actions.
                if let instruments = self.instruments {
                    instruments.readFromClient(bytes.count)
                    instruments.commandForwarded(sidecarID)
                    instruments.sentToQEMU(self.expressCommandLine.count, fds: 0)
                }
                upstream.send(self.expressCommandLine)
                self.updateClientReading()
                self.instruments?.changed()
                return
            }
            self.instruments?.readFromClient(bytes.count)
            self.performRouter { router, actions in router.clientReceived(id, bytes, fds: Array(fds), into: &actions) }
            self.updateClientReading()
            self.instruments?.changed()
        }
        connection.onClose = { reason in
            self.clients[id] = nil
            self.disclosures[id] = nil
            self.fullClients.remove(id)
            self.logger.info("client disconnected", metadata: ["client": "\(id)", "reason": "\(reason)"])
            self.perform(self.router.clientClosed(id))
            self.instruments?.changed()
        }
        connection.onOverflow = {
            self.logger.warning(
                "client stopped reading: disconnecting it",
                metadata: ["client": "\(id)", "limit-bytes": "\(self.configuration.clientOutputLimit)"])
            self.clients[id]?.close()
        }
        clients[id] = connection
        disclosures[id] = HolderDisclosure(viewer: peer?.uid)
        connection.isReadingEnabled = !clientsPaused
        logger.info(
            "client connected",
            metadata: [
                "client": "\(id)", "pid": "\(peer.map { String($0.pid) } ?? "?")",
                "uid": "\(peer.map { String($0.uid) } ?? "?")",
            ])
        connection.start()
        perform(router.clientConnected(id))
        instruments?.changed()
    }

    // MARK: Actions

    /// Output collected while performing one batch of actions, written with one `send` per peer:
    /// a read carrying many pipelined commands (or replies) costs one `sendmsg`, not one per message.
    var upstreamBatch: [UInt8] = []
    var clientBatches: [(id: Int, bytes: [UInt8])] = []
    var performDepth = 0

    func flushUpstreamBatch() {
        guard !upstreamBatch.isEmpty else { return }
        upstream?.send(upstreamBatch)
        upstreamBatch = []
    }

    /// Writes every collected client batch. A send may re-enter ``perform(_:)`` (a client over its
    /// output bound is closed); output that produces joins this flush instead of starting another.
    func flushAllBatches() {
        performDepth += 1
        var index = 0
        while true {
            flushUpstreamBatch()
            guard index < clientBatches.count else { break }
            let id = clientBatches[index].id
            var bytes: [UInt8] = []
            swap(&bytes, &clientBatches[index].bytes)  // moved out, not copied
            index += 1
            clients.read(id) { $0.send(bytes) }
        }
        clientBatches.removeAll(keepingCapacity: true)
        performDepth -= 1
    }

    /// Writes the batch collected for one client now (before it is disconnected).
    func flushClientBatch(_ id: Int) {
        guard let index = clientBatches.firstIndex(where: { $0.id == id }) else { return }
        let batch = clientBatches.remove(at: index)
        clients[id]?.send(batch.bytes)
    }

    /// The express lane's output lines, kept for their capacity (``ProxyRouter/expressCommand(_:_:line:)``,
    /// ``ProxyRouter/expressReply(_:line:)``): one for each direction, so a line is usually rewritten at
    /// the length it had.
    var expressCommandLine: [UInt8] = []
    var expressReplyLine: [UInt8] = []

    /// Emptied actions of the last read, kept for their capacity: one array for every read.
    var spareActions: [ProxyRouter.Action] = []

    /// Runs `body` on the router with an empty action array and performs what it appended.
    func performRouter(_ body: (inout ProxyRouter, inout [ProxyRouter.Action]) -> Void) {
        var actions: [ProxyRouter.Action] = []
        swap(&actions, &spareActions)  // a nested call (from a hook) gets an array of its own
        body(&router, &actions)
        perform(taking: &actions)
        if actions.capacity <= 64 { swap(&actions, &spareActions) }
    }

    func perform(_ actions: consuming [ProxyRouter.Action]) {
        var actions = consume actions
        perform(taking: &actions)
    }

    /// Performs the actions in order and leaves `actions` empty (its capacity kept): each one is
    /// moved out, not copied.
    func perform(taking actions: inout [ProxyRouter.Action]) {
        performDepth += 1
        defer {
            performDepth -= 1
            if performDepth == 0 { flushAllBatches() }
        }
        actions.reverse()
        while let action = actions.popLast() {
            switch action {
            case .sendToClient(let id, let bytes):
                instruments?.sentToClient(bytes.count)
                if let index = clientBatches.firstIndex(where: { $0.id == id }) {
                    clientBatches[index].bytes.append(contentsOf: bytes)  // one send for a read's replies
                } else {
                    clientBatches.append((id, bytes))
                }
            case .sendUpstream(let bytes, let fds):
                instruments?.sentToQEMU(bytes.count, fds: fds.count)
                if let upstream {
                    if fds.isEmpty {
                        if upstreamBatch.isEmpty { upstreamBatch = bytes } else { upstreamBatch += bytes }
                    } else {
                        // fds travel with the first bytes of their own sendmsg.
                        flushUpstreamBatch()
                        upstream.send(bytes, fds: fds)
                    }
                } else {
                    for fd in fds { Glibc.close(fd) }
                }
            case .closeFDs(let fds):
                for fd in fds { Glibc.close(fd) }
            case .disconnectClient(let id):
                flushClientBatch(id)
                clients[id]?.close()
            case .setClientReading(let id, let enabled):
                if enabled { fullClients.remove(id) } else { fullClients.insert(id) }
                clients[id]?.isReadingEnabled = enabled && !clientsPaused
            case .upstreamReady(let oob):
                logger.info("QMP session with QEMU negotiated", metadata: ["oob": "\(oob)"])
                if let hooks { startDiscoveryGate(hooks) }
            case .upstreamFailed(let reason):
                logger.error("\(reason)")
                upstream?.close()
            case .event(let name, let message):
                instruments?.qemuEvent(name)
                ending.eventReceived(name: name, line: message.bytes)
                if let hooks, hooks.event(name, message) {
                    hooks.eventDelivered(name)
                    continue
                }
                perform(router.broadcastEvent(message.bytes + [0x0D, 0x0A]))
                hooks?.eventDelivered(name)
            case .commandObserved(let name, let arguments):
                hooks?.commandObserved(name, arguments: arguments)
            case .observedReply(let name, let arguments, let succeeded):
                hooks?.observedReply(name, arguments: arguments, succeeded: succeeded)
            case .localCommand(let client, let token, let name, let arguments):
                let disclosure = disclosures[client] ?? HolderDisclosure(viewer: nil)
                let reply =
                    name == GroupEventSource.queryCommandName
                    ? .success(groupEvents.report(configuration: configuration.vfio).qemuBytes)
                    : hooks?.localCommand(name, arguments: arguments, disclosure: disclosure)
                        ?? .failure(QMPErrorText("CommandNotFound", "The command \(name) has not been found"))
                perform(router.completeLocalCommand(token: token, reply: reply))
            case .internalReply(let token, let message):
                internalReplies.removeValue(forKey: token)?(message)
            case .warning(let text):
                logger.warning("\(text)")
            case .trace(let record):
                trace?.record(record)
            case .commandForwarded(let id):
                instruments?.commandForwarded(id)
            case .replyRouted(let id):
                instruments?.replyRouted(id)
            case .clientNegotiated(let id, let oob):
                logger.info("client negotiated", metadata: ["client": "\(id)", "oob": "\(oob)"])
            }
        }
    }

    // MARK: Commands and events of the VFIO driver (through ``commander``)

    /// The core as the VFIO driver's ``QMPUpstreamCommander``.
    private(set) lazy var commander = CommanderLink(core: self)

    func sendInternalCommand(_ name: String, arguments: JSONValue?, reply: @escaping (QMPMessage) -> Void) {
        let (token, actions) = router.sendInternalCommand(name, arguments: arguments?.qemuBytes)
        internalReplies[token] = { [logger] bytes in
            switch QMPMessage.parseOutput(bytes) {
            case .success(let message): reply(message)
            case .failure(let error): logger.warning("unparsable reply to the sidecar's \(name): \(error.desc)")
            }
        }
        perform(actions)
    }

    func broadcastEvent(_ line: [UInt8]) {
        if groupEvents == .qemu, let vfio = configuration.vfio,
            GroupEventSource.isSynthesizedGroupEvent(line, configuration: vfio)
        {
            logger.debug("not sending the sidecar's own group event: QEMU emits them")
            return
        }
        instruments?.sidecarEvent(line) { hooks?.releaseLatency() }
        perform(router.broadcastEvent(line, synthesized: true))
    }

    func broadcastEvent(disclosing line: (HolderDisclosure) -> [UInt8]) {
        var lines: [HolderDisclosure: [UInt8]] = [:]
        func made(for disclosure: HolderDisclosure) -> [UInt8] {
            if let made = lines[disclosure] { return made }
            let made = line(disclosure)
            lines[disclosure] = made
            return made
        }
        let anyLine = made(for: .operatorView)
        if groupEvents == .qemu, let vfio = configuration.vfio,
            GroupEventSource.isSynthesizedGroupEvent(anyLine, configuration: vfio)
        {
            logger.debug("not sending the sidecar's own group event: QEMU emits them")
            return
        }
        instruments?.sidecarEvent(anyLine) { hooks?.releaseLatency() }
        perform(
            router.broadcastEvent { client in made(for: disclosures[client] ?? HolderDisclosure(viewer: nil)) })
    }
}

/// Stands for the core as the VFIO driver's commander, which the driver holds weakly. A weak
/// reference gives the object it names a side table, and every retain of that object then takes the
/// runtime's slow path: the core is retained on every read from QEMU, this link never on the way.
/// The core owns the link, so the driver's reference ends with the core as it did.
final class CommanderLink: QMPUpstreamCommander {
    unowned let core: SidecarCore

    init(core: SidecarCore) { self.core = core }

    func sendInternalCommand(_ name: String, arguments: JSONValue?, reply: @escaping (QMPMessage) -> Void) {
        core.sendInternalCommand(name, arguments: arguments, reply: reply)
    }

    func broadcastEvent(_ line: [UInt8]) { core.broadcastEvent(line) }

    func broadcastEvent(disclosing line: (HolderDisclosure) -> [UInt8]) { core.broadcastEvent(disclosing: line) }
}

/// How the sidecar ended, written on the reactor thread and read after it stopped.
final class SidecarOutcome: Sendable {
    let failure = Mutex<SidecarError?>(nil)

    func fail(_ error: SidecarError) {
        failure.withLock { if $0 == nil { $0 = error } }
    }

    var error: SidecarError? { failure.withLock { $0 } }
}
