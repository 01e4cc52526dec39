import Logging
import QMPRuntime
import ServiceLifecycle
import VFIOTracking

#if canImport(Glibc)
import Glibc
#endif

/// qmp-sidecar as a swift-service-lifecycle `Service`: opens the listeners, runs the proxy on one
/// reactor thread, and on graceful shutdown (SIGTERM/SIGINT) stops it and puts a taken-over socket
/// back.
///
/// `run()` throws a ``SidecarError`` when QEMU cannot be reached in time or goes away (without
/// `--reconnect`), so the process exits non-zero.
public struct SidecarService: Service {
    /// Builds the VFIO hooks on the reactor thread, given the reactor and the sidecar as commander.
    public typealias HooksFactory = @Sendable (Reactor, any QMPUpstreamCommander, Logger) -> any SidecarVFIOHooks

    private let configuration: SidecarConfiguration
    private let logger: Logger
    private let makeHooks: HooksFactory?

    /// - Parameter makeHooks: the VFIO side; by default a `VFIOReleaseMonitor` with
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
                return VFIOMonitorHooks(
                    monitor: VFIOReleaseMonitor(
                        configuration: vfio, reactor: reactor, commander: commander, logger: vfioLogger))
            }
        } else {
            self.makeHooks = nil
        }
    }

    public func run() async throws {
        var listeningFDs: [Int32] = []
        var ownedSockets: [(path: String, inode: ino_t)] = []
        var takeOver: SocketTakeOver?
        defer {
            try? takeOver?.restore()
            for socket in ownedSockets {
                var info = stat()
                if lstat(socket.path, &info) == 0, info.st_ino == socket.inode { unlink(socket.path) }
            }
        }
        do {
            var upstream = configuration.upstream
            if let path = configuration.takeOver {
                let taken = try SocketTakeOver(path: path, mode: configuration.socketMode)
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
                    let fd = try Sockets.listenUnix(path: path, mode: mode)
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
            let trace = try configuration.tracePath.map { path throws(SidecarError) in try TraceWriter(path: path) }
            defer {
                if let trace {
                    let dropped = trace.close()
                    if dropped > 0 {
                        logger.warning("trace lines dropped (writer fell behind)", metadata: ["count": "\(dropped)"])
                    }
                }
            }
            let outcome = SidecarOutcome()
            let fds = listeningFDs
            listeningFDs = []
            let configuration = self.configuration
            let logger = self.logger
            let makeHooks = self.makeHooks
            let box = CoreBox()
            let thread = try ReactorThread.start(name: "qmp-sidecar", logger: logger) { reactor in
                let core = SidecarCore(
                    reactor: reactor, configuration: configuration, upstreamAddress: upstream, trace: trace,
                    outcome: outcome, logger: logger)
                box.core = core
                if let makeHooks {
                    core.install(hooks: makeHooks(reactor, core, logger))
                }
                core.start(listeningFDs: fds)
            }
            logger.info("qmp-sidecar running", metadata: ["upstream": "\(upstream)"])
            // Graceful shutdown runs on the reactor thread: held events are flushed to the clients
            // before they are disconnected. Cancellation (or a second signal) still stops at once.
            try await withGracefulShutdownHandler {
                try await thread.wait()
            } onGracefulShutdown: {
                thread.handle.execute { _ in box.core?.shutdown() }
            }
            if let error = outcome.error { throw error }
        } catch {
            for fd in listeningFDs { close(fd) }
            throw error
        }
    }
}

/// The ``SidecarCore``, for jobs run on the reactor thread (it is created and only touched there).
private final class CoreBox: @unchecked Sendable {
    var core: SidecarCore?
}
