import Logging
import QMPRuntime
import ServiceLifecycle
import VFIOTracking

#if canImport(Glibc)
import Glibc
#endif

/// qmp-sidecar: opens the listeners, runs the proxy on one reactor, and on SIGTERM/SIGINT flushes
/// held events, disconnects the clients and puts a taken-over socket back.
///
/// Two ways to run it: ``runUntilTerminated()`` on the calling thread (what the executable does: no
/// Swift concurrency, so an idle sidecar never wakes up — libdispatch's worker pool, which async
/// code starts, keeps a 1 Hz monitor timer for the life of the process), or as a
/// swift-service-lifecycle `Service` inside an application's `ServiceGroup` (``run()``).
/// Both return when QEMU shuts down normally (``QEMUEnding``) and throw a ``SidecarError`` when QEMU
/// cannot be reached in time or goes away unexpectedly (without `--reconnect`), so the process exits
/// non-zero.
public struct SidecarService: Service {
    /// Builds the VFIO hooks on the reactor thread, given the reactor and the sidecar as commander.
    public typealias HooksFactory = @Sendable (Reactor, any QMPUpstreamCommander, Logger) -> any SidecarVFIOHooks

    private let configuration: SidecarConfiguration
    private let logger: Logger
    private let makeHooks: HooksFactory?

    /// - Parameter makeHooks: the VFIO side; by default a ``VFIOReleaseDriver`` with
    ///   `configuration.vfio` (none when that is nil).
    public init(configuration: SidecarConfiguration, logger: Logger, makeHooks: HooksFactory? = nil) {
        self.configuration = configuration
        self.logger = logger
        if let makeHooks {
            self.makeHooks = makeHooks
        } else if let vfio = configuration.vfio {
            self.makeHooks = { reactor, commander, logger in
                var vfioLogger = logger
                vfioLogger[metadataKey: "component"] = "vfio"
                return VFIOReleaseDriver(
                    configuration: vfio, reactor: reactor, commander: commander, logger: vfioLogger)
            }
        } else {
            self.makeHooks = nil
        }
    }

    /// Runs the sidecar on the calling thread until SIGTERM/SIGINT (a second signal stops at once) or
    /// until QEMU goes away.
    ///
    /// - Important: Installs process-wide SIGTERM/SIGINT handlers and ignores SIGPIPE.
    public func runUntilTerminated() throws {
        let resources = try SidecarResources(configuration: configuration, logger: logger)
        defer { resources.release() }
        let reactor = try Reactor(logger: logger)
        let outcome = SidecarOutcome()
        let core = makeCore(reactor: reactor, resources: resources, outcome: outcome)
        var signalled = false
        let signals = try TerminationSignals(reactor: reactor) { signal in
            logger.info("signal received, shutting down", metadata: ["signal": "\(signal)"])
            if signalled { reactor.stop() } else { core.shutdown() }
            signalled = true
        }
        logger.info("qmp-sidecar running", metadata: ["upstream": "\(resources.upstream)"])
        try reactor.run()
        withExtendedLifetime(signals) {}
        if let error = outcome.error { throw error }
    }

    /// The `Service` entry point: the reactor runs on a thread of its own; graceful shutdown flushes
    /// held events to the clients before they are disconnected, cancellation stops at once.
    public func run() async throws {
        let resources = try SidecarResources(configuration: configuration, logger: logger)
        defer { resources.release() }
        let outcome = SidecarOutcome()
        let box = CoreBox()
        let thread = try ReactorThread.start(name: "qmp-sidecar", logger: logger) { reactor in
            box.core = makeCore(reactor: reactor, resources: resources, outcome: outcome)
        }
        logger.info("qmp-sidecar running", metadata: ["upstream": "\(resources.upstream)"])
        try await withGracefulShutdownHandler {
            try await thread.wait()
        } onGracefulShutdown: {
            thread.handle.execute { _ in box.core?.shutdown() }
        }
        if let error = outcome.error { throw error }
    }

    /// Creates the core on the reactor's thread and hands it the listening sockets.
    private func makeCore(reactor: Reactor, resources: SidecarResources, outcome: SidecarOutcome) -> SidecarCore {
        let core = SidecarCore(
            reactor: reactor, configuration: configuration, upstreamAddress: resources.upstream,
            trace: resources.trace, outcome: outcome, logger: logger)
        if let makeHooks {
            core.install(hooks: makeHooks(reactor, core.commander, logger))
        }
        core.start(listeningFDs: resources.takeListeningFDs())
        return core
    }
}

