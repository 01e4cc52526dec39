import QMPRuntime
import QMPSidecar
import QMPWire
import Testing
import VFIOFakeHost
import VFIOTracking

#if canImport(Glibc)
import Glibc
#endif

/// The hot path: nodes watched before the `device_add` is forwarded, open file descriptions counted
/// from inotify alone. No scan of QEMU's fds and no poll, however many fds QEMU holds; the fallback only
/// where the counts are lost (queue overflow).
@Suite("Counted release")
struct CountedReleaseTests {
    @Test(arguments: [false, true])
    func releaseWithoutAnyScanInBothOrders(closeFirst: Bool) throws {
        let h = try MonitorHarness(spec: "7=0000:01:00.0")
        try h.qemu.fill(toExtraFDs: 3000)
        h.ready()
        let fd = try h.plugged("hostdev0", host: "01:00.0")
        #expect(h.driver.view(ofGroup: 7)?.qemuHolds == true)
        if closeFirst {
            try h.qemu.close(fd)
            try h.run(for: .milliseconds(20))
            #expect(h.commander.lines.isEmpty, "released before DEVICE_DELETED")
            h.deleted("hostdev0")
        } else {
            h.deleted("hostdev0")
            try h.run(for: .milliseconds(20))
            #expect(h.commander.lines.isEmpty, "released while QEMU holds the group")
            #expect(h.driver.armedTimers == 1, "only the release timeout: the close event will come, no poll")
            try h.qemu.close(fd)
        }
        let data = try #require(try h.waitForEvent("GROUP_RELEASED"))
        #expect(data["devices"]?.strings == ["hostdev0"])
        let statistics = h.driver.statistics
        #expect(statistics.fallbackScans == 0)
        #expect(statistics.knownFDChecks == 0)
        #expect(statistics.pollsFired == 0)
        #expect(statistics.openEvents == 1)
        #expect(statistics.closeEvents == 1)
        #expect(statistics.releases == 1)
        #expect(h.driver.armedTimers == 0)
    }

    @Test func replugCyclesStayScanFree() throws {
        let h = try MonitorHarness(spec: "7=0000:01:00.0")
        h.ready()
        for _ in 0..<3 {
            let fd = try h.plugged("hostdev0", host: "01:00.0")
            h.deleted("hostdev0")
            try h.qemu.close(fd)
            let releases = h.driver.statistics.releases
            let driver = h.driver
            #expect(try h.run(until: { driver.statistics.releases == releases + 1 }))
        }
        #expect(h.driver.statistics.fallbackScans == 0)
        #expect(h.driver.groupsByState == ["released": 1])
    }

    @Test func twoDeviceGroupSharesOneDescription() throws {
        // QEMU opens the group once, for the first device; the second reuses that fd.
        let h = try MonitorHarness(spec: "7=0000:01:00.0,0000:01:00.1")
        h.ready()
        let fd = try h.plugged("a", host: "01:00.0")
        h.add(MonitorHarness.arguments("b", host: "01:00.1"))
        h.deleted("a")
        try h.run(for: .milliseconds(20))
        #expect(h.driver.view(ofGroup: 7)?.phase == .attached)
        h.deleted("b")
        try h.run(for: .milliseconds(20))
        #expect(h.commander.lines.isEmpty, "released while QEMU holds the group")
        try h.qemu.close(fd)
        let data = try #require(try h.waitForEvent("GROUP_RELEASED"))
        #expect(data["devices"]?.strings == ["a", "b"])
        #expect(h.driver.statistics.fallbackScans == 0)
    }

    @Test func aForkedCopyKeepsTheDescriptionOpenWithoutPolling() throws {
        let h = try MonitorHarness(spec: "7=0000:01:00.0", releaseTimeout: .milliseconds(300))
        h.ready()
        let fd = try h.plugged("hostdev0", host: "01:00.0")
        let holder = try h.qemu.forkHolder()  // shares QEMU's description: no open event
        try h.qemu.close(fd)
        h.deleted("hostdev0")
        let timeout = try #require(try h.waitForEvent("GROUP_RELEASE_TIMEOUT", timeout: .seconds(5)))
        #expect(timeout["holders"]?.arrayValue?.map { $0["pid"] } == [.integer(Int64(holder))])
        #expect(h.driver.statistics.pollsFired == 0)
        #expect(h.driver.statistics.releaseTimeouts == 1)
        try h.qemu.releaseHolder(holder)
        #expect(try h.waitForEvent("GROUP_RELEASED", timeout: .seconds(5)) != nil)
        #expect(h.driver.statistics.allProcessScans == 1, "only the timeout's, to name the holder")
    }

    @Test func aFailedDeviceAddLeavesNoWatch() throws {
        let h = try MonitorHarness(spec: "7=0000:01:00.0")
        h.ready()
        h.add(MonitorHarness.arguments("hostdev0", host: "01:00.0"), succeeded: false)
        let fd = try h.openGroup(7)
        try h.qemu.close(fd)
        try h.settle()
        #expect(h.driver.statistics.openEvents == 0)
        #expect(h.driver.view(ofGroup: 7) == nil)
    }

