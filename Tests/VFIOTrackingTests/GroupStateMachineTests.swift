import Testing
import VFIOTracking

typealias Action = VFIOGroupStateMachine.Action

/// The pure group state machine, driven input by input with explicit times and check results.
@Suite("Group state machine")
struct GroupStateMachineTests {
    let timeout: UInt64 = 30_000_000_000

    func attached(_ paths: [String], group: Int = 7) -> VFIOGroupStateMachine {
        var machine = VFIOGroupStateMachine(
            releaseTimeoutNanoseconds: timeout, pollInitialNanoseconds: 1_000_000, pollMaximumNanoseconds: 8_000_000)
        for path in paths {
            let actions = machine.deviceAttached(path, group: group)
            #expect(actions.contains(.learnQEMUHolders(group: group)))
            _ = machine.holdersLearned(group: group, qemuHolds: true)
        }
        return machine
    }

    @Test func closeThenEventReleasesAtTheEvent() {
        // QEMU 2.11+: the group fd closes, then DEVICE_DELETED comes.
        var machine = attached(["/machine/peripheral/hostdev0"])
        #expect(machine.closeObserved(group: 7, now: 100) == [.checkQEMU(group: 7)])
        #expect(machine.qemuChecked(group: 7, holds: false, now: 110) == [])
        #expect(machine.view(of: 7)?.phase == .attached)
        let actions = machine.deviceDeleted(
            "/machine/peripheral/hostdev0", displayName: "hostdev0", group: 7, now: 1_000)
        #expect(actions == [.scheduleTimeout(group: 7, afterNanoseconds: timeout), .checkQEMU(group: 7)])
        #expect(
            machine.qemuChecked(group: 7, holds: false, now: 1_050) == [
                .cancelTimeout(group: 7), .unwatchNodes(group: 7),
                .emitReleased(group: 7, devices: ["hostdev0"], waitedNanoseconds: 50),
            ])
        #expect(machine.view(of: 7)?.phase == .released)
    }

    @Test func eventThenCloseReleasesAtTheClose() {
        // Before QEMU 2.11: DEVICE_DELETED, then the close seconds later.
        var machine = attached(["/machine/peripheral/hostdev0"])
        _ = machine.deviceDeleted("/machine/peripheral/hostdev0", displayName: "hostdev0", group: 7, now: 1_000)
        #expect(
            machine.qemuChecked(group: 7, holds: true, now: 1_010) == [
                .schedulePoll(group: 7, afterNanoseconds: 1_000_000)
            ])
        #expect(machine.view(of: 7)?.phase == .detaching)
        // The poll backs off while QEMU still holds the group.
        #expect(machine.pollFired(group: 7, now: 2_000_000) == [.checkQEMU(group: 7)])
        #expect(
            machine.qemuChecked(group: 7, holds: true, now: 2_000_010) == [
                .schedulePoll(group: 7, afterNanoseconds: 2_000_000)
            ])
        #expect(machine.closeObserved(group: 7, now: 3_000_000) == [.checkQEMU(group: 7)])
        #expect(
            machine.qemuChecked(group: 7, holds: false, now: 3_000_000) == [
                .cancelPoll(group: 7), .cancelTimeout(group: 7), .unwatchNodes(group: 7),
                .emitReleased(group: 7, devices: ["hostdev0"], waitedNanoseconds: 2_999_000),
            ])
    }

    @Test func pollBackoffIsBounded() {
        var machine = attached(["/a"])
        _ = machine.deviceDeleted("/a", displayName: "a", group: 7, now: 0)
        var delays: [UInt64] = []
        var actions = machine.qemuChecked(group: 7, holds: true, now: 0)
        for step in 1...6 {
            guard case .schedulePoll(_, let delay) = actions.first else {
                Issue.record("expected a poll, got \(actions)")
                return
            }
            delays.append(delay)
            _ = machine.pollFired(group: 7, now: UInt64(step))
            actions = machine.qemuChecked(group: 7, holds: true, now: UInt64(step))
        }
        #expect(delays == [1_000_000, 2_000_000, 4_000_000, 8_000_000, 8_000_000, 8_000_000])
    }

    @Test func twoDeviceGroupIsNeverReleasedAfterTheFirst() {
        var machine = attached(["/machine/peripheral/a", "/machine/peripheral/b"])
        // Even a close observed while QEMU holds nothing cannot release an attached group.
        _ = machine.closeObserved(group: 7, now: 5)
        #expect(machine.qemuChecked(group: 7, holds: false, now: 6) == [])
        #expect(machine.deviceDeleted("/machine/peripheral/a", displayName: "a", group: 7, now: 10) == [])
        #expect(machine.view(of: 7)?.phase == .attached)
        #expect(machine.view(of: 7)?.guestDevices == ["/machine/peripheral/b"])
        _ = machine.closeObserved(group: 7, now: 15)
        #expect(machine.qemuChecked(group: 7, holds: true, now: 16) == [])
        _ = machine.deviceDeleted("/machine/peripheral/b", displayName: "b", group: 7, now: 20)
        _ = machine.closeObserved(group: 7, now: 30)
        let actions = machine.qemuChecked(group: 7, holds: false, now: 40)
        #expect(actions.last == .emitReleased(group: 7, devices: ["a", "b"], waitedNanoseconds: 20))
    }

    @Test func copyElsewhereBlocksUntilItsCloseIsSeen() {
        var machine = attached(["/a"])
        // QEMU closed its fd, but a copy lives elsewhere: no close event arrived.
        _ = machine.deviceDeleted("/a", displayName: "a", group: 7, now: 0)
        // First a grace poll (a close event may be queued), then a scan of every process.
        #expect(
            machine.qemuChecked(group: 7, holds: false, now: 1) == [
                .schedulePoll(group: 7, afterNanoseconds: 1_000_000)
            ])
        #expect(machine.pollFired(group: 7, now: 2) == [.checkQEMU(group: 7)])
        #expect(machine.qemuChecked(group: 7, holds: false, now: 3) == [.scanAllProcesses(group: 7)])
        #expect(
            machine.processesScanned(group: 7, anyHolder: true, now: 4) == [
                .schedulePoll(group: 7, afterNanoseconds: 2_000_000)
            ])
        #expect(machine.pollFired(group: 7, now: 5) == [.checkQEMU(group: 7)])
        #expect(machine.qemuChecked(group: 7, holds: false, now: 5) == [.scanAllProcesses(group: 7)])
        #expect(
            machine.processesScanned(group: 7, anyHolder: true, now: 5) == [
                .schedulePoll(group: 7, afterNanoseconds: 4_000_000)
            ])
        // The copy's holder closes it: the last close is witnessed.
        #expect(machine.closeObserved(group: 7, now: 6) == [.checkQEMU(group: 7)])
        #expect(
            machine.qemuChecked(group: 7, holds: false, now: 7).last
                == .emitReleased(group: 7, devices: ["a"], waitedNanoseconds: 7))
    }

    @Test func aScanFindingNobodyReleasesWithoutAnEvent() {
        var machine = attached(["/a"])
        _ = machine.deviceDeleted("/a", displayName: "a", group: 7, now: 0)
        _ = machine.qemuChecked(group: 7, holds: false, now: 1)
        #expect(
            machine.processesScanned(group: 7, anyHolder: false, now: 9).last
                == .emitReleased(group: 7, devices: ["a"], waitedNanoseconds: 9))
    }

    @Test func reAddWhileDetachingReturnsToAttached() {
        var machine = attached(["/a"])
        _ = machine.deviceDeleted("/a", displayName: "a", group: 7, now: 0)
        _ = machine.qemuChecked(group: 7, holds: true, now: 1)
        let actions = machine.deviceAttached("/a", group: 7)
        #expect(actions == [.cancelPoll(group: 7), .cancelTimeout(group: 7), .learnQEMUHolders(group: 7)])
        #expect(machine.view(of: 7)?.phase == .attached)
        // A close now (e.g. a stale event) releases nothing.
        _ = machine.closeObserved(group: 7, now: 2)
        #expect(machine.qemuChecked(group: 7, holds: true, now: 3) == [])
        // Deleted again later: the group reports both deletions.
        _ = machine.deviceDeleted("/a", displayName: "a", group: 7, now: 100)
        _ = machine.closeObserved(group: 7, now: 150)
        #expect(
            machine.qemuChecked(group: 7, holds: false, now: 200).last
                == .emitReleased(group: 7, devices: ["a", "a"], waitedNanoseconds: 100))
    }

    @Test func timeoutKeepsTrackingAndALaterReleaseStillEmits() {
        var machine = attached(["/a"])
        _ = machine.deviceDeleted("/a", displayName: "a", group: 7, now: 0)
        _ = machine.qemuChecked(group: 7, holds: true, now: 1)
        #expect(
            machine.timeoutFired(group: 7, now: timeout) == [
                .emitTimeout(group: 7, devices: ["a"], waitedNanoseconds: timeout)
            ])
        #expect(machine.view(of: 7)?.timedOut == true)
        #expect(machine.timeoutFired(group: 7, now: timeout + 1) == [])
        _ = machine.closeObserved(group: 7, now: timeout + 5)
        let actions = machine.qemuChecked(group: 7, holds: false, now: timeout + 6)
        #expect(actions.contains(.cancelPoll(group: 7)))
        #expect(!actions.contains(.cancelTimeout(group: 7)))
        #expect(actions.last == .emitReleased(group: 7, devices: ["a"], waitedNanoseconds: timeout + 6))
    }

    @Test func qemuExitWhileDetachingDecidesAndForgetsAttachedGroups() {
        var machine = attached(["/a"], group: 7)
        _ = machine.deviceAttached("/b", group: 8)
        _ = machine.holdersLearned(group: 8, qemuHolds: true)
        _ = machine.deviceDeleted("/a", displayName: "a", group: 7, now: 0)
        _ = machine.qemuChecked(group: 7, holds: true, now: 1)
        // QEMU still held group 7, so a poll is armed: it serves as the grace poll, then a scan decides.
        let actions = machine.qemuExited(now: 50)
        #expect(actions == [.unwatchNodes(group: 8), .forget(group: 8)])
        #expect(machine.view(of: 8) == nil)
        #expect(machine.pollFired(group: 7, now: 55) == [.scanAllProcesses(group: 7)])
        #expect(
            machine.processesScanned(group: 7, anyHolder: false, now: 60).last
                == .emitReleased(group: 7, devices: ["a"], waitedNanoseconds: 60))
    }

    @Test func qemuExitThenItsCloseEventReleases() {
        var machine = attached(["/a"])
        _ = machine.deviceDeleted("/a", displayName: "a", group: 7, now: 0)
        _ = machine.qemuChecked(group: 7, holds: true, now: 1)
        _ = machine.qemuExited(now: 10)
        // Exit closed the file: the event comes; QEMU is not asked any more.
        #expect(
            machine.closeObserved(group: 7, now: 20).last
                == .emitReleased(group: 7, devices: ["a"], waitedNanoseconds: 20))
    }

    @Test func certainCountsNeedNoPollAndNoWitness() {
        // Exact open-description counts: "still open" waits for the close event without a poll, and
        // "nothing open" is the release itself, whichever event order.
        var machine = attached(["/machine/peripheral/hostdev0"])
        _ = machine.deviceDeleted("/machine/peripheral/hostdev0", displayName: "hostdev0", group: 7, now: 1_000)
        #expect(machine.qemuChecked(group: 7, holds: true, certain: true, now: 1_010) == [])
        #expect(machine.view(of: 7)?.phase == .detaching)
        #expect(
            machine.qemuChecked(group: 7, holds: false, certain: true, now: 1_500) == [
                .cancelTimeout(group: 7), .unwatchNodes(group: 7),
                .emitReleased(group: 7, devices: ["hostdev0"], waitedNanoseconds: 500),
            ])
    }

    @Test func untrackedDeletionsAreIgnored() {
        // A device whose device_add failed was never attached: its DEVICE_DELETED changes nothing.
        var machine = attached(["/machine/peripheral/a"])
        #expect(machine.deviceDeleted("/machine/peripheral/failed", displayName: "failed", group: 7, now: 0) == [])
        #expect(machine.deviceDeleted("/machine/peripheral/a", displayName: "a", group: 9, now: 0) == [])
        #expect(machine.view(of: 7)?.phase == .attached)
    }

    @Test func releasedGroupStartsAFreshPeriodOnAttach() {
        var machine = attached(["/a"])
        _ = machine.deviceDeleted("/a", displayName: "a", group: 7, now: 0)
        _ = machine.closeObserved(group: 7, now: 1)
        _ = machine.qemuChecked(group: 7, holds: false, now: 2)
        #expect(machine.view(of: 7)?.phase == .released)
        #expect(machine.deviceAttached("/a", group: 7) == [.watchNodes(group: 7), .learnQEMUHolders(group: 7)])
        #expect(machine.view(of: 7)?.deletedDevices == [])
        // A close event in the released state is ignored; after re-attach it counts again.
        _ = machine.holdersLearned(group: 7, qemuHolds: true)
        _ = machine.deviceDeleted("/a", displayName: "a", group: 7, now: 10)
        #expect(
            machine.qemuChecked(group: 7, holds: false, now: 11) == [
                .schedulePoll(group: 7, afterNanoseconds: 1_000_000)
            ])
    }
}

