import QMPWire
import Testing

@testable import QMPMock

@Suite("Mock VFIO semantics")
struct MockVFIOTests {
    static func vfio(_ id: String, _ host: String, iommufd: Bool = false) -> [JSONMember] {
        var args: [JSONMember] = [
            JSONMember("driver", .string("vfio-pci")), JSONMember("host", .string(host)), JSONMember("id", .string(id)),
        ]
        if iommufd { args.append(JSONMember("iommufd", .string("iommufd0"))) }
        return args
    }

    @Test func twoDeviceGroupOpensOnceAndClosesWithTheLastDevice() throws {
        var h = try Harness()
        h.negotiate()
        #expect(
            h.execute("device_add", Self.vfio("a", "0000:01:00.0"), id: 1) == [#"{"return": {}, "id": 1}"# + "\r\n"])
        #expect(h.execute("device_add", Self.vfio("b", "01:00.1"), id: 2) == [#"{"return": {}, "id": 2}"# + "\r\n"])
        #expect(h.host.opened.map(\.path) == ["/dev/vfio/7"])
        let groupFD = h.host.opened[0].fd
        #expect(h.machine.openGroups == [7: groupFD])
        #expect(
            h.execute(
                "qom-get",
                [JSONMember("path", .string("/machine/peripheral/b")), JSONMember("property", .string("host"))], id: 3)
                == [
                    #"{"return": "0000:01:00.1", "id": 3}"# + "\r\n"
                ])
        let first = h.settle("device_del", [JSONMember("id", .string("a"))], id: 4)
        #expect(first.count == 2)
        #expect(first.last?.contains(#""data": {"device": "a", "path": "/machine/peripheral/a"}"#) == true)
        #expect(h.host.openFDs == [groupFD])
        let second = h.settle("device_del", [JSONMember("id", .string("b"))], id: 5)
        #expect(second.count == 2)
        #expect(second.last?.contains(#""device": "b""#) == true)
        #expect(h.host.openFDs.isEmpty)
        #expect(h.machine.openGroups.isEmpty)
        #expect(h.host.container.opens == 1, "one container for the machine, as QEMU")
        #expect(h.host.container.fd == nil, "closed with the last group")
        // 2.11+ order: the close comes before the event.
        let kinds = h.lastActions.compactMap { action -> String? in
            switch action {
            case .note(let text) where text.hasPrefix("closed group"): "close"
            case .send(_, let bytes) where String(decoding: bytes, as: UTF8.self).contains("DEVICE_DELETED"): "event"
            default: nil
            }
        }
        #expect(kinds == ["close", "event"])
    }

    /// QEMU's device descriptor: one per device, closed at that device's finalize; the group's closes
    /// with its last device (as measured on QEMU 7.2 with a two-device group).
    @Test func eachDeviceHasItsOwnDescriptorAndTheGroupOutlivesTheFirst() throws {
        var h = try Harness()
        h.negotiate()
        _ = h.execute("device_add", Self.vfio("a", "0000:01:00.0"))
        _ = h.execute("device_add", Self.vfio("b", "0000:01:00.1"))
        #expect(h.host.deviceFDs.map(\.name) == ["0000:01:00.0", "0000:01:00.1"])
        #expect(h.host.openDevices == ["0000:01:00.0", "0000:01:00.1"])
        _ = h.settle("device_del", [JSONMember("id", .string("a"))])
        #expect(h.host.openDevices == ["0000:01:00.1"], "only a's descriptor closed")
        #expect(h.machine.openGroups.keys.sorted() == [7], "the group stays with b")
        let kinds = { (actions: [MockAction]) in
            actions.compactMap { action -> String? in
                guard case .note(let text) = action else { return nil }
                return text.hasPrefix("closed device") ? "device" : text.hasPrefix("closed group") ? "group" : nil
            }
        }
        #expect(kinds(h.lastActions) == ["device"])
        _ = h.settle("device_del", [JSONMember("id", .string("b"))])
        #expect(h.host.openDevices.isEmpty)
        #expect(h.machine.openGroups.isEmpty)
        #expect(kinds(h.lastActions) == ["device", "group"], "the device descriptor closes before the group's")
    }

