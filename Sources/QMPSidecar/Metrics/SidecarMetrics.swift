import CoreMetrics
import Prometheus
import QMPProxy

/// The sidecar's metrics, made with swift-metrics on a registry of swift-prometheus, rendered as a
/// Prometheus text exposition.
///
/// Counts are fed as ``MetricsSnapshot``s taken when the metrics are written (their growth since the
/// last one is added); only the two histograms take one observation per round trip or release.
/// Uses its own registry (not `MetricsSystem`'s global one): tests and several sidecars in one
/// process do not mix.
///
/// - Important: reactor thread only (the registry itself is thread-safe; the last snapshot is not).
final class SidecarMetrics {
    /// Every metric's name, for `--help` and the docs.
    static let prefix = "qmp_sidecar_"

    private let registry = PrometheusCollectorRegistry()
    private let factory: PrometheusMetricsFactory
    private var last = MetricsSnapshot()
    private let messages: [Direction: CoreMetrics.Counter]
    private let bytes: [Direction: CoreMetrics.Counter]
    private let clients: Meter
    private var inFlight: [Int: Meter] = [:]
    private var queued: [Int: Meter] = [:]
    private let roundTrip: CoreMetrics.Timer
    private var events: [MetricsSnapshot.EventKey: CoreMetrics.Counter] = [:]
    private var groups: [String: Meter] = [:]
    private let releaseLatency: CoreMetrics.Timer
    private let releaseTimeouts: CoreMetrics.Counter
    private let fdsPassed: CoreMetrics.Counter
    private var fallbackScans: [String: CoreMetrics.Counter] = [:]
    private let nativeGroupEvents: Meter

    private enum Direction: String, CaseIterable {
        case fromClients = "from-clients"
        case toClients = "to-clients"
        case fromQEMU = "from-qemu"
        case toQEMU = "to-qemu"
    }

    /// The states a group can be in, always present (0 when none).
    static let groupStates = ["attached", "detaching", "timed-out", "released"]

    init() {
        var factory = PrometheusMetricsFactory(registry: registry)
        factory.durationHistogramBuckets = [
            Self.prefix + "command_round_trip_seconds": [
                .microseconds(50), .microseconds(100), .microseconds(250), .microseconds(500), .milliseconds(1),
                .milliseconds(2.5), .milliseconds(5), .milliseconds(10), .milliseconds(25), .milliseconds(100),
                .seconds(1), .seconds(10),
            ],
            Self.prefix + "release_latency_seconds": [
                .microseconds(100), .microseconds(500), .milliseconds(1), .milliseconds(2), .milliseconds(5),
                .milliseconds(10), .milliseconds(50), .milliseconds(100), .seconds(1), .seconds(5), .seconds(30),
            ],
        ]
        self.factory = factory
        func counters(_ name: String) -> [Direction: CoreMetrics.Counter] {
            Dictionary(
                uniqueKeysWithValues: Direction.allCases.map {
                    (
                        $0,
                        CoreMetrics.Counter(
                            label: Self.prefix + name, dimensions: [("direction", $0.rawValue)], factory: factory)
                    )
                })
        }
        messages = counters("messages_total")
        bytes = counters("bytes_total")
        clients = Meter(label: Self.prefix + "clients", factory: factory)
        roundTrip = CoreMetrics.Timer(label: Self.prefix + "command_round_trip_seconds", factory: factory)
        releaseLatency = CoreMetrics.Timer(label: Self.prefix + "release_latency_seconds", factory: factory)
        releaseTimeouts = CoreMetrics.Counter(label: Self.prefix + "release_timeouts_total", factory: factory)
        fdsPassed = CoreMetrics.Counter(label: Self.prefix + "fds_passed_total", factory: factory)
        nativeGroupEvents = Meter(label: Self.prefix + "native_group_events", factory: factory)
        for state in Self.groupStates {
            groups[state] = Meter(label: Self.prefix + "vfio_groups", dimensions: [("state", state)], factory: factory)
        }
        for kind in ["qemu-fds", "all-processes"] { _ = fallbackScan(kind) }
        clients.set(0)
        nativeGroupEvents.set(0)
        for meter in groups.values { meter.set(0) }
    }

