import Logging
import QMPProxy
import QMPRuntime
import QMPWire

#if canImport(Glibc)
import Glibc
#endif

/// What ``SidecarCore`` tells the metrics, and the `--metrics-file` writer behind it.
///
/// The per-message calls add to plain integers and arm the writer's one-shot timer; everything else
/// (router counters, per-client loads, the VFIO side's groups) is read only when the file is written.
///
/// - Important: reactor thread only.
final class SidecarInstruments {
    /// What the core knows that the metrics show: read when the file is written.
    struct State {
        var traffic: ProxyTraffic
        var clients: Int
        var clientLoads: [Int: ClientLoad]
        var vfio: VFIOMetricsSnapshot
        var nativeGroupEvents: Bool
    }

    private let metrics = SidecarMetrics()
    private var file: MetricsTextfile!
    private var snapshot = MetricsSnapshot()
    private var roundTripStarts: [UInt64: UInt64] = [:]
    private let releasedEventName: String
    private let timeoutEventName: String

    /// - Parameters:
    ///   - eventNames: the names of the sidecar's own release and timeout events.
    ///   - state: the core's part of the figures, read at each write.
    init(
        path: String, delay: Duration, eventNames: (released: String, timeout: String), reactor: Reactor,
        logger: Logger, state: @escaping () -> State
    ) {
        releasedEventName = eventNames.released
        timeoutEventName = eventNames.timeout
        file = MetricsTextfile(path: path, delay: delay, reactor: reactor, logger: logger) { [unowned self] in
            let current = state()
            snapshot.traffic = current.traffic
            snapshot.clients = current.clients
            snapshot.clientLoads = current.clientLoads
            snapshot.vfio = current.vfio
            snapshot.nativeGroupEvents = current.nativeGroupEvents
            metrics.apply(snapshot)
            return metrics.render()
        }
    }

    /// How often the file was replaced.
    var writes: Int { file.writes }

    /// Something changed (a read, a connection, a timer): write within the debounce delay.
    @inline(__always)
    func changed() { file.changed() }

    /// Writes now if anything changed (start-up, shutdown).
    func flush() { file.flush() }

    @inline(__always)
    func readFromQEMU(_ count: Int) { snapshot.bytes.fromQEMU &+= count }

    @inline(__always)
    func readFromClient(_ count: Int) { snapshot.bytes.fromClients &+= count }

    @inline(__always)
    func sentToQEMU(_ count: Int, fds: Int) {
        snapshot.bytes.toQEMU &+= count
        snapshot.fdsPassed &+= fds
    }

    @inline(__always)
    func sentToClient(_ count: Int) { snapshot.bytes.toClients &+= count }

    /// An event from QEMU, by name.
    func qemuEvent(_ name: String) {
        snapshot.events[.init(name: name, source: "qemu"), default: 0] += 1
    }

    /// An event the sidecar synthesized; `releaseLatency` is the last close → now for a release.
    func sidecarEvent(_ line: [UInt8], releaseLatency: () -> UInt64?) {
        var bytes = line
        while let last = bytes.last, last == 0x0A || last == 0x0D { bytes.removeLast() }
        guard case .success(let message) = QMPMessage.parseOutput(bytes), let name = message.string(.event) else {
            return
        }
        snapshot.events[.init(name: name, source: "sidecar"), default: 0] += 1
        if name == timeoutEventName { snapshot.releaseTimeouts += 1 }
        if name == releasedEventName, let latency = releaseLatency() {
            metrics.observeReleaseLatency(nanoseconds: latency)
        }
        changed()
    }

    func commandForwarded(_ id: UInt64) {
        roundTripStarts[id] = Self.monotonicNow()
    }

    func replyRouted(_ id: UInt64) {
        guard let start = roundTripStarts.removeValue(forKey: id) else { return }
        metrics.observeRoundTrip(nanoseconds: Self.monotonicNow() &- start)
    }

    /// QEMU went away: its replies will not come.
    func upstreamClosed() {
        roundTripStarts.removeAll()
    }

    private static func monotonicNow() -> UInt64 {
        var now = timespec()
        clock_gettime(CLOCK_MONOTONIC, &now)
        return UInt64(now.tv_sec) &* 1_000_000_000 &+ UInt64(now.tv_nsec)
    }
}
