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
final class SidecarCore: QMPUpstreamCommander {
    private let reactor: Reactor
    private let configuration: SidecarConfiguration
    private let upstreamAddress: SocketAddress
    private let logger: Logger
    private let trace: TraceWriter?
    private let outcome: SidecarOutcome
    private var router: ProxyRouter
    private var hooks: (any SidecarVFIOHooks)?
    private var upstream: Connection?
    private var qemuPID: pid_t?
    private var retry: ConnectRetry?
    private var listeners: [Listener] = []
    private var clients: [Int: Connection] = [:]
    private var nextClient = 1
    private var internalReplies: [UInt64: ([UInt8]) -> Void] = [:]
    /// Bumped on every upstream session: a late discovery completion or gate timer of an old session
    /// does nothing.
    private var gateGeneration = 0
    private var gateTimer: Reactor.TimerID?
    /// `--metrics-file`: nil without it (then metrics cost nothing).
    private var instruments: SidecarInstruments?
    /// Who emits the group events in this QMP session (``GroupEventSource``).
    private var groupEvents = GroupEventSource.sidecar
    /// Whether the current QMP session ended with QEMU shutting down normally (exit status 0).
    private var ending = QEMUEnding()

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
                maxClientInFlight: configuration.maxClientInFlight, reportsRoundTrips: configuration.metricsFile != nil)
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

    // MARK: Upstream

    private func connectUpstream(deadline: ContinuousClock.Instant, interval: Duration = .milliseconds(20)) {
        retry = ConnectRetry(address: upstreamAddress, reactor: reactor, deadline: deadline, interval: interval) {
            result in
            self.retry = nil
            switch result {
            case .success(let fd): self.upstreamConnected(fd)
            case .failure(let error): self.fail(SidecarError(.upstream, error.message))
            }
        }
    }

    private func upstreamConnected(_ fd: Int32) {
        var connectionLogger = logger
        connectionLogger[metadataKey: "upstream"] = "\(upstreamAddress)"
        let connection = Connection(fd: fd, reactor: reactor, maxPendingBytes: .max, logger: connectionLogger)
        if case .unix = upstreamAddress {
            qemuPID = configuration.qemuPID ?? connection.peerPID
        } else {
            qemuPID = configuration.qemuPID
        }
        connection.onRead = { bytes, fds in
            for fd in fds { Glibc.close(fd) }
            self.instruments?.readFromQEMU(bytes.count)
            self.perform(self.router.upstreamReceived(bytes))
            self.updateClientReading()
            self.instruments?.changed()
        }
        connection.onClose = { reason in self.upstreamLost(reason.description) }
        upstream = connection
        ending.sessionStarted()
        connection.start()
        logger.info(
            "connected to QEMU",
            metadata: ["upstream": "\(upstreamAddress)", "qemu-pid": "\(qemuPID.map(String.init) ?? "unknown")"])
    }

    private func upstreamLost(_ reason: String) {
        upstream = nil
        internalReplies = [:]
        gateGeneration += 1
        if let gateTimer { reactor.cancel(gateTimer) }
        gateTimer = nil
        hooks?.upstreamClosed()
        instruments?.upstreamClosed()
        instruments?.changed()
        let clientCount = clients.count
        perform(router.upstreamClosed())
        if configuration.reconnect {
            logger.warning(
                "QEMU closed the QMP connection; waiting for a new QEMU (--reconnect)",
                metadata: ["reason": "\(reason)", "clients-disconnected": "\(clientCount)"])
            connectUpstream(deadline: .now + .seconds(100 * 365 * 24 * 3600), interval: .milliseconds(100))
        } else {
            endWithQEMU(reason: reason, clientCount: clientCount)
        }
    }

    /// Without `--reconnect` the run ends with QEMU's connection: cleanly (status 0) when QEMU shut
    /// down normally (``QEMUEnding``), as a failure otherwise.
    private func endWithQEMU(reason: String, clientCount: Int) {
        var exitStatus: Int32?
        if ending.verdict() == .unexpected, let pid = qemuPID {
            switch ChildExitStatus.of(pid) {
            case .running:
                // QEMU is our child and closed its monitor just before exiting: wait for its status.
                awaitChildExit(pid) { self.endWithQEMU(reason: reason, clientCount: clientCount) }
                return
            case .exited(let status): exitStatus = status
            case .notAChild: break
            }
        }
        switch ending.verdict(exitStatus: exitStatus) {
        case .normal(let shutdown):
            logger.info(
                "QEMU shut down; exiting",
                metadata: ["reason": "\(shutdown)", "clients-disconnected": "\(clientCount)"])
            stop()
        case .unexpected:
            let status = exitStatus.map { " (exit status \($0))" } ?? ""
            fail(
                SidecarError(
                    .upstreamClosed,
                    "QEMU closed the QMP connection (\(reason))\(status) without shutting down; \(clientCount) client(s) disconnected. Use --reconnect to wait for a new QEMU instead of exiting."
                ))
        }
    }

    private var childExitWatcher: ProcessExitWatcher?

    /// Calls `then` once the child `pid` exited, or after two seconds.
    private func awaitChildExit(_ pid: pid_t, then: @escaping () -> Void) {
        var done = false
        func finish() {
            guard !done else { return }
            done = true
            childExitWatcher?.cancel()
            childExitWatcher = nil
            then()
        }
        let timer = reactor.schedule(after: .seconds(2)) { finish() }
        childExitWatcher = try? ProcessExitWatcher(pid: pid, reactor: reactor) {
            self.reactor.cancel(timer)
            finish()
        }
        if childExitWatcher == nil {
            reactor.cancel(timer)
            finish()
        }
    }

    /// Upstream output beyond which clients are not read (QEMU is slower than they are).
    private static let upstreamBacklogLimit = 4 << 20
    private var clientsPaused = false

    /// Backpressure: while QEMU lets more than ``upstreamBacklogLimit`` bytes of commands pile up,
    /// stop reading clients (their commands wait in their own socket buffers, as with QEMU directly);
    /// resume once QEMU has caught up to half of it.
    private func updateClientReading() {
        let backlog = upstream?.pendingBytes ?? 0
        let pause = clientsPaused ? backlog > Self.upstreamBacklogLimit / 2 : backlog > Self.upstreamBacklogLimit
        guard pause != clientsPaused else { return }
        clientsPaused = pause
        logger.debug("client reading \(pause ? "paused" : "resumed")", metadata: ["upstream-backlog": "\(backlog)"])
        for (id, client) in clients { client.isReadingEnabled = !pause && !fullClients.contains(id) }
    }

    /// Clients not read because their queue in the router is full.
    private var fullClients: Set<Int> = []

    private func fail(_ error: SidecarError) {
        logger.error("\(error.message)")
        outcome.fail(error)
        stop()
    }

    /// Ends the run: clients and listeners closed, the reactor stopped.
    private func stop() {
        for client in clients.values { client.close() }
        for listener in listeners { listener.close() }
        reactor.stop()
    }

    // MARK: Clients

    private func accept(_ fd: Int32) {
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
            self.instruments?.readFromClient(bytes.count)
            self.perform(self.router.clientReceived(id, bytes, fds: fds))
            self.updateClientReading()
            self.instruments?.changed()
        }
        connection.onClose = { reason in
            self.clients[id] = nil
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
    private var upstreamBatch: [UInt8] = []
    private var clientBatches: [(id: Int, bytes: [UInt8])] = []
    private var performDepth = 0

    private func flushUpstreamBatch() {
        guard !upstreamBatch.isEmpty else { return }
        upstream?.send(upstreamBatch)
        upstreamBatch = []
    }

    /// Writes every collected client batch. A send may re-enter ``perform(_:)`` (a client over its
    /// output bound is closed); output that produces joins this flush instead of starting another.
    private func flushAllBatches() {
        performDepth += 1
        var index = 0
        while true {
            flushUpstreamBatch()
            guard index < clientBatches.count else { break }
            let batch = clientBatches[index]
            index += 1
            clients[batch.id]?.send(batch.bytes)
        }
        clientBatches.removeAll(keepingCapacity: true)
        performDepth -= 1
    }

    /// Writes the batch collected for one client now (before it is disconnected).
    private func flushClientBatch(_ id: Int) {
        guard let index = clientBatches.firstIndex(where: { $0.id == id }) else { return }
        let batch = clientBatches.remove(at: index)
        clients[id]?.send(batch.bytes)
    }

    private func perform(_ actions: [ProxyRouter.Action]) {
        performDepth += 1
        defer {
            performDepth -= 1
            if performDepth == 0 { flushAllBatches() }
        }
        for action in actions {
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
            case .localCommand(_, let token, let name, let arguments):
                let reply =
                    name == GroupEventSource.queryCommandName
                    ? .success(groupEvents.report(configuration: configuration.vfio).qemuBytes)
                    : hooks?.localCommand(name, arguments: arguments)
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

    // MARK: Shutdown

    /// Graceful shutdown (SIGTERM/SIGINT): no new clients; the hooks broadcast what they hold (hold
    /// mode's withheld `DEVICE_DELETED` events), clients get their queued output (bounded by
    /// `drainTimeout`), then the loop stops.
    func shutdown(drainTimeout: Duration = .seconds(2)) {
        logger.info("shutting down", metadata: ["clients": "\(clients.count)"])
        for listener in listeners { listener.close() }
        listeners = []
        hooks?.shutdown()
        drainThenStop(deadline: .now + drainTimeout)
    }

    private func drainThenStop(deadline: ContinuousClock.Instant) {
        let pending = clients.values.reduce(0) { $0 + $1.pendingBytes }
        guard pending > 0, ContinuousClock.now < deadline else {
            if pending > 0 {
                logger.warning(
                    "clients did not read their last output before shutdown", metadata: ["bytes": "\(pending)"])
            }
            for client in clients.values { client.close() }
            instruments?.flush()
            reactor.stop()
            return
        }
        reactor.schedule(after: .milliseconds(5)) { self.drainThenStop(deadline: deadline) }
    }

    // MARK: Client gate

    /// Clients' commands wait (in the router) until the hooks' cold-plug discovery is complete: a
    /// client's `device_del` forwarded earlier could bring a `DEVICE_DELETED` for a device not yet
    /// tracked, whose group would then never be released.
    private func startDiscoveryGate(_ hooks: any SidecarVFIOHooks) {
        gateGeneration += 1
        let generation = gateGeneration
        let timeout = configuration.discoveryGateTimeout
        gateTimer = reactor.schedule(after: timeout) {
            guard self.gateGeneration == generation else { return }
            self.gateTimer = nil
            self.logger.warning(
                "cold-plug discovery not finished in time: forwarding client commands anyway (devices not yet discovered are not tracked)",
                metadata: ["timeout": "\(timeout)", "held-commands": "\(self.router.gatedCommands)"])
            self.openClientGate()
        }
        // Two start-up answers open the gate: who emits the group events, and cold-plug discovery.
        var outstanding = 2
        let answered = {
            guard self.gateGeneration == generation else { return }
            outstanding -= 1
            guard outstanding == 0 else { return }
            self.logger.debug("cold-plug discovery done; forwarding client commands")
            self.openClientGate()
        }
        groupEvents = .sidecar
        sendInternalCommand("query-qmp-schema", arguments: nil) { reply in
            guard self.gateGeneration == generation else { return }
            self.groupEvents = reply.jsonValue(.returnValue).map(GroupEventSource.detect) ?? .sidecar
            if self.groupEvents == .qemu {
                self.logger.info(
                    "QEMU emits GROUP_RELEASED and GROUP_RELEASE_TIMEOUT itself: forwarding its events, synthesizing none",
                    metadata: ["group-events": "qemu"])
            }
            answered()
        }
        hooks.upstreamReady(qemuPID: qemuPID) { answered() }
    }

    private func openClientGate() {
        if let gateTimer { reactor.cancel(gateTimer) }
        gateTimer = nil
        perform(router.openClientGate())
        updateClientReading()
    }

    // MARK: QMPUpstreamCommander

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
}

/// How the sidecar ended, written on the reactor thread and read after it stopped.
final class SidecarOutcome: Sendable {
    private let failure = Mutex<SidecarError?>(nil)

    func fail(_ error: SidecarError) {
        failure.withLock { if $0 == nil { $0 = error } }
    }

    var error: SidecarError? { failure.withLock { $0 } }
}
