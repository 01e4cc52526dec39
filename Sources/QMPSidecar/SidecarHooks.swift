import QMPProxy
import QMPWire
import VFIOTracking

#if canImport(Glibc)
import Glibc
#endif

/// The one protocol between the proxy and the VFIO side, in the proxy's terms: what the router
/// already parsed goes in (bytes and ranges, no second parse of QEMU's output), decisions come out.
///
/// ``VFIOReleaseDriver`` implements it; tests can use a fake.
///
/// - Important: reactor thread only.
public protocol SidecarVFIOHooks: AnyObject {
    /// Names of commands the hooks answer themselves (checked before forwarding).
    var localCommandNames: Set<String> { get }
    /// Client commands whose forwarding and reply the hooks want to see
    /// (``ProxyRouter/Configuration/observedCommands``).
    var observedCommands: Set<String> { get }
    /// The sidecar's own negotiation with QEMU succeeded. Call `discovered` once the hooks' start-up
    /// commands (cold-plug discovery) are all answered; clients' commands are held until then
    /// (bounded by ``SidecarConfiguration/discoveryGateTimeout``).
    func upstreamReady(qemuPID: pid_t?, discovered: @escaping () -> Void)
    /// An observed command is about to reach QEMU (none of its bytes are sent yet); `arguments` is
    /// its arguments object's text.
    func commandObserved(_ name: String, arguments: [UInt8])
    /// QEMU answered an observed command.
    func observedReply(_ name: String, arguments: [UInt8], succeeded: Bool)
    /// An event from QEMU as the router parsed it; true holds it back (hold mode: the hooks broadcast
    /// it later themselves).
    func event(_ name: String, _ message: QMPMessage) -> Bool
    /// The event just passed to ``event(_:_:)`` is queued to the clients (or held): what must follow
    /// it (a `GROUP_RELEASED` after the last `DEVICE_DELETED`) goes now, into the same write.
    func eventDelivered(_ name: String)
    /// Answers a local command for a client that may be told what `disclosure` allows; nil means
    /// "not mine" (the client then gets CommandNotFound).
    func localCommand(_ name: String, arguments: [UInt8]?, disclosure: HolderDisclosure) -> ProxyRouter.LocalReply?
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
    public func eventDelivered(_ name: String) {}
    public func metricsSnapshot() -> VFIOMetricsSnapshot { VFIOMetricsSnapshot() }
    public func releaseLatency() -> UInt64? { nil }
}
