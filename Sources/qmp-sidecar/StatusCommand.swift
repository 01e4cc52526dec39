import ArgumentParser
import QMPSidecar
import QMPWire
import VFIOTracking

#if canImport(Glibc)
import Glibc
#endif

/// `qmp-sidecar status SOCKET`: the groups a running sidecar tracks, as a table or JSON; `--watch`
/// follows the group events.
struct StatusCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "status",
        abstract: "Show the VFIO groups a running qmp-sidecar tracks (state, devices, members, holders).",
        discussion: """
            Connects to SOCKET (the sidecar's client socket, as given with --listen) as an ordinary \
            QMP client and asks __org.qmp-sidecar_query-vfio-groups. With --watch it then prints \
            DEVICE_DELETED, GROUP_RELEASED and GROUP_RELEASE_TIMEOUT as they come, until interrupted.
            """
    )

    @Argument(help: "The sidecar's client socket (its --listen unix:PATH).")
    var socket: String

    @Flag(help: "After the table, follow DEVICE_DELETED, GROUP_RELEASED and GROUP_RELEASE_TIMEOUT live.")
    var watch = false

    @Flag(help: "Print the query's JSON (and with --watch each event as one JSON line) for scripts.")
    var json = false

    @Option(help: "Seconds to wait for the sidecar's answers.")
    var timeout: Double = 10

    func run() throws {
        let client = try StatusClient(path: socket, timeout: .milliseconds(Int64(timeout * 1000)))
        let groups = try client.execute(VFIOConfiguration.defaultQueryCommandName)
        if !json, let source = try? client.execute(GroupEventSource.queryCommandName) {
            output(Array(StatusFormatter.header(source).utf8))
        }
        output(json ? groups.qemuBytes + [0x0A] : Array(StatusFormatter.table(GroupStatus.parse(groups)).utf8))
        guard watch else { return }
        while true {
            let event = try client.nextEvent()
            guard let line = StatusFormatter.eventLine(event) else { continue }
            output(json ? event.qemuBytes + [0x0A] : Array((line + "\n").utf8))
        }
    }

    /// Unbuffered, so `--watch` lines reach a pipe as they happen.
    private func output(_ bytes: [UInt8]) {
        var offset = 0
        while offset < bytes.count {
            let count = bytes.withUnsafeBytes { write(STDOUT_FILENO, $0.baseAddress! + offset, $0.count - offset) }
            if count < 0 && errno == EINTR { continue }
            guard count > 0 else { return }
            offset += count
        }
    }
}