    /// `sysfsdev` wins over `host`, as in QEMU and the tracker: the device is sysfsdev's.
    @Test func sysfsdevWinsOverHost() throws {
        var h = try Harness { $0.sysfsRoot = "/fake/sys" }
        h.negotiate()
        let args: [JSONMember] = [
            JSONMember("driver", .string("vfio-pci")), JSONMember("host", .string("01:00.0")),
            JSONMember("sysfsdev", .string("/sys/bus/pci/devices/0000:02:00.0")), JSONMember("id", .string("x")),
        ]
        #expect(h.execute("device_add", args, id: 1) == [#"{"return": {}, "id": 1}"# + "\r\n"])
        #expect(h.host.lookedUp == ["/fake/sys/bus/pci/devices/0000:02:00.0"])
        #expect(h.host.opened.map(\.path) == ["/dev/vfio/8"])
        #expect(h.host.deviceFDs.map(\.name) == ["0000:02:00.0"])
        func qom(_ property: String) -> [String] {
            h.execute("qom-get", [JSONMember("path", .string("x")), JSONMember("property", .string(property))])
        }
        #expect(qom("host") == [#"{"return": "0000:01:00.0"}"# + "\r\n"])
        #expect(qom("sysfsdev") == [#"{"return": "/sys/bus/pci/devices/0000:02:00.0"}"# + "\r\n"])
    }

