import QMPSidecar
import QMPWire
import Testing
import VFIOFakeHost
import VFIOTracking

/// `upstreamReady(qemuPID:discovered:)`: the sidecar holds client commands until every discovery
/// reply is in, so it must learn exactly when that is.
@Suite struct DiscoveryCompletionTests {
    static func coldPlugged(_ h: MonitorHarness) {
        h.commander.children = [
            "/machine/peripheral": [("hostdev0", "child<vfio-pci>"), ("hostdev1", "child<vfio-pci>")],
            "/machine/peripheral-anon": [],
        ]
        h.commander.properties = [
            "/machine/peripheral/hostdev0": ["host": "0000:01:00.0", "sysfsdev": ""],
            "/machine/peripheral/hostdev1": ["host": "0000:01:00.1", "sysfsdev": ""],
        ]
    }

    @Test func completionComesAfterEveryColdPluggedDeviceIsTracked() throws {
        let h = try MonitorHarness(spec: "7=0000:01:00.0,0000:01:00.1", discover: true)
        Self.coldPlugged(h)
        try h.openGroup(7)
        var trackedAtCompletion: Int?
        let monitor = h.driver
        monitor.upstreamReady(qemuPID: h.qemu.pid) { trackedAtCompletion = monitor.trackedDevices.count }
        #expect(trackedAtCompletion == nil, "the replies come on later loop rounds")
        #expect(monitor.isDiscovering)
        #expect(try h.run(until: { trackedAtCompletion != nil }, timeout: .seconds(5)))
        #expect(trackedAtCompletion == 2)
        #expect(!monitor.isDiscovering)
    }

    @Test func completionIsImmediateWithoutDiscovery() throws {
        let h = try MonitorHarness(spec: "7=0000:01:00.0", discover: false)
        var done = false
        h.driver.upstreamReady(qemuPID: h.qemu.pid) { done = true }
        #expect(done)
        #expect(h.commander.commands.isEmpty)
    }

    @Test func deviceDeletedDuringDiscoveryIsNotTrackedAfterwards() throws {
        let h = try MonitorHarness(spec: "7=0000:01:00.0,0000:01:00.1", discover: true)
        Self.coldPlugged(h)
        try h.openGroup(7)
        var done = false
        h.driver.upstreamReady(qemuPID: h.qemu.pid) { done = true }
        // QEMU's DEVICE_DELETED of hostdev1 overtakes discovery (e.g. a guest-initiated unplug); here
        // the fake still answers qom-get for it, the worst case.
        #expect(h.deleted("hostdev1") == false)
        let monitor = h.driver
        #expect(try h.run(until: { done }, timeout: .seconds(5)))
        #expect(monitor.trackedDevices.map(\.qomPath) == ["/machine/peripheral/hostdev0"])
    }

    @Test func upstreamLossDropsThePendingCompletion() throws {
        let h = try MonitorHarness(spec: "7=0000:01:00.0,0000:01:00.1", discover: true)
        Self.coldPlugged(h)
        var done = false
        h.driver.upstreamReady(qemuPID: nil) { done = true }
        h.driver.upstreamClosed()
        #expect(!h.driver.isDiscovering)
        try h.run(for: .milliseconds(20))
        #expect(!done, "a completion for a gone QEMU session never opens the next session's gate")
    }
}
