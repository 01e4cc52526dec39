import QMPRuntime

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
    /// QEMU's pid for TCP upstreams (unix upstreams use SO_PEERCRED).
    public var qemuPID: pid_t?
    /// `--reconnect`: when QEMU goes away, wait for a new one at the same address instead of exiting.
    public var reconnect: Bool
    /// `--trace FILE`: record every message (docs/ARCHITECTURE.md "Trace format").
    public var tracePath: String?
    /// Per-client output bound; a client that lets more pile up is disconnected.
    public var clientOutputLimit: Int
    /// VFIO release monitor options.
    public var vfio: SidecarVFIOOptions

    public init(
        upstream: SocketAddress? = nil, connectTimeout: Duration = .seconds(30), listeners: [ListenSpec] = [],
        takeOver: String? = nil, socketMode: mode_t = 0o600, qemuPID: pid_t? = nil, reconnect: Bool = false,
        tracePath: String? = nil, clientOutputLimit: Int = 16 << 20, vfio: SidecarVFIOOptions = .init()
    ) {
        self.vfio = vfio
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

/// The VFIO release monitor's options (issue 4), as given on the command line; they map one to one
/// onto VFIOTracking's `VFIOConfiguration`.
public struct SidecarVFIOOptions: Sendable, Equatable {
    public var sysfsRoot: String
    public var devRoot: String
    public var releaseTimeout: Duration
    public var eventPrefix: String
    public var holdDeviceDeleted: Bool

    public init(
        sysfsRoot: String = "/sys", devRoot: String = "/dev", releaseTimeout: Duration = .seconds(30),
        eventPrefix: String = "", holdDeviceDeleted: Bool = false
    ) {
        self.sysfsRoot = sysfsRoot
        self.devRoot = devRoot
        self.releaseTimeout = releaseTimeout
        self.eventPrefix = eventPrefix
        self.holdDeviceDeleted = holdDeviceDeleted
    }
}
