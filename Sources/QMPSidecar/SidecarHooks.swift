import QMPProxy
import QMPRuntime
import QMPWire
import VFIOTracking

#if canImport(Glibc)
import Glibc
#endif

/// What the sidecar tells the VFIO release monitor (issue 4), in the proxy's terms: bytes in, no
/// JSON trees on the hot path.
///
/// ``VFIOMonitorHooks`` adapts VFIOTracking's `VFIOReleaseMonitor`; tests can use a fake.
///
/// - Important: reactor thread only.
public protocol SidecarVFIOHooks: AnyObject {
    /// Names of commands the monitor answers itself (checked before forwarding).
    var localCommandNames: Set<String> { get }
    /// The sidecar's own negotiation with QEMU succeeded. Call `discovered` once the monitor's
    /// start-up commands (cold-plug discovery) are all answered; clients' commands are held until then
    /// (bounded by ``SidecarConfiguration/discoveryGateTimeout``).
    func upstreamReady(qemuPID: pid_t?, discovered: @escaping () -> Void)
    /// A client's `device_add` got a success reply; `arguments` is its arguments object's text.
    func deviceAddSucceeded(arguments: [UInt8])
    /// A `DEVICE_DELETED` event line (CRLF included); true holds it back (hold mode: the monitor
    /// broadcasts it later itself).
    func deviceDeleted(_ line: [UInt8]) -> Bool
    /// Answers a local command; nil means "not mine" (the client then gets CommandNotFound).
    func localCommand(_ name: String, arguments: [UInt8]?) -> ProxyRouter.LocalReply?
    /// QEMU went away.
    func upstreamClosed()
    /// The sidecar is shutting down (SIGTERM/SIGINT): stop, and broadcast every held event now.
    func shutdown()
    /// The figures for `--metrics-file` (read when the file is written, not per message).
    func metricsSnapshot() -> VFIOMetricsSnapshot
    /// Called as a `GROUP_RELEASED` is broadcast: nanoseconds since the close that released the
    /// group, nil when no close was witnessed (a release found by a scan or by QEMU's exit).
    func releaseLatency() -> UInt64?
}

extension SidecarVFIOHooks {
    public func metricsSnapshot() -> VFIOMetricsSnapshot { VFIOMetricsSnapshot() }
    public func releaseLatency() -> UInt64? { nil }
}

/// ``SidecarVFIOHooks`` onto VFIOTracking's `VFIOReleaseMonitor`.
public final class VFIOMonitorHooks: SidecarVFIOHooks {
    public let monitor: VFIOReleaseMonitor

    public init(monitor: VFIOReleaseMonitor) {
        self.monitor = monitor
    }

    public var localCommandNames: Set<String> { monitor.localCommandNames }

    public func upstreamReady(qemuPID: pid_t?, discovered: @escaping () -> Void) {
        monitor.upstreamReady(qemuPID: qemuPID, discovered: discovered)
    }

    public func deviceAddSucceeded(arguments: [UInt8]) {
        monitor.deviceAddSucceeded(argumentsText: arguments)
    }

    public func deviceDeleted(_ line: [UInt8]) -> Bool {
        monitor.deviceDeleted(line: line)
    }

    public func localCommand(_ name: String, arguments: [UInt8]?) -> ProxyRouter.LocalReply? {
        let parsed = arguments.flatMap { try? JSONValue(parsing: $0) }
        switch monitor.localCommand(name, arguments: parsed) {
        case nil: return nil
        case .success(let value)?: return .success(value.qemuBytes)
        case .failure(let errorClass, let desc)?: return .failure(QMPErrorText(errorClass, desc))
        }
    }

    public func upstreamClosed() {
        monitor.upstreamClosed()
    }

    public func shutdown() {
        monitor.stop()
    }

    // Adapter onto the monitor's statistics as they are today: groups from its state machine, scans
    // from its counters, the release latency from its last witnessed close.
    public func metricsSnapshot() -> VFIOMetricsSnapshot {
        var states: [String: Int] = [:]
        for view in monitor.groupViews {
            states[view.timedOut ? "timed-out" : view.phase.rawValue, default: 0] += 1
        }
        let statistics = monitor.statistics
        return VFIOMetricsSnapshot(
            groupsByState: states,
            fallbackScans: ["qemu-fds": statistics.qemuFullScans, "all-processes": statistics.allProcessScans])
    }

    public func releaseLatency() -> UInt64? {
        let statistics = monitor.statistics
        // A close handled since the previous release is the one that released this group.
        guard statistics.lastCloseEventAt > statistics.lastReleaseAt else { return nil }
        var now = timespec()
        clock_gettime(CLOCK_MONOTONIC, &now)
        return UInt64(now.tv_sec) * 1_000_000_000 + UInt64(now.tv_nsec) - statistics.lastCloseEventAt
    }
}
