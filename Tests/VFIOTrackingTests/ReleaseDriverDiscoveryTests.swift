import QMPRuntime
import QMPSidecar
import QMPWire
import Testing
import VFIOFakeHost
import VFIOTracking

#if canImport(Glibc)
import Glibc
#endif

/// The release driver's other jobs, on the same harness as ``ReleaseDriverTests``: cold-plug discovery,
/// the kinds of device nodes (iommufd cdevs, private copies, mdevs), what is not tracked, the query
/// command, the sidecar's byte-level entry points, and the cost of learning fds (scans, timers).
@Suite("Release driver: discovery, queries, entry points")
struct ReleaseDriverDiscoveryTests {
    @Test func coldPluggedDevicesAreDiscovered() throws {
        let h = try MonitorHarness(spec: "7=0000:01:00.0;8=0000:02:00.0", discover: true)
        h.commander.children = [
            "/machine/peripheral": [
                ("hostdev0", "child<vfio-pci>"), ("net0", "child<virtio-net-pci>"), ("bogus", "link<vfio-pci>"),
            ],
            "/machine/peripheral-anon": [("device[0]", "child<vfio-pci>")],
        ]
        h.commander.properties = [
            "/machine/peripheral/hostdev0": ["host": "0000:01:00.0", "sysfsdev": ""],
            "/machine/peripheral-anon/device[0]": [
                "host": PCIAddress.unset, "sysfsdev": "/sys/bus/pci/devices/0000:02:00.0",
            ],
        ]
        let fd7 = try h.openGroup(7)
        let fd8 = try h.openGroup(8)
        h.ready()
        let monitor = h.driver
        #expect(try h.run(until: { monitor.trackedDevices.count == 2 }, timeout: .seconds(5)))
        try h.settle()
        let byPath = Dictionary(uniqueKeysWithValues: h.driver.trackedDevices.map { ($0.qomPath, $0) })
        #expect(byPath["/machine/peripheral/hostdev0"]?.id == "hostdev0")
        #expect(byPath["/machine/peripheral/hostdev0"]?.group == 7)
        #expect(byPath["/machine/peripheral-anon/device[0]"]?.id == nil)
        #expect(byPath["/machine/peripheral-anon/device[0]"]?.group == 8)
        #expect(h.commander.commands.allSatisfy { $0.0 == "qom-list" || $0.0 == "qom-get" })
        #expect(h.driver.view(ofGroup: 8)?.qemuHolds == true)

        // The anonymous device is reported by QOM path.
        _ = h.deleted(
            MonitorHarness.deletedEvent(id: nil, path: "/machine/peripheral-anon/device[0]"))
        try h.qemu.close(fd8)
        let data = try #require(try h.waitForEvent("GROUP_RELEASED"))
        #expect(data["group"] == .integer(8))
        #expect(data["devices"]?.strings == ["/machine/peripheral-anon/device[0]"])
        _ = fd7
    }