/// What a run sets up before the reactor starts, and puts back after it: the listening sockets
/// (closed unless the core took them), socket files we created, a taken-over QEMU socket, the trace.
private final class SidecarResources: @unchecked Sendable {
    let upstream: SocketAddress
    let trace: TraceWriter?
    private let logger: Logger
    private var listeningFDs: [Int32] = []
    private var ownedSockets: [(path: String, inode: ino_t)] = []
    private var takeOver: SocketTakeOver?

    init(configuration: SidecarConfiguration, logger: Logger) throws {
        self.logger = logger
        var upstream = configuration.upstream
        var listeningFDs: [Int32] = []
        var ownedSockets: [(path: String, inode: ino_t)] = []
        var takeOver: SocketTakeOver?
        func undo() {
            for fd in listeningFDs { close(fd) }
            try? takeOver?.restore()
            SidecarResources.unlinkOwned(ownedSockets)
        }
        do {
            if let path = configuration.takeOver {
                let taken = try SocketTakeOver(
                    path: path, mode: configuration.socketMode, group: configuration.socketGroup)
                takeOver = taken
                listeningFDs.append(taken.listeningFD)
                upstream = .unix(path: taken.upstreamPath)
                logger.info(
                    "took over QEMU's socket", metadata: ["path": "\(path)", "qemu-now-at": "\(taken.upstreamPath)"])
            }
            guard let upstream else {
                throw SidecarError(
                    .configuration, "no upstream: give --upstream unix:PATH (QEMU's -qmp socket) or --take-over PATH")
            }
            var specs = configuration.listeners
            if specs.isEmpty && takeOver == nil { specs = [.systemd] }
            for spec in specs {
                switch spec {
                case .unix(let path, let mode):
                    let fd = try Sockets.listenUnix(path: path, mode: mode, group: configuration.socketGroup)
                    var info = stat()
                    if lstat(path, &info) == 0 { ownedSockets.append((path, info.st_ino)) }
                    listeningFDs.append(fd)
                case .inheritedFD(let fd):
                    listeningFDs.append(try Sockets.adoptListeningSocket(fd))
                case .systemd:
                    let fds = try Sockets.systemdListeningSockets()
                    if fds.isEmpty {
                        throw SidecarError(
                            .configuration,
                            "nowhere to listen: give --listen unix:PATH, --listen-fd N or --take-over PATH, or start qmp-sidecar from a systemd .socket unit"
                        )
                    }
                    listeningFDs += fds
                }
            }
            for fd in listeningFDs {
                try Self.checkReachability(fd, allowUnauthenticatedTCP: configuration.allowUnauthenticatedTCP)
            }
            self.trace = try configuration.tracePath.map { path throws(SidecarError) in try TraceWriter(path: path) }
            self.upstream = upstream
        } catch {
            undo()
            throw error
        }
        self.listeningFDs = listeningFDs
        self.ownedSockets = ownedSockets
        self.takeOver = takeOver
    }

    /// A TCP listener has no peer credentials and no file permissions: anyone who reaches it controls
    /// the VM. Only loopback is accepted without the explicit opt-in.
    private static func checkReachability(_ fd: Int32, allowUnauthenticatedTCP: Bool) throws(SidecarError) {
        guard case .tcp(_, _, let loopback) = ListeningAddress.of(fd), !loopback, !allowUnauthenticatedTCP else {
            return
        }
        throw SidecarError(
            .configuration,
            "listening socket \(fd) is \(ListeningAddress.of(fd)), reachable from the network with no authentication: bind it to 127.0.0.1 or ::1 (or a unix socket), or give --unauthenticated-tcp-listen to accept that anyone who reaches it controls the VM"
        )
    }

    /// The listening sockets, once: the caller owns them from now on.
    func takeListeningFDs() -> [Int32] {
        defer { listeningFDs = [] }
        return listeningFDs
    }

    /// Closes what the core did not take, flushes the trace, restores a taken-over socket and removes
    /// the socket files we created (only if they are still ours).
    func release() {
        for fd in takeListeningFDs() { close(fd) }
        if let trace {
            let dropped = trace.close()
            if dropped > 0 {
                logger.warning("trace lines dropped (writer fell behind)", metadata: ["count": "\(dropped)"])
            }
        }
        try? takeOver?.restore()
        SidecarResources.unlinkOwned(ownedSockets)
    }

    private static func unlinkOwned(_ sockets: [(path: String, inode: ino_t)]) {
        for socket in sockets {
            var info = stat()
            if lstat(socket.path, &info) == 0, info.st_ino == socket.inode { unlink(socket.path) }
        }
    }
}

/// The ``SidecarCore``, for jobs run on the reactor thread (it is created and only touched there).
private final class CoreBox: @unchecked Sendable {
    var core: SidecarCore?
}