    @Test func theQueryAnswersFromKnownStateWithoutScanning() throws {
        let h = try MonitorHarness(spec: "7=0000:01:00.0")
        h.ready()
        try h.plugged("hostdev0", host: "01:00.0")
        let group = try #require(try h.query().arrayValue?.first)
        #expect(group["state"] == .string("attached"))
        #expect(group["open-descriptions"] == .array([.integer(1), .integer(0)]), "the group node, then the cdev")
        #expect(group["holders"]?.arrayValue?.map { $0["pid"] } == [.integer(Int64(h.qemu.pid))])
        #expect(h.driver.statistics.fallbackScans == 0)
    }

    @Test func anInotifyQueueOverflowFallsBackToScansAndStillReleasesCorrectly() throws {
        let h = try MonitorHarness(spec: "7=0000:01:00.0")
        h.ready()
        let fd = try h.plugged("hostdev0", host: "01:00.0")
        // Flood the queue while the driver does not read it: every open and close of the node is an
        // event, and the kernel keeps at most max_queued_events of them.
        Self.flood(h.host.groupNodePath(7))
        try h.settle()
        #expect(h.driver.statistics.overflows == 1)
        let driver = h.driver
        // Counts are lost: the fallback learns QEMU's fds (bounded steps) and still sees its hold.
        #expect(try h.run(until: { driver.statistics.qemuFullScans >= 1 }, timeout: .seconds(5)))
        h.deleted("hostdev0")
        try h.run(for: .milliseconds(30))
        #expect(h.commander.lines.isEmpty, "released while QEMU holds the group after an overflow")
        try h.qemu.close(fd)
        let data = try #require(try h.waitForEvent("GROUP_RELEASED"))
        #expect(data["devices"]?.strings == ["hostdev0"])
        #expect(h.driver.statistics.fallbackScans >= 1)
    }

    @Test func anOverflowWhileDetachingIsDecidedByABoundedScan() throws {
        let h = try MonitorHarness(spec: "7=0000:01:00.0")
        try h.qemu.fill(toExtraFDs: 3000)
        h.ready()
        let fd = try h.plugged("hostdev0", host: "01:00.0")
        h.deleted("hostdev0")
        try h.settle()
        Self.flood(h.host.groupNodePath(7))
        // One loop round reads the overflow and starts a scan of QEMU's 3000 fds: 1024 per round.
        try h.settle()
        #expect(h.driver.statistics.overflows == 1)
        #expect(h.driver.armedTimers >= 2, "the release timeout and the next scan step")
        try h.run(for: .milliseconds(30))
        #expect(h.commander.lines.isEmpty, "released while QEMU holds the group after an overflow")
        try h.qemu.close(fd)
        #expect(try h.waitForEvent("GROUP_RELEASED") != nil)
        #expect(h.driver.statistics.qemuFullScans == 1)
    }

    /// More opens and closes of `node` than the inotify queue keeps.
    static func flood(_ node: String) {
        for _ in 0..<maxQueuedEvents() {
            let copy = open(node, O_RDONLY | O_CLOEXEC)
            if copy >= 0 { close(copy) }
        }
    }

    @Test func aSidecarStartedWhileAGroupIsDetachingRediscoversItAndReleases() throws {
        // A restarted sidecar (nothing saved): QEMU still finalizes hostdev0 (device_del was sent by the
        // previous sidecar), so QOM still lists it and the group is open. Discovery tracks it with an
        // unknown count; the fallback learns QEMU's fd; the close and DEVICE_DELETED then release it.
        let h = try MonitorHarness(spec: "7=0000:01:00.0", discover: true)
        h.commander.children = [
            "/machine/peripheral": [("hostdev0", "child<vfio-pci>")], "/machine/peripheral-anon": [],
        ]
        h.commander.properties = ["/machine/peripheral/hostdev0": ["host": "0000:01:00.0", "sysfsdev": ""]]
        let fd = try h.openGroup(7)
        try h.qemu.fill(toExtraFDs: 2000)
        h.ready()
        let driver = h.driver
        #expect(try h.run(until: { driver.view(ofGroup: 7)?.qemuHolds == true }, timeout: .seconds(5)))
        try h.qemu.close(fd)
        h.deleted("hostdev0")
        let data = try #require(try h.waitForEvent("GROUP_RELEASED"))
        #expect(data["devices"]?.strings == ["hostdev0"])
        #expect(h.driver.statistics.qemuFullScans == 1, "one bounded scan for the device found attached")
    }

    static func maxQueuedEvents() -> Int {
        let fd = open("/proc/sys/fs/inotify/max_queued_events", O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return 16384 }
        defer { close(fd) }
        var buffer = [UInt8](repeating: 0, count: 32)
        let count = read(fd, &buffer, buffer.count)
        return count > 0
            ? Int(String(decoding: buffer[..<count], as: UTF8.self).split(separator: "\n")[0]) ?? 16384 : 16384
    }
}