    @Test func iommufdCdevDevices() throws {
        // iommufd: QEMU opens each device's cdev, not the group node; this host has no legacy group
        // interface at all (no /dev/vfio/7).
        let h = try MonitorHarness(spec: "7=0000:01:00.0,0000:01:00.1")
        unlink(h.host.groupNodePath(7))
        let cdevA = try h.qemu.open(try #require(h.host.cdevNodePath(ofDevice: "01:00.0")))
        let cdevB = try h.qemu.open(try #require(h.host.cdevNodePath(ofDevice: "01:00.1")))
        h.ready()
        h.added("a", host: "01:00.0")
        h.added("b", host: "01:00.1")
        #expect(h.driver.view(ofGroup: 7)?.qemuHolds == true)
        try h.qemu.close(cdevA)
        h.deleted("a")
        try h.run(for: .milliseconds(30))
        #expect(h.commander.lines.isEmpty, "released after the first device of an iommufd group")
        h.deleted("b")
        try h.run(for: .milliseconds(30))
        #expect(h.commander.lines.isEmpty, "released while QEMU still holds b's cdev")
        try h.qemu.close(cdevB)
        let data = try #require(try h.waitForEvent("GROUP_RELEASED"))
        #expect(data["devices"]?.strings == ["a", "b"])
    }

    @Test func characterDeviceSeenThroughAPrivateCopyMatchesByRdev() throws {
        // libvirt mknods a private /dev/vfio/N for QEMU: another inode, same device number. Here the
        // group node and QEMU's copy are both char devices 1:7 (/dev/full, which nobody holds).
        let h = try MonitorHarness(spec: "7=0000:01:00.0")
        let node = h.host.groupNodePath(7)
        let privateCopy = h.host.root + "/private-vfio-7"
        unlink(node)
        guard mknod(node, S_IFCHR | 0o600, dev_t(0x107)) == 0 else {
            print("skipped characterDeviceSeenThroughAPrivateCopyMatchesByRdev: mknod needs root (errno \(errno))")
            return
        }
        try #require(mknod(privateCopy, S_IFCHR | 0o600, dev_t(0x107)) == 0)
        let fd = try h.qemu.open(privateCopy)
        h.ready()
        h.added("hostdev0", host: "01:00.0")
        #expect(h.driver.view(ofGroup: 7)?.qemuHolds == true)
        h.deleted("hostdev0")
        try h.run(for: .milliseconds(20))
        #expect(h.commander.lines.isEmpty, "released while QEMU holds its private copy")
        // The close is on an inode nobody watches: the detaching poll and a process scan decide.
        try h.qemu.close(fd)
        #expect(try h.waitForEvent("GROUP_RELEASED", timeout: .seconds(5)) != nil)
        #expect(h.driver.statistics.allProcessScans >= 1)
        #expect(h.driver.statistics.closeEvents == 0)
    }

    @Test func mdevGivenBySysfsdevIsTracked() throws {
        let uuid = "6f2a3d1c-0000-4000-8000-000000000001"
        let h = try MonitorHarness(spec: "12=\(uuid)")
        let fd = try h.openGroup(12)
        h.ready()
        h.add(
            .object([
                JSONMember("driver", .string("vfio-pci")), JSONMember("id", .string("gpu0")),
                JSONMember("sysfsdev", .string("/sys/bus/mdev/devices/\(uuid)")),
            ]))
        #expect(h.driver.trackedDevices.first?.resolved.name == uuid)
        #expect(h.driver.view(ofGroup: 12)?.qemuHolds == true)
        h.deleted("gpu0")
        try h.qemu.close(fd)
        let data = try #require(try h.waitForEvent("GROUP_RELEASED"))
        #expect(data["group"] == .integer(12))
    }

    @Test func failedOrForeignDeviceAddsAreNotTracked() throws {
        let h = try MonitorHarness(spec: "7=0000:01:00.0")
        try h.openGroup(7)
        h.ready()
        // A failed device_add is not tracked: its later DEVICE_DELETED is foreign.
        h.add(MonitorHarness.arguments("hostdev0", host: "01:00.0"), succeeded: false)
        #expect(h.deleted("hostdev0") == false)
        // Not VFIO, unresolvable host, unset host: not tracked.
        h.added("kbd", host: "01:00.0", driver: "usb-kbd")
        h.added("ghost", host: "0000:09:00.0")
        h.added("unset", host: PCIAddress.unset)
        #expect(h.driver.trackedDevices.isEmpty)
        #expect(h.driver.view(ofGroup: 7) == nil)
        try h.run(for: .milliseconds(10))
        #expect(h.commander.lines.isEmpty)
    }

    @Test func queryCommandListsGroups() throws {
        let h = try MonitorHarness(spec: "7=0000:01:00.0,0000:01:00.1")
        try h.foundAttached()
        #expect(h.driver.localCommand("query-pci", arguments: nil, disclosure: .operatorView) == nil)
        let group = try #require(try h.query().arrayValue?.first)
        #expect(group["group"] == .integer(7))
        #expect(group["state"] == .string("attached"))
        #expect(group["members"]?.strings == ["0000:01:00.0", "0000:01:00.1"])
        #expect(group["devices"]?.arrayValue?.first?["id"] == .string("hostdev0"))
        #expect(group["holders"]?.arrayValue?.map { $0["pid"] } == [.integer(Int64(h.qemu.pid))])
        #expect(group["hidden-holders"] == .integer(0))
        // A client of another user than the stand-in's (root) is told that, not who.
        let seenByNobody = try #require(try h.query(viewer: HolderDisclosure(viewer: 65534)).arrayValue?.first)
        #expect(seenByNobody["holders"]?.arrayValue == [])
        #expect(seenByNobody["hidden-holders"] == .integer(1))
        #expect(seenByNobody["devices"] == group["devices"])
    }

    @Test func byteLevelEntryPointsForTheSidecar() throws {
        let h = try MonitorHarness(spec: "7=0000:01:00.0", hold: true)
        let fd = try h.openGroup(7)
        h.ready()
        let arguments = Array(#"{'driver': 'vfio-pci', 'id': 'hd0', 'host': '01:00.0'}"#.utf8)
        h.driver.commandObserved("device_add", arguments: arguments)
        h.driver.observedReply("device_add", arguments: arguments, succeeded: true)
        #expect(h.driver.trackedDevices.map(\.id) == ["hd0"])
        #expect(h.driver.localCommandNames == [VFIOConfiguration.defaultQueryCommandName])
        #expect(h.driver.observedCommands == ["device_add"])
        let line = MonitorHarness.deletedEvent(id: "hd0", path: "/machine/peripheral/hd0").bytes + [0x0D, 0x0A]
        try h.qemu.close(fd)
        #expect(h.deleted(MonitorHarness.deletedEvent(id: "hd0", path: "/machine/peripheral/hd0")) == true)
        #expect(try h.waitForEvent("GROUP_RELEASED") != nil)
        #expect(h.commander.lines.first == line)
    }

    @Test func devicesAttachedInOneRoundShareOneFullScan() throws {
        let h = try MonitorHarness(spec: "7=0000:01:00.0;8=0000:02:00.0;9=0000:03:00.0")
        for group in [7, 8, 9] { try h.openGroup(group) }
        try h.qemu.fill(toExtraFDs: 100)
        h.ready()
        for (id, address) in [("a", "01:00.0"), ("b", "02:00.0"), ("c", "03:00.0")] {
            h.add(MonitorHarness.arguments(id, host: address), settle: false)
        }
        try h.settle()
        #expect(h.driver.statistics.qemuFullScans == 1)
        #expect([7, 8, 9].allSatisfy { h.driver.view(ofGroup: $0)?.qemuHolds == true })
    }

    @Test func learningManyFDsIsSpreadOverLoopRounds() throws {
        let h = try MonitorHarness(spec: "7=0000:01:00.0")
        try h.qemu.fill(toExtraFDs: 3000)
        let fd = try h.openGroup(7)
        h.ready()
        h.add(MonitorHarness.arguments("hostdev0", host: "01:00.0"), settle: false)
        // One round does at most one step of 1024 fds: not done yet.
        try h.settle()
        #expect(h.driver.view(ofGroup: 7)?.qemuHolds == false)
        #expect(h.driver.armedTimers == 1)
        let monitor = h.driver
        #expect(try h.run(until: { monitor.view(ofGroup: 7)?.qemuHolds == true }, timeout: .seconds(5)))
        #expect(h.driver.statistics.qemuFullScans == 1)
        #expect(h.driver.armedTimers == 0)
        h.deleted("hostdev0")
        try h.qemu.close(fd)
        #expect(try h.waitForEvent("GROUP_RELEASED") != nil)
        #expect(h.driver.statistics.qemuFullScans == 1)
        #expect(h.driver.statistics.allProcessScans == 1, "a non-exclusive node of unknown count: one scan")
    }

    @Test func nothingDetachingMeansNoTimers() throws {
        let h = try MonitorHarness(spec: "7=0000:01:00.0")
        try h.foundAttached()
        try h.run(for: .milliseconds(5))
        #expect(h.driver.armedTimers == 0)
        #expect(h.reactor.armedTimerCount == 0)
    }
}
