import QMPProxy

/// What the sidecar's metrics show at one moment, gathered from plain counters when the textfile is
/// written (so the hot path does no more than increment integers).
///
/// Counters only grow within one sidecar process; ``SidecarMetrics`` adds the difference to the last
/// snapshot.
struct MetricsSnapshot: Equatable {
    var traffic = ProxyTraffic()
    var bytes = ByteCounts()
    var clients = 0
    var clientLoads: [Int: ClientLoad] = [:]
    /// Events by name and source (`qemu` or `sidecar`).
    var events: [EventKey: Int] = [:]
    var fdsPassed = 0
    /// `GROUP_RELEASE_TIMEOUT` events the sidecar sent.
    var releaseTimeouts = 0
    var vfio = VFIOMetricsSnapshot()
    /// Whether QEMU emits the group events itself (the sidecar steps aside).
    var nativeGroupEvents = false

    struct ByteCounts: Equatable {
        var fromClients = 0
        var toClients = 0
        var fromQEMU = 0
        var toQEMU = 0
    }

    struct EventKey: Hashable {
        var name: String
        var source: String
    }
}

/// The VFIO side's figures for the metrics (``SidecarVFIOHooks/metricsSnapshot``).
public struct VFIOMetricsSnapshot: Sendable, Equatable {
    /// Tracked groups by state (`attached`, `detaching`, `timed-out`, `released`).
    public var groupsByState: [String: Int]
    /// Fallback scans by kind (`qemu-fds`: a full scan of QEMU's fd table; `all-processes`).
    public var fallbackScans: [String: Int]

    public init(groupsByState: [String: Int] = [:], fallbackScans: [String: Int] = [:]) {
        self.groupsByState = groupsByState
        self.fallbackScans = fallbackScans
    }
}
