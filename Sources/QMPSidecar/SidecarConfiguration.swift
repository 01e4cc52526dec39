import QMPRuntime
import VFIOTracking

#if canImport(Glibc)
import Glibc
#endif

/// Everything `qmp-sidecar` can be told: where QEMU is, where clients connect, and how to behave.
public struct SidecarConfiguration: Sendable {
    /// Where clients connect.
    public enum ListenSpec: Sendable, Equatable {
        /// A unix socket created at `path` with `mode` (a stale socket file is replaced, a live one
        /// is an error).
        case unix(path: String, mode: mode_t)
        /// An inherited listening socket (`--listen-fd N`), e.g. the one libvirt creates for QEMU.
        case inheritedFD(Int32)
        /// systemd socket activation (`LISTEN_FDS`/`LISTEN_PID`).
        case systemd
    }

    /// QEMU's QMP socket. With ``takeOver`` set this is ignored: the upstream is the renamed socket.
    public var upstream: SocketAddress?
    /// How long to retry connecting to QEMU before giving up.
    public var connectTimeout: Duration
    public var listeners: [ListenSpec]
    /// `--take-over PATH`: QEMU listens at PATH; the sidecar moves it aside and listens there.
    public var takeOver: String?
    /// Mode for sockets the sidecar creates (`--socket-mode`).
    public var socketMode: mode_t
    /// Group for sockets the sidecar creates (`--socket-group`); nil keeps the sidecar's own.
    public var socketGroup: gid_t?
    /// Who may be a client (`--allow-uid`, `--max-clients`).
    public var admission: ClientAdmission
    /// `--unauthenticated-tcp-listen`: accept an inherited TCP listening socket that is not on
    /// loopback (anyone who reaches it controls the VM).
    public var allowUnauthenticatedTCP: Bool
    /// QEMU's pid for TCP upstreams (unix upstreams use SO_PEERCRED).
    public var qemuPID: pid_t?
    /// `--reconnect`: when QEMU goes away, wait for a new one at the same address instead of exiting.
    public var reconnect: Bool
    /// `--trace FILE`: record every message (docs/ARCHITECTURE.md "Trace format").
    public var tracePath: String?
    /// Per-client output bound; a client that lets more pile up is disconnected.
    public var clientOutputLimit: Int
    /// Per client: commands waiting for their turn beyond which the client is not read
    /// (`--max-client-queue`; QEMU queues 8 per monitor).
    public var maxClientQueue: Int
    /// Per client: commands at QEMU unanswered (`--max-client-in-flight`).
    public var maxClientInFlight: Int
    /// Per client while it is the only client connected: commands at QEMU unanswered
    /// (`--max-lone-client-in-flight`).
    public var maxLoneClientInFlight: Int
    /// The VFIO release monitor's options (`--sysfs-root`, `--dev-root`, `--release-timeout`,
    /// `--event-prefix`, `--hold-device-deleted`); nil runs the proxy without VFIO tracking.
    public var vfio: VFIOConfiguration?
    /// How long clients' commands wait, after each negotiation with QEMU, for cold-plug discovery to
    /// finish before they are forwarded anyway (with a warning): a QEMU that never answers the
    /// sidecar's `qom-list`/`qom-get` must not wedge clients.
    public var discoveryGateTimeout: Duration
    /// `--metrics-file PATH`: a Prometheus textfile, replaced atomically when a metric changed; nil
    /// keeps no metrics.
    public var metricsFile: String?
    /// How long after a change the metrics file is written (changes meanwhile share the write).
    public var metricsDelay: Duration

    public init(
        upstream: SocketAddress? = nil, connectTimeout: Duration = .seconds(30), listeners: [ListenSpec] = [],
        takeOver: String? = nil, socketMode: mode_t = 0o600, qemuPID: pid_t? = nil, reconnect: Bool = false,
        tracePath: String? = nil, clientOutputLimit: Int = 16 << 20, vfio: VFIOConfiguration? = VFIOConfiguration(),
        discoveryGateTimeout: Duration = .seconds(10), maxClientQueue: Int = 8, maxClientInFlight: Int = 1,
        maxLoneClientInFlight: Int = 2, socketGroup: gid_t? = nil, admission: ClientAdmission = ClientAdmission(),
        allowUnauthenticatedTCP: Bool = false,
        metricsFile: String? = nil, metricsDelay: Duration = .seconds(1)
    ) {
        self.maxClientQueue = maxClientQueue
        self.maxClientInFlight = maxClientInFlight
        self.maxLoneClientInFlight = maxLoneClientInFlight
        self.socketGroup = socketGroup
        self.admission = admission
        self.allowUnauthenticatedTCP = allowUnauthenticatedTCP
        self.metricsFile = metricsFile
        self.metricsDelay = metricsDelay
        self.vfio = vfio
        self.discoveryGateTimeout = discoveryGateTimeout
        self.upstream = upstream
        self.connectTimeout = connectTimeout
        self.listeners = listeners
        self.takeOver = takeOver
        self.socketMode = socketMode
        self.qemuPID = qemuPID
        self.reconnect = reconnect
        self.tracePath = tracePath
        self.clientOutputLimit = clientOutputLimit
    }
}