@Suite("Device registry")
struct DeviceRegistryTests {
    let resolved = ResolvedVFIODevice(name: "0000:01:00.0", sysfsPath: "/sys/bus/pci/devices/0000:01:00.0", group: 7)

    @Test func vfioDriversAreRecognised() {
        #expect(VFIODeviceDescription(driver: "vfio-pci", host: "01:00.0").isVFIO)
        #expect(VFIODeviceDescription(driver: "vfio-pci-nohotplug", sysfsdev: "/sys/x").isVFIO)
        #expect(VFIODeviceDescription(driver: "vfio-ap", sysfsdev: "/sys/devices/vfio_ap/matrix/x").isVFIO)
        #expect(!VFIODeviceDescription(driver: "vfio-pci", host: PCIAddress.unset).isVFIO)
        #expect(!VFIODeviceDescription(driver: "virtio-net-pci", host: "01:00.0").isVFIO)
        #expect(!VFIODeviceDescription(driver: "vfio-user-pci").isVFIO)
    }

    @Test func keyedByQOMPathWithIDsWhereTheyExist() {
        var registry = VFIODeviceRegistry()
        let named = TrackedVFIODevice(
            qomPath: "/machine/peripheral/hostdev0", id: "hostdev0", driver: "vfio-pci", resolved: resolved)
        var anonResolved = resolved
        anonResolved.name = "0000:01:00.1"
        let anonymous = TrackedVFIODevice(
            qomPath: "/machine/peripheral-anon/device[3]", id: nil, driver: "vfio-pci", resolved: anonResolved)
        #expect(registry.track(named) == nil)
        #expect(registry.track(anonymous) == nil)
        #expect(registry.devices(inGroup: 7).map(\.displayName) == ["hostdev0", "/machine/peripheral-anon/device[3]"])
        #expect(registry.contains(name: "0000:01:00.1"))
        #expect(VFIODeviceRegistry.deletedPath(path: nil, device: "hostdev0") == "/machine/peripheral/hostdev0")
        #expect(registry.untrack(qomPath: "/machine/peripheral/hostdev0")?.id == "hostdev0")
        #expect(registry.untrack(qomPath: "/machine/peripheral/hostdev0") == nil)
        #expect(registry.count == 1)
    }

    @Test func theGroupIndexFollowsRetrackingAndUntracking() {
        var registry = VFIODeviceRegistry()
        func device(_ id: String, group: Int) -> TrackedVFIODevice {
            var resolved = resolved
            resolved.group = group
            return TrackedVFIODevice(
                qomPath: "/machine/peripheral/\(id)", id: id, driver: "vfio-pci", resolved: resolved)
        }
        registry.track(device("a", group: 7))
        registry.track(device("b", group: 8))
        registry.track(device("c", group: 8))
        // The QOM path reused for a device of another group moves to that group.
        #expect(registry.track(device("a", group: 8))?.group == 7)
        #expect(registry.devices(inGroup: 7).isEmpty)
        #expect(registry.devices(inGroup: 8).map(\.displayName) == ["b", "c", "a"])
        _ = registry.untrack(qomPath: "/machine/peripheral/c")
        #expect(registry.devices(inGroup: 8).map(\.displayName) == ["b", "a"])
        #expect(registry.all.map(\.displayName) == ["a", "b"], "all keeps first-tracking order")
    }
}
