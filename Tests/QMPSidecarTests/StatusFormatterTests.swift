import QMPWire
import Testing

@testable import QMPSidecar

@Suite struct StatusFormatterTests {
    /// A query reply as the sidecar sends it: one group detaching, one attached.
    static let reply = #"""
        [{"group": 7, "state": "detaching", "devices": [{"id": "hostdev1", "qom-path": "/machine/peripheral/hostdev1", "driver": "vfio-pci", "sysfs": "0000:01:00.1"}], "deleted": ["hostdev0"], "members": ["0000:01:00.0", "0000:01:00.1"], "holders": [{"pid": 4242, "comm": "qemu-system-x86"}]},
         {"group": 12, "state": "attached", "devices": [{"qom-path": "/machine/peripheral-anon/device[0]", "driver": "vfio-pci", "sysfs": "0000:03:00.0", "cdev": "/dev/vfio/devices/vfio3"}], "deleted": [], "members": ["0000:03:00.0"], "holders": []}]
        """#

    @Test func parsesTheQueryReply() throws {
        let groups = GroupStatus.parse(try JSONValue(parsing: Array(Self.reply.utf8)))
        #expect(groups.count == 2)
        #expect(groups[0].group == 7 && groups[0].state == "detaching" && groups[0].deleted == ["hostdev0"])
        #expect(groups[0].holders == [.init(pid: 4242, comm: "qemu-system-x86")])
        #expect(groups[1].devices[0].name == "/machine/peripheral-anon/device[0]")
        #expect(groups[1].devices[0].cdev == "/dev/vfio/devices/vfio3")
    }

    @Test func tableHasOneAlignedRowPerGroup() throws {
        let table = StatusFormatter.table(GroupStatus.parse(try JSONValue(parsing: Array(Self.reply.utf8))))
        #expect(
            table == """
                GROUP  STATE      DEVICES                                            DELETED   MEMBERS                    HOLDERS
                7      detaching  hostdev1 (0000:01:00.1)                            hostdev0  0000:01:00.0 0000:01:00.1  4242 qemu-system-x86
                12     attached   /machine/peripheral-anon/device[0] (0000:03:00.0)  -         0000:03:00.0               -

                """)
    }

    @Test func emptyTableSaysSo() {
        #expect(StatusFormatter.table([]) == "no VFIO groups tracked\n")
    }

    @Test(arguments: [
        (
            #"{"event": "DEVICE_DELETED", "data": {"device": "hostdev0", "path": "/machine/peripheral/hostdev0"}, "timestamp": {"seconds": 1796173323, "microseconds": 456789}}"#,
            "2026-12-02 01:02:03.456  DEVICE_DELETED  device=hostdev0 path=/machine/peripheral/hostdev0"
        ),
        (
            #"{"event": "GROUP_RELEASED", "data": {"group": 7, "devices": ["hostdev0", "hostdev1"], "waited-ms": 3}, "timestamp": {"seconds": 1796173323, "microseconds": 5000}}"#,
            "2026-12-02 01:02:03.005  GROUP_RELEASED  group=7 devices=hostdev0,hostdev1 waited-ms=3"
        ),
        (
            #"{"event": "__com.example_GROUP_RELEASE_TIMEOUT", "data": {"group": 7, "devices": ["hostdev0"], "waited-ms": 30000, "holders": [{"pid": 4711, "comm": "nodedev-helper"}]}, "timestamp": {"seconds": 1796173323, "microseconds": 0}}"#,
            "2026-12-02 01:02:03.000  __com.example_GROUP_RELEASE_TIMEOUT  group=7 devices=hostdev0 waited-ms=30000 holders=4711(nodedev-helper)"
        ),
    ])
    func watchLineForEachFollowedEvent(event: String, line: String) throws {
        #expect(StatusFormatter.eventLine(try JSONValue(parsing: Array(event.utf8)), utc: true) == line)
    }

    @Test func otherEventsAreNotFollowed() throws {
        let event = try JSONValue(
            parsing: Array(#"{"event": "RESUME", "timestamp": {"seconds": 1, "microseconds": 0}}"#.utf8))
        #expect(StatusFormatter.eventLine(event) == nil)
    }
}