    /// One client command's round trip through the sidecar (accepted from the client → QEMU's reply
    /// routed back).
    func observeRoundTrip(nanoseconds: UInt64) {
        roundTrip.recordNanoseconds(Int64(clamping: nanoseconds))
    }

    /// One group's release: the last close of its nodes → `GROUP_RELEASED` sent.
    func observeReleaseLatency(nanoseconds: UInt64) {
        releaseLatency.recordNanoseconds(Int64(clamping: nanoseconds))
    }

    /// Brings the metrics to `snapshot`.
    func apply(_ snapshot: MetricsSnapshot) {
        let t = snapshot.traffic
        let l = last.traffic
        add(messages[.fromClients]!, t.fromClients - l.fromClients)
        add(messages[.toClients]!, t.toClients - l.toClients)
        add(messages[.fromQEMU]!, t.fromQEMU - l.fromQEMU)
        add(messages[.toQEMU]!, t.toQEMU - l.toQEMU)
        add(bytes[.fromClients]!, snapshot.bytes.fromClients - last.bytes.fromClients)
        add(bytes[.toClients]!, snapshot.bytes.toClients - last.bytes.toClients)
        add(bytes[.fromQEMU]!, snapshot.bytes.fromQEMU - last.bytes.fromQEMU)
        add(bytes[.toQEMU]!, snapshot.bytes.toQEMU - last.bytes.toQEMU)
        add(fdsPassed, snapshot.fdsPassed - last.fdsPassed)
        clients.set(snapshot.clients)
        updateClientLoads(snapshot.clientLoads)
        for (key, count) in snapshot.events {
            let counter =
                events[key]
                ?? {
                    let made = CoreMetrics.Counter(
                        label: Self.prefix + "events_total", dimensions: [("event", key.name), ("source", key.source)],
                        factory: factory)
                    events[key] = made
                    return made
                }()
            add(counter, count - (last.events[key] ?? 0))
        }
        for state in Self.groupStates { groups[state]!.set(snapshot.vfio.groupsByState[state] ?? 0) }
        add(releaseTimeouts, snapshot.releaseTimeouts - last.releaseTimeouts)
        for (kind, count) in snapshot.vfio.fallbackScans {
            add(fallbackScan(kind), count - (last.vfio.fallbackScans[kind] ?? 0))
        }
        nativeGroupEvents.set(snapshot.nativeGroupEvents ? 1 : 0)
        last = snapshot
    }

    /// The Prometheus text exposition of every metric.
    func render() -> [UInt8] {
        registry.emitToBuffer()
    }

    private func updateClientLoads(_ loads: [Int: ClientLoad]) {
        for (id, meter) in inFlight where loads[id] == nil {
            meter.destroy()
            inFlight[id] = nil
            queued.removeValue(forKey: id)?.destroy()
        }
        for (id, load) in loads {
            let dimensions = [("client", "\(id)")]
            let flying =
                inFlight[id]
                ?? Meter(label: Self.prefix + "commands_in_flight", dimensions: dimensions, factory: factory)
            let waiting =
                queued[id] ?? Meter(label: Self.prefix + "commands_queued", dimensions: dimensions, factory: factory)
            inFlight[id] = flying
            queued[id] = waiting
            flying.set(load.inFlight)
            waiting.set(load.queued)
        }
    }

    private func fallbackScan(_ kind: String) -> CoreMetrics.Counter {
        if let counter = fallbackScans[kind] { return counter }
        let counter = CoreMetrics.Counter(
            label: Self.prefix + "fallback_scans_total", dimensions: [("kind", kind)], factory: factory)
        fallbackScans[kind] = counter
        return counter
    }

    private func add(_ counter: CoreMetrics.Counter, _ amount: Int) {
        if amount > 0 { counter.increment(by: amount) }
    }
}
