import QMPProxy
import Testing

@testable import QMPSidecar

@Suite struct SidecarMetricsTests {
    /// The exposition's sample lines (no `# TYPE`), sorted: the registry's order is not stable.
    static func samples(_ metrics: SidecarMetrics) -> Set<String> {
        Set(
            String(decoding: metrics.render(), as: UTF8.self).split(separator: "\n").map(String.init).filter {
                !$0.hasPrefix("#")
            })
    }

    @Test func snapshotsBecomeCountersAndGauges() {
        let metrics = SidecarMetrics()
        var snapshot = MetricsSnapshot()
        snapshot.traffic = {
            var t = ProxyTraffic()
            t.fromClients = 3
            t.toQEMU = 4
            return t
        }()
        snapshot.bytes.fromQEMU = 100
        snapshot.clients = 2
        snapshot.clientLoads = [1: ClientLoad(inFlight: 1, queued: 2)]
        snapshot.events[.init(name: "DEVICE_DELETED", source: "qemu")] = 2
        snapshot.vfio = VFIOMetricsSnapshot(groupsByState: ["detaching": 1], fallbackScans: ["qemu-fds": 1])
        snapshot.releaseTimeouts = 1
        snapshot.fdsPassed = 2
        metrics.apply(snapshot)
        let lines = Self.samples(metrics)
        for expected in [
            #"qmp_sidecar_messages_total{direction="from-clients"} 3"#,
            #"qmp_sidecar_messages_total{direction="to-qemu"} 4"#,
            #"qmp_sidecar_bytes_total{direction="from-qemu"} 100"#,
            "qmp_sidecar_clients 2.0",
            #"qmp_sidecar_commands_in_flight{client="1"} 1.0"#,
            #"qmp_sidecar_commands_queued{client="1"} 2.0"#,
            #"qmp_sidecar_events_total{event="DEVICE_DELETED",source="qemu"} 2"#,
            #"qmp_sidecar_vfio_groups{state="detaching"} 1.0"#,
            #"qmp_sidecar_vfio_groups{state="attached"} 0.0"#,
            "qmp_sidecar_release_timeouts_total 1",
            "qmp_sidecar_fds_passed_total 2",
            #"qmp_sidecar_fallback_scans_total{kind="qemu-fds"} 1"#,
        ] {
            #expect(lines.contains(expected), "missing \(expected) in \(lines.sorted())")
        }

        // Counters grow by the difference; a gone client's gauges disappear.
        snapshot.traffic.fromClients = 5
        snapshot.clientLoads = [:]
        metrics.apply(snapshot)
        let later = Self.samples(metrics)
        #expect(later.contains(#"qmp_sidecar_messages_total{direction="from-clients"} 5"#))
        #expect(!later.contains { $0.hasPrefix("qmp_sidecar_commands_in_flight") })
    }

    @Test func histogramsCountObservationsInSeconds() {
        let metrics = SidecarMetrics()
        metrics.observeRoundTrip(nanoseconds: 300_000)
        metrics.observeReleaseLatency(nanoseconds: 1_500_000)
        let lines = Self.samples(metrics)
        #expect(lines.contains(#"qmp_sidecar_command_round_trip_seconds_bucket{le="0.00025"} 0"#))
        #expect(lines.contains(#"qmp_sidecar_command_round_trip_seconds_bucket{le="0.0005"} 1"#))
        #expect(lines.contains("qmp_sidecar_command_round_trip_seconds_count 1"))
        #expect(lines.contains(#"qmp_sidecar_release_latency_seconds_bucket{le="0.002"} 1"#))
        #expect(lines.contains("qmp_sidecar_release_latency_seconds_sum 0.0015"))
    }
}
