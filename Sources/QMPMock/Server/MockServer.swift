import Glibc
import Logging
import QMPRuntime
import QMPWire

/// The mock QEMU on a reactor: accepts QMP clients on a listening socket and runs ``MockMachine``.
///
/// Each accepted connection gets a greeting, a ``QMPFramer`` and its own session in the machine.
/// Descriptors that arrive with a read belong to the first command whose bytes end after the read
/// began, as QEMU hands a command the descriptors received with it. Machine timers become reactor
/// timers; when nothing is due the reactor sleeps in `poll` (no idle wake-ups).
///
/// - Important: create and use it on the reactor's thread only.
public final class MockServer {
    private struct Session {
        var connection: Connection
        var framer = QMPFramer()
        /// Descriptor batches not yet given to a command, with the stream offset of their read.
        var fdBatches: [(offset: Int, fds: [Int32])] = []
    }

    private let reactor: Reactor
    private var machine: MockMachine
    private var listener: Listener?
    private var sessions: [Int: Session] = [:]
    private let logger: Logger
    private let onExit: (Int32) -> Void

    /// Starts serving on `listeningFD`.
    ///
    /// - Parameters:
    ///   - listeningFD: a listening unix or TCP socket; the server owns it.
    ///   - unlinkPath: the socket file to remove when the server closes.
    ///   - onExit: called when the machine asks the process to exit (`quit`, `--exit-on`); the
    ///     executable exits, tests stop the reactor.
    /// - Throws: ``MockError`` when cold-plugging a `--device` fails.
    public init(
        machine: MockMachine,
        listeningFD: Int32,
        unlinkPath: String?,
        reactor: Reactor,
        logger: Logger,
        onExit: @escaping (Int32) -> Void
    ) throws(MockError) {
        self.reactor = reactor
        self.machine = machine
        self.logger = logger
        self.onExit = onExit
        let startActions = try self.machine.start()
        perform(startActions)
        listener = Listener(fd: listeningFD, reactor: reactor, unlinkPath: unlinkPath, logger: logger) {
            [weak self] fd in
            self?.accept(fd)
        }
    }

    /// Stops accepting and closes every client (their sessions end as on disconnect).
    public func close() {
        listener?.close()
        listener = nil
        for session in sessions.values { session.connection.close() }
    }

    /// What the script has not played yet (empty when complete or when there is no script).
    public var unmetExpectations: [String] { machine.unmetExpectations }

    /// Groups the mock holds open, with descriptors.
    public var openGroups: [Int: Int32] { machine.openGroups }

    private func accept(_ fd: Int32) {
        // QEMU bounds no monitor's output (a slow reader only grows its buffer): neither does the mock,
        // so a 64 MiB reply reaches a client that reads it.
        let connection = Connection(fd: fd, reactor: reactor, maxPendingBytes: .max, logger: logger)
        let (client, actions) = machine.clientConnected(now: .now())
        sessions[client] = Session(connection: connection)
        connection.onRead = { [weak self] bytes, fds in self?.read(client, Array(bytes), Array(fds)) }
        connection.onClose = { [weak self] reason in self?.closed(client, reason) }
        connection.start()
        logger.debug("client connected", metadata: ["client": "\(client)"])
        perform(actions)
    }

    private func closed(_ client: Int, _ reason: Connection.CloseReason) {
        guard let session = sessions.removeValue(forKey: client) else { return }
        for batch in session.fdBatches { batch.fds.forEach { _ = Glibc.close($0) } }
        machine.clientDisconnected(client)
        logger.debug("client disconnected", metadata: ["client": "\(client)", "reason": "\(reason)"])
    }

    private func read(_ client: Int, _ bytes: [UInt8], _ fds: [Int32]) {
        guard var session = sessions[client] else {
            fds.forEach { _ = Glibc.close($0) }
            return
        }
        if !fds.isEmpty { session.fdBatches.append((session.framer.streamOffset, fds)) }
        let frames = session.framer.append(bytes)
        var units: [(MockInputUnit, [Int32])] = []
        for frame in frames {
            var attached: [Int32] = []
            while let first = session.fdBatches.first, first.offset < frame.end {
                attached += first.fds
                session.fdBatches.removeFirst()
            }
            units.append((MockInputUnit(frame: frame), attached))
        }
        sessions[client] = session
        for (unit, attached) in units {
            guard sessions[client] != nil else {
                attached.forEach { _ = Glibc.close($0) }
                continue
            }
            perform(machine.receive(unit, fds: attached, from: client, now: .now()))
        }
    }

    private func perform(_ actions: [MockAction]) {
        for action in actions {
            switch action {
            case .send(let client, let bytes):
                sessions[client]?.connection.send(bytes)
            case .schedule(let timer, let nanoseconds):
                _ = reactor.schedule(after: .nanoseconds(nanoseconds)) { [weak self] in
                    guard let self else { return }
                    self.perform(self.machine.timerFired(timer, now: .now()))
                }
            case .disconnect(let client):
                sessions[client]?.connection.close()
            case .exit(let status):
                logger.info("exiting", metadata: ["status": "\(status)"])
                onExit(status)
            case .note(let text):
                logger.info("\(text)")
            }
        }
    }
}
