import ArgumentParser
import QMPRuntime
import QMPWire

#if canImport(Glibc)
import Glibc
#endif

/// `qmp-bench shell-floor LISTEN UPSTREAM`: the floor of qmp-sidecar's own I/O shell — a byte pump
/// on the runtime qmp-sidecar runs on (the epoll `Reactor`, `Listener`, `Connection`), no parsing.
/// Each client gets a connection of its own to the upstream socket, as with the C floor proxy.
///
/// `qmp-bench proxy` times it next to the C floor: what the sidecar costs above it is protocol
/// work; what it costs above the C floor is the runtime's.
struct ShellFloor: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "shell-floor",
        abstract: "Byte pump on qmp-sidecar's runtime (the floor of its I/O shell) for qmp-bench proxy.",
        shouldDisplay: false)

    @Argument(help: "The unix socket to listen on.")
    var listen: String

    @Argument(help: "The unix socket to connect each client to.")
    var upstream: String

    func run() throws {
        let reactor = try Reactor()
        let listener = Listener(fd: try Sockets.listenUnix(path: listen), reactor: reactor, unlinkPath: listen) {
            client in
            do {
                let server = try Sockets.connect(to: .unix(path: upstream))
                Self.pump(Connection(fd: client, reactor: reactor), Connection(fd: server, reactor: reactor))
            } catch {
                close(client)
            }
        }
        defer { listener.close() }
        try reactor.run()
    }

    /// Copies bytes both ways until either side closes, then closes both.
    private static func pump(_ a: Connection, _ b: Connection) {
        let towardB = Relay(to: b)
        let towardA = Relay(to: a)
        a.onRead = { bytes, _ in towardB.forward(bytes) }
        b.onRead = { bytes, _ in towardA.forward(bytes) }
        a.onClose = { _ in b.close() }
        b.onClose = { _ in a.close() }
        a.start()
        b.start()
    }
}

/// One direction of the pump: copies each read into a buffer it reuses, as qmp-sidecar's express lane
/// does, so no read allocates. qmp-bench is built without dynamic exclusivity checks, like the
/// sidecar's runtime (Package.swift), so the buffer costs no run-time check either.
private final class Relay {
    private let connection: Connection
    private var line: [UInt8] = []

    init(to connection: Connection) { self.connection = connection }

    func forward(_ bytes: UnsafeRawBufferPointer) {
        line.overwrite(with: bytes.bindMemory(to: UInt8.self))
        connection.send(line)
    }
}
