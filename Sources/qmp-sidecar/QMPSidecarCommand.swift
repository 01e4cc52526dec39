import ArgumentParser
import Logging
import QMPRuntime
import QMPSidecar
import VFIOTracking

#if canImport(Glibc)
import Glibc
#endif

/// `qmp-sidecar [proxy]`: the proxy itself, the default subcommand.
struct QMPSidecarCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "proxy",
        abstract: "A transparent proxy on QEMU's QMP socket that tells clients when a VFIO IOMMU group is really free.",
        discussion: """
            qmp-sidecar holds the one connection to QEMU's QMP monitor and serves any number of \
            clients. Each client sees QEMU as if connected directly: the same greeting and \
            negotiation replies, its own ids on replies, QEMU's events byte for byte, and file \
            descriptors passed with getfd/add-fd (SCM_RIGHTS). The getfd name space is QEMU's and \
            is shared by all clients of one sidecar. On top, it emits GROUP_RELEASED when the last \
            guest device of a VFIO IOMMU group is gone and no process holds the group any more.

            Examples (QEMU started with -qmp unix:/run/vm1.qmp,server=on,wait=off):
              qmp-sidecar --upstream unix:/run/vm1.qmp \\
                          --listen unix:/run/vm1.sidecar.qmp
              qmp-sidecar --take-over /run/vm1.qmp
              qmp-sidecar --upstream unix:/run/vm1.qmp --listen-fd 3
              systemd-socket-activate -l /run/vm1.sidecar.qmp \\
                  qmp-sidecar --upstream unix:/run/vm1.qmp

            See docs/running.md. Exit status: 0 after SIGTERM/SIGINT, and when QEMU shuts down \
            normally (its SHUTDOWN event - after quit, a guest poweroff or a signal to QEMU - then \
            the close; or, when QEMU is qmp-sidecar's child, its exit status 0). Non-zero when QEMU \
            cannot be reached within --connect-timeout or closes the connection without shutting \
            down (killed, crashed). With --reconnect qmp-sidecar waits for the next QEMU instead.
            """
    )

    @Option(help: "QEMU's QMP socket: unix:PATH or tcp:HOST:PORT.")
    var upstream: String?

    @Option(help: "Seconds to keep retrying while the upstream socket is not there yet.")
    var connectTimeout: Double = 30

    @Option(help: "Listen for clients on unix:PATH (repeatable). A stale socket file is replaced.")
    var listen: [String] = []

    @Option(help: "Mode of the sockets qmp-sidecar creates (octal).")
    var socketMode: String = "0600"

    @Option(help: "Group (name or number) of the sockets qmp-sidecar creates, e.g. with --socket-mode 0660.")
    var socketGroup: String?

    @Option(
        help: ArgumentHelp(
            "Accept only clients running as this user id (repeatable; checked with SO_PEERCRED, a refused client is closed before the greeting and logged). Default: anyone who can open the socket.",
            valueName: "uid"))
    var allowUid: [UInt32] = []

    @Option(help: "Refuse (close before the greeting, and log) clients beyond this many at a time.")
    var maxClients: Int = 128

    @Option(help: "Accept clients on an inherited listening socket N (repeatable).")
    var listenFd: [Int32] = []

    @Flag(
        help:
            "Accept an inherited or systemd TCP listening socket that is not on loopback. UNAUTHENTICATED: anyone who can reach it controls the VM. Without it such a socket is refused."
    )
    var unauthenticatedTcpListen = false

    @Option(
        help: ArgumentHelp(
            "QEMU already listens at PATH: move its socket aside, listen at PATH, restore on exit.",
            valueName: "path"))
    var takeOver: String?

    @Option(help: "QEMU's pid (for tcp upstreams; unix upstreams use SO_PEERCRED).")
    var qemuPid: Int32?

    @Flag(help: "When QEMU goes away, wait for a new one at the same upstream instead of exiting.")
    var reconnect = false

    @Option(help: "Record every message in both directions as JSON lines to FILE.")
    var trace: String?

    @Option(help: "Disconnect a client whose unread output exceeds this many bytes.")
    var clientOutputLimit: Int = 16 << 20

    @Option(
        help: ArgumentHelp(
            "Commands of one client waiting for their turn at QEMU before the sidecar stops reading that client (QEMU queues 8 per monitor).",
            valueName: "n"))
    var maxClientQueue: Int = 8

    @Option(
        help: ArgumentHelp(
            "Commands of one client at QEMU unanswered at once while other clients have commands waiting or at QEMU. Clients share QEMU's monitor round robin, as QEMU serves monitors of their own: another client's command waits behind at most N of one client's (1: as with a monitor of its own).",
            valueName: "n"))
    var maxClientInFlight: Int = 1

    @Option(
        help: ArgumentHelp(
            "Commands of one client at QEMU unanswered at once while it is the only client connected (at least --max-client-in-flight; default 2, or --max-client-in-flight if larger). 2 keeps QEMU busy for a lone client that pipelines; a client that connects meanwhile waits behind these once. 1 makes every client wait as on a monitor of its own.",
            valueName: "n"))
    var maxLoneClientInFlight: Int?

    @Option(help: "Log level: trace, debug, info, notice, warning, error, critical.")
    var logLevel: String = "info"

    @Option(help: "Log lines as text or json (one JSON object per line, metadata as members).")
    var logFormat: SidecarLogHandler.Format = .text

    @Option(
        help: ArgumentHelp(
            "Write Prometheus metrics to PATH (node_exporter's textfile collector), replaced atomically and only when a metric changed.",
            valueName: "path"))
    var metricsFile: String?

    @Option(help: "Seconds after a change before --metrics-file is rewritten (changes meanwhile share one write).")
    var metricsDelay: Double = 1

    @Option(help: "Where sysfs is (device to IOMMU group lookups).")
    var sysfsRoot: String = "/sys"

    @Option(help: "Where device nodes are (/dev/vfio/N).")
    var devRoot: String = "/dev"

    @Option(help: "Seconds a detaching group may take before GROUP_RELEASE_TIMEOUT.")
    var releaseTimeout: Double = 30

    @Option(
        help:
            "Seconds client commands wait for the sidecar's cold-plug discovery after it connects to QEMU, before they are forwarded anyway."
    )
    var discoveryTimeout: Double = 10

    @Option(help: "Prefix for the sidecar's event names (e.g. __com.example_).")
    var eventPrefix: String = ""

    @Flag(help: "Withhold DEVICE_DELETED of VFIO devices until their group is released.")
    var holdDeviceDeleted = false

    func validate() throws {
        guard upstream != nil || takeOver != nil else {
            throw ValidationError("give --upstream unix:PATH|tcp:HOST:PORT (QEMU's -qmp socket) or --take-over PATH")
        }
        guard upstream == nil || takeOver == nil else {
            throw ValidationError("--take-over PATH already names the upstream; drop --upstream")
        }
        guard mode_t(socketMode, radix: 8) != nil else {
            throw ValidationError("--socket-mode \(socketMode) is not an octal mode such as 0660")
        }
        guard maxClientQueue >= 1 else {
            throw ValidationError("--max-client-queue \(maxClientQueue): give at least 1 (QEMU's own is 8)")
        }
        guard maxClientInFlight >= 1 else {
            throw ValidationError("--max-client-in-flight \(maxClientInFlight): give at least 1 (the default is 1)")
        }
        if let lone = maxLoneClientInFlight, lone < maxClientInFlight {
            throw ValidationError(
                "--max-lone-client-in-flight \(lone): give at least --max-client-in-flight (\(maxClientInFlight))")
        }
        guard metricsDelay >= 0 else {
            throw ValidationError("--metrics-delay \(metricsDelay): give 0 or more seconds")
        }
        guard Logger.Level(rawValue: logLevel) != nil else {
            throw ValidationError("--log-level \(logLevel): use trace, debug, info, notice, warning, error or critical")
        }
        if let socketGroup, Self.groupID(socketGroup) == nil {
            throw ValidationError(
                "--socket-group \(socketGroup): no such group (give a name from /etc/group or a number)")
        }
        guard maxClients > 0 else {
            throw ValidationError("--max-clients \(maxClients): give at least 1")
        }
        for address in listen where !address.hasPrefix("unix:") {
            throw ValidationError("--listen \(address): only unix:PATH is supported")
        }
    }

    /// A group given by name or number.
    private static func groupID(_ text: String) -> gid_t? {
        if let number = gid_t(text) { return number }
        guard let entry = getgrnam(text) else { return nil }
        return entry.pointee.gr_gid
    }

    func run() throws {
        let level = Logger.Level(rawValue: logLevel)!
        let format = logFormat
        LoggingSystem.bootstrap { label in SidecarLogHandler(label: label, format: format, level: level) }
        let logger = Logger(label: "qmp-sidecar")
        let mode = mode_t(socketMode, radix: 8)!
        var listeners: [SidecarConfiguration.ListenSpec] = listen.map {
            .unix(path: String($0.dropFirst(5)), mode: mode)
        }
        listeners += listenFd.map { .inheritedFD($0) }
        let configuration = SidecarConfiguration(
            upstream: try upstream.map { try SocketAddress(parsing: $0) },
            connectTimeout: .milliseconds(Int64(connectTimeout * 1000)),
            listeners: listeners,
            takeOver: takeOver,
            socketMode: mode,
            qemuPID: qemuPid,
            reconnect: reconnect,
            tracePath: trace,
            clientOutputLimit: clientOutputLimit,
            vfio: VFIOConfiguration(
                sysfsRoot: sysfsRoot, devRoot: devRoot, releaseTimeout: .milliseconds(Int64(releaseTimeout * 1000)),
                eventPrefix: eventPrefix, holdDeviceDeleted: holdDeviceDeleted),
            discoveryGateTimeout: .milliseconds(Int64(discoveryTimeout * 1000)),
            maxClientQueue: maxClientQueue,
            maxClientInFlight: maxClientInFlight,
            maxLoneClientInFlight: maxLoneClientInFlight ?? 2,  // the router raises it to --max-client-in-flight
            socketGroup: socketGroup.flatMap(Self.groupID),
            admission: ClientAdmission(allowedUIDs: Set(allowUid), maxClients: maxClients),
            allowUnauthenticatedTCP: unauthenticatedTcpListen, metricsFile: metricsFile,
            metricsDelay: .milliseconds(Int64(metricsDelay * 1000)))
        // On the main thread, without Swift concurrency: an idle sidecar sleeps in epoll_wait() and nothing
        // else in the process wakes up.
        try SidecarService(configuration: configuration, logger: logger).runUntilTerminated()
    }
}

extension SidecarLogHandler.Format: ExpressibleByArgument {}