    /// QEMU 7.2's texts for each step of realize that can fail (the differential test checks them live).
    @Test func realizeErrorsInQEMUsOrder() throws {
        var h = try Harness()
        h.host.failOpen = ["/dev/vfio/8"]
        h.negotiate()
        func desc(_ args: [JSONMember]) -> String {
            let line = h.execute("device_add", [JSONMember("driver", .string("vfio-pci"))] + args).first ?? ""
            return (try? JSONValue(parsing: Array(line.utf8)))?["error"]?["desc"]?.stringValue ?? line
        }
        #expect(desc([]) == "No provided host device")
        #expect(desc([JSONMember("host", .string("zz"))]) == "Property 'vfio-pci.host' doesn't take value 'zz'")
        #expect(
            desc([
                JSONMember("host", .string("zz")), JSONMember("sysfsdev", .string("/sys/bus/pci/devices/0000:02:00.0")),
            ])
                == "Property 'vfio-pci.host' doesn't take value 'zz'")
        #expect(desc([JSONMember("sysfsdev", .string(""))]) == "vfio : no such host device: No such file or directory")
        #expect(
            desc([JSONMember("host", .string("9:0.0"))])
                == "vfio /sys/bus/pci/devices/0000:09:00.0: no such host device: No such file or directory")
        #expect(
            desc([JSONMember("host", .string("3:0.0"))])
                == "vfio 0000:03:00.0: no iommu_group found: No such file or directory")
        #expect(
            desc([JSONMember("host", .string("2:0.0"))])
                == "vfio 0000:02:00.0: failed to open /dev/vfio/8: Device or resource busy")
        #expect(h.execute("device_add", Self.vfio("a", "1:0.0")) == [#"{"return": {}}"# + "\r\n"])
        #expect(
            desc([JSONMember("sysfsdev", .string("/sys/bus/pci/devices/0000:01:00.0"))])
                == "vfio 0000:01:00.0: device is already attached")
        #expect(h.host.opened.map(\.path) == ["/dev/vfio/7"], "failed realizes leave nothing open")
        #expect(h.host.openDevices == ["0000:01:00.0"])
    }

    @Test func finalizeDelayAndBeforeCloseOrder() throws {
        var h = try Harness {
            $0.finalizeDelay = 0.5
            $0.eventOrder = .beforeClose
        }
        h.negotiate()
        _ = h.execute("device_add", Self.vfio("a", "0000:02:00.0"))
        let reply = h.execute("device_del", [JSONMember("id", .string("a"))], id: 1)
        #expect(reply.count == 2)
        #expect(reply.last?.contains("DEVICE_DELETED") == true)
        #expect(h.pendingTimers.map(\.after) == [500_000_000])
        #expect(h.host.openFDs.count == 1)
        #expect(
            h.execute("device_del", [JSONMember("id", .string("a"))], id: 2) == [
                #"{"id": 2, "error": {"class": "DeviceNotFound", "desc": "Device 'a' not found"}}"# + "\r\n"
            ])
        #expect(h.fireTimers().isEmpty)
        #expect(h.host.openFDs.isEmpty)
    }

    @Test func afterCloseWithDelayHoldsTheEventUntilFinalize() throws {
        var h = try Harness { $0.finalizeDelay = 1 }
        h.negotiate()
        _ = h.execute("device_add", Self.vfio("a", "0000:02:00.0"))
        #expect(
            h.execute("device_del", [JSONMember("id", .string("a"))], id: 1) == [#"{"return": {}, "id": 1}"# + "\r\n"])
        #expect(h.host.openFDs.count == 1)
        let later = h.fireTimers()
        #expect(later.count == 1)
        #expect(later.first?.contains("DEVICE_DELETED") == true)
        #expect(h.host.openFDs.isEmpty)
    }

    @Test func leakedGroupNeverCloses() throws {
        var h = try Harness { $0.faults.leakGroups = [8] }
        h.negotiate()
        _ = h.execute("device_add", Self.vfio("a", "0000:02:00.0"))
        let out = h.settle("device_del", [JSONMember("id", .string("a"))])
        #expect(out.contains { $0.contains("DEVICE_DELETED") })
        #expect(h.host.openFDs.count == 1)
    }

    @Test func secondHolderStartsWithTheGroupAndStopsLater() throws {
        var h = try Harness { $0.faults.secondHolder = [8: 2.0] }
        h.negotiate()
        _ = h.execute("device_add", Self.vfio("a", "0000:02:00.0"))
        #expect(h.host.holders == [8])
        _ = h.settle("device_del", [JSONMember("id", .string("a"))])
        #expect(h.host.holders == [8])
        #expect(h.pendingTimers.map(\.after) == [2_000_000_000])
        _ = h.fireTimers()
        #expect(h.host.holders.isEmpty)
    }

    @Test func iommufdOpensOneCdevPerDevice() throws {
        var h = try Harness()
        h.negotiate()
        _ = h.execute("device_add", Self.vfio("a", "0000:01:00.0", iommufd: true))
        _ = h.execute("device_add", Self.vfio("b", "0000:01:00.1", iommufd: true))
        #expect(h.host.opened.map(\.path) == ["/dev/vfio/devices/vfio0", "/dev/vfio/devices/vfio1"])
        _ = h.settle("device_del", [JSONMember("id", .string("a"))])
        #expect(h.host.openFDs == [h.host.opened[1].fd])
    }

    @Test func deviceAddErrors() throws {
        var h = try Harness()
        h.negotiate()
        func desc(_ lines: [String]) -> String { lines.first ?? "" }
        #expect(
            desc(h.execute("device_add", [JSONMember("driver", .string("nosuchdev"))])).contains(
                "'nosuchdev' is not a valid device model name"))
        _ = h.execute("device_add", Self.vfio("a", "0000:01:00.0"))
        #expect(desc(h.execute("device_add", Self.vfio("a", "0000:01:00.1"))).contains("Duplicate device ID 'a'"))
    }

    @Test func mdevBySysfsdevUnderTheSysfsRoot() throws {
        var h = try Harness { $0.sysfsRoot = "/fake/sys" }
        h.negotiate()
        let mdev = "/sys/bus/mdev/devices/c0ffee00-0000-4000-8000-000000000001"
        let args: [JSONMember] = [
            JSONMember("driver", .string("vfio-pci")), JSONMember("sysfsdev", .string(mdev)),
            JSONMember("id", .string("m")),
        ]
        #expect(h.execute("device_add", args, id: 1) == [#"{"return": {}, "id": 1}"# + "\r\n"])
        #expect(h.host.lookedUp == ["/fake/sys/bus/mdev/devices/c0ffee00-0000-4000-8000-000000000001"])
        #expect(h.host.opened.map(\.path) == ["/dev/vfio/9"])
        #expect(
            h.execute("qom-get", [JSONMember("path", .string("m")), JSONMember("property", .string("sysfsdev"))]) == [
                #"{"return": "\#(mdev)"}"# + "\r\n"
            ])
        #expect(
            h.execute("qom-get", [JSONMember("path", .string("m")), JSONMember("property", .string("host"))]) == [
                #"{"return": "ffff:ff:ff.f"}"# + "\r\n"
            ])
        _ = h.settle("device_del", [JSONMember("id", .string("m"))])
        #expect(h.host.openFDs.isEmpty)
    }

    @Test func coldPluggedDevicesAreDiscoverable() throws {
        var h = try Harness {
            $0.devices = [
                try MockDeviceSpec(parsing: "vfio-pci,host=0000:01:00.0,id=hostdev0"),
                try MockDeviceSpec(parsing: "vfio-pci,host=0000:01:00.1,id=hostdev1"),
            ]
            $0.sysfsRoot = "/fake/sys"
        }
        #expect(h.host.opened.map(\.path) == ["/dev/vfio/7"])
        h.negotiate()
        let list = h.execute("qom-list", [JSONMember("path", .string("/machine/peripheral"))], id: 1)
        #expect(
            list == [
                #"{"return": [{"name": "type", "type": "string"}, {"name": "hostdev0", "type": "child<vfio-pci>"}, {"name": "hostdev1", "type": "child<vfio-pci>"}], "id": 1}"#
                    + "\r\n"
            ])
        #expect(
            h.execute(
                "qom-get",
                [
                    JSONMember("path", .string("/machine/peripheral/hostdev1")),
                    JSONMember("property", .string("sysfsdev")),
                ]) == [
                    #"{"return": "/fake/sys/bus/pci/devices/0000:01:00.1"}"# + "\r\n"
                ])
        #expect(
            h.execute("qom-get", [JSONMember("path", .string("hostdev0")), JSONMember("property", .string("type"))])
                == [
                    #"{"return": "vfio-pci"}"# + "\r\n"
                ])
    }
}
