import QMPWire
import Testing

@testable import QMPMock

/// In-memory host: two-device group 7, one-device group 8 (with cdevs), records opens and closes.
final class FakeMockHost: MockHost {
    /// Nodes opened, in order (group and cdev nodes; not the container, not device descriptors).
    var opened: [(path: String, fd: Int32)] = []
    /// Per-device descriptors opened, by device name, in order.
    var deviceFDs: [(name: String, fd: Int32)] = []
    var closed: [Int32] = []
    var holders: Set<Int> = []
    var failOpen: Set<String> = []
    private var nextFD: Int32 = 100
    let topology: [String: MockHostLookup] = [
        "0000:01:00.0": .found(group: 7, cdevNode: "/dev/vfio/devices/vfio0"),
        "0000:01:00.1": .found(group: 7, cdevNode: "/dev/vfio/devices/vfio1"),
        "0000:02:00.0": .found(group: 8, cdevNode: "/dev/vfio/devices/vfio2"),
        "0000:03:00.0": .noGroup(errno: 2),
        "c0ffee00-0000-4000-8000-000000000001": .found(group: 9, cdevNode: nil),
    ]
    var lookedUp: [String] = []

    func lookup(devicePath: String) -> MockHostLookup {
        lookedUp.append(devicePath)
        return devicePath.split(separator: "/").last.flatMap { topology[String($0)] } ?? .noDevice(errno: 2)
    }

    /// The container node (`/dev/vfio/vfio`): opened and closed, tracked apart from group and cdev nodes.
    var container: (fd: Int32?, opens: Int) = (nil, 0)

    func open(_ path: String) -> Result<Int32, MockHostErrno> {
        if failOpen.contains(path) { return .failure(MockHostErrno(16)) }
        nextFD += 1
        if path.hasSuffix("/vfio/vfio") {
            container = (nextFD, container.opens + 1)
            return .success(nextFD)
        }
        opened.append((path, nextFD))
        return .success(nextFD)
    }

    func openDevice(named name: String) -> Result<Int32, MockHostErrno> {
        nextFD += 1
        deviceFDs.append((name, nextFD))
        return .success(nextFD)
    }

    func close(_ fd: Int32) {
        if fd == container.fd {
            container.fd = nil
            return
        }
        closed.append(fd)
    }
    func startHolder(group: Int, fd: Int32) { holders.insert(group) }
    func stopHolder(group: Int) { holders.remove(group) }

    /// Node descriptors opened and not closed.
    var openFDs: Set<Int32> { Set(opened.map(\.fd)).subtracting(closed) }
    /// Names of the devices whose descriptor is open.
    var openDevices: [String] { deviceFDs.filter { !closed.contains($0.fd) }.map(\.name) }
}

/// Drives a ``MockMachine`` with messages, as a client would.
struct Harness {
    var machine: MockMachine
    let host: FakeMockHost
    var client = 0
    var pendingTimers: [(timer: Int, after: Int64)] = []
    var lastActions: [MockAction] = []
    let now = QMPTimestamp(seconds: 1_700_000_000, microseconds: 42)

    init(_ configure: (inout MockConfiguration) throws -> Void = { _ in }, script: (any MockScript)? = nil) throws {
        var configuration = MockConfiguration()
        try configure(&configuration)
        host = FakeMockHost()
        machine = MockMachine(configuration: configuration, host: host, script: script)
        _ = try machine.start()
        client = machine.clientConnected(now: now).client
    }

    /// Sends a message and returns the text sent back to this client, in order.
    mutating func send(_ message: JSONValue, id: JSONValue? = nil, fds: [Int32] = []) -> [String] {
        collect(machine.receive(.message(message, id: id), fds: fds, from: client, now: now))
    }

    mutating func negotiate() {
        _ = send(.object([JSONMember("execute", .string("qmp_capabilities"))]))
    }

    mutating func execute(_ name: String, _ arguments: [JSONMember]? = nil, id: Int64? = nil, fds: [Int32] = [])
        -> [String]
    {
        var members: [JSONMember] = [JSONMember("execute", .string(name))]
        if let arguments { members.append(JSONMember("arguments", .object(arguments))) }
        return send(.object(members), id: id.map { .integer($0) }, fds: fds)
    }

    /// Fires the oldest scheduled timer.
    mutating func fireNext() -> [String] {
        guard !pendingTimers.isEmpty else { return [] }
        let next = pendingTimers.removeFirst()
        return collect(machine.timerFired(next.timer, now: now))
    }

    /// Executes a command, then lets due work run (finalize always goes through a timer, as QEMU's RCU).
    mutating func settle(_ name: String, _ arguments: [JSONMember]? = nil, id: Int64? = nil) -> [String] {
        let replies = execute(name, arguments, id: id)
        var later: [String] = []
        while let first = pendingTimers.first, first.after == 0 { later += fireNext() }
        return replies + later
    }

    /// Fires every scheduled timer (in scheduling order, including ones scheduled meanwhile).
    mutating func fireTimers() -> [String] {
        var lines: [String] = []
        while !pendingTimers.isEmpty {
            let next = pendingTimers.removeFirst()
            lines += collect(machine.timerFired(next.timer, now: now))
        }
        return lines
    }

    mutating func collect(_ actions: [MockAction]) -> [String] {
        lastActions = actions
        var lines: [String] = []
        for action in actions {
            switch action {
            case .send(let to, let bytes) where to == client:
                lines.append(String(decoding: bytes, as: UTF8.self))
            case .schedule(let timer, let after):
                pendingTimers.append((timer, after))
            default: break
            }
        }
        return lines
    }
}

@Suite("Mock QMP negotiation and dispatch")
struct MockNegotiationTests {
    @Test func greetingHasVersionAndOOB() throws {
        var configuration = MockConfiguration()
        configuration.version = MockQEMUVersion(major: 7, minor: 2, micro: 22, package: "Debian")
        var machine = MockMachine(configuration: configuration, host: FakeMockHost())
        let (client, actions) = machine.clientConnected(now: QMPTimestamp(seconds: 0, microseconds: 0))
        let expected =
            #"{"QMP": {"version": {"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": "Debian"}, "capabilities": ["oob"]}}"#
            + "\r\n"
        #expect(actions == [.send(client: client, bytes: Array(expected.utf8))])
    }

    @Test func commandsBeforeNegotiationAreRefused() throws {
        var h = try Harness()
        #expect(
            h.execute("query-status", id: 1) == [
                #"{"id": 1, "error": {"class": "CommandNotFound", "desc": "Expecting capabilities negotiation with 'qmp_capabilities'"}}"#
                    + "\r\n"
            ])
        #expect(
            h.execute("qmp_capabilities", [JSONMember("enable", .array([.string("foo")]))], id: 2) == [
                #"{"id": 2, "error": {"class": "GenericError", "desc": "Parameter 'null' does not accept value 'foo'"}}"#
                    + "\r\n"
            ])
        #expect(
            h.execute("qmp_capabilities", [JSONMember("enable", .array([.string("oob")]))], id: 3) == [
                #"{"return": {}, "id": 3}"# + "\r\n"
            ])
        #expect(
            h.execute("qmp_capabilities", id: 4) == [
                #"{"id": 4, "error": {"class": "CommandNotFound", "desc": "Capabilities negotiation is already complete, command ignored"}}"#
                    + "\r\n"
            ])
        #expect(
            h.send(.object([JSONMember("exec-oob", .string("query-status"))]), id: .string("o")) == [
                #"{"id": "o", "error": {"class": "GenericError", "desc": "The command query-status does not support OOB"}}"#
                    + "\r\n"
            ])
    }

    @Test func malformedInputGetsQEMUErrors() throws {
        var h = try Harness()
        #expect(
            h.send(.array([.integer(1)])) == [
                #"{"error": {"class": "GenericError", "desc": "QMP input must be a JSON object"}}"# + "\r\n"
            ])
        #expect(
            h.send(.object([])) == [
                #"{"error": {"class": "GenericError", "desc": "QMP input lacks member 'execute'"}}"# + "\r\n"
            ])
        #expect(
            h.send(.object([JSONMember("execute", .string("query-status")), JSONMember("foo", .integer(1))])) == [
                #"{"error": {"class": "GenericError", "desc": "QMP input member 'foo' is unexpected"}}"# + "\r\n"
            ])
        #expect(
            h.send(.object([JSONMember("exec-oob", .string("qmp_capabilities"))]), id: .integer(1)) == [
                #"{"id": 1, "error": {"class": "GenericError", "desc": "QMP input member 'exec-oob' is unexpected"}}"#
                    + "\r\n"
            ])
        let invalid = h.collect(
            h.machine.receive(.invalid(desc: "JSON parse error, stray '}'"), fds: [], from: h.client, now: h.now))
        #expect(invalid == [#"{"error": {"class": "GenericError", "desc": "JSON parse error, stray '}'"}}"# + "\r\n"])
    }

    @Test func capabilitiesArgumentsAreCheckedAsQEMUDoes() throws {
        // Each reply recorded from QEMU 7.2: elements are visited before leftover members.
        let cases: [([JSONMember], String)] = [
            ([JSONMember("enable", .array([.integer(1)]))], "Invalid parameter type for 'enable[0]', expected: string"),
            (
                [JSONMember("enable", .array([.string("foo")])), JSONMember("zz", .integer(1))],
                "Parameter 'null' does not accept value 'foo'"
            ),
            (
                [JSONMember("enable", .string("oob")), JSONMember("zz", .integer(1))],
                "Invalid parameter type for 'enable', expected: array"
            ),
            (
                [JSONMember("zz", .integer(1)), JSONMember("enable", .array([.integer(2)]))],
                "Invalid parameter type for 'enable[0]', expected: string"
            ),
        ]
        for (arguments, desc) in cases {
            var h = try Harness()
            #expect(
                h.execute("qmp_capabilities", arguments, id: 1) == [
                    #"{"id": 1, "error": {"class": "GenericError", "desc": "\#(desc)"}}"# + "\r\n"
                ])
        }
    }

    @Test func clashIsReportedBeforeLaterMembersAsQEMUDoes() throws {
        // Recorded from QEMU 7.2 with OOB enabled: QDict order is exec-oob, execute, zz; the clash
        // comes before the unexpected member.
        var h = try Harness()
        _ = h.send(
            .object([
                JSONMember("execute", .string("qmp_capabilities")),
                JSONMember("arguments", .object([JSONMember("enable", .array([.string("oob")]))])),
            ]))
        #expect(
            h.send(
                .object([
                    JSONMember("exec-oob", .string("query-status")), JSONMember("execute", .string("query-status")),
                    JSONMember("zz", .integer(1)),
                ]), id: .integer(5)) == [
                    #"{"id": 5, "error": {"class": "GenericError", "desc": "QMP input member 'execute' clashes with 'exec-oob'"}}"#
                        + "\r\n"
                ])
    }

    @Test func queriesAndUnknownCommands() throws {
        var h = try Harness()
        h.negotiate()
        #expect(
            h.execute("query-status", id: 1) == [
                #"{"return": {"status": "prelaunch", "singlestep": false, "running": false}, "id": 1}"# + "\r\n"
            ])
        #expect(
            h.execute("nosuch", id: 2) == [
                #"{"id": 2, "error": {"class": "CommandNotFound", "desc": "The command nosuch has not been found"}}"#
                    + "\r\n"
            ])
        #expect(
            h.execute("query-status", [JSONMember("x", .integer(1))], id: 3) == [
                #"{"id": 3, "error": {"class": "GenericError", "desc": "Parameter 'x' is unexpected"}}"# + "\r\n"
            ])
        #expect(
            h.execute("device_del", id: 4) == [
                #"{"id": 4, "error": {"class": "GenericError", "desc": "Parameter 'id' is missing"}}"# + "\r\n"
            ])
        let commands = h.execute("query-commands", id: 6).first ?? ""
        #expect(
            commands.hasPrefix(#"{"return": [{"name": "add-fd"}, "#) && commands.contains(#"{"name": "device_del"}"#))
        let cont = h.execute("cont", id: 5)
        #expect(cont.count == 2)
        #expect(cont.first?.contains(#""event": "RESUME""#) == true)
        #expect(cont.last == #"{"return": {}, "id": 5}"# + "\r\n")
    }

    @Test func eventsOnlyReachNegotiatedClients() throws {
        var h = try Harness()
        h.negotiate()
        let other = h.machine.clientConnected(now: h.now).client
        _ = h.execute("device_add", [JSONMember("driver", .string("usb-kbd")), JSONMember("id", .string("kb0"))])
        var actions = h.machine.receive(
            .message(
                .object([
                    JSONMember("execute", .string("device_del")),
                    JSONMember("arguments", .object([JSONMember("id", .string("kb0"))])),
                ]), id: nil
            ),
            fds: [], from: h.client, now: h.now)
        for case .schedule(let timer, _) in actions { actions += h.machine.timerFired(timer, now: h.now) }
        let recipients = actions.compactMap { action -> Int? in
            if case .send(let to, let bytes) = action, String(decoding: bytes, as: UTF8.self).contains("DEVICE_DELETED")
            {
                return to
            }
            return nil
        }
        #expect(recipients == [h.client])
        #expect(!recipients.contains(other))
    }
}

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

@Suite("Mock fd passing and faults")
struct MockFaultTests {
    @Test func getfdKeepsOneDescriptorAndClosefdClosesIt() throws {
        var h = try Harness()
        h.negotiate()
        #expect(
            h.execute("getfd", [JSONMember("fdname", .string("f"))], id: 1).first?.contains(
                "No file descriptor supplied via SCM_RIGHTS") == true)
        #expect(
            h.execute("getfd", [JSONMember("fdname", .string("f"))], id: 2, fds: [50, 51]) == [
                #"{"return": {}, "id": 2}"# + "\r\n"
            ])
        #expect(h.host.closed == [51])
        #expect(h.execute("getfd", [JSONMember("fdname", .string("f"))], fds: [52]) == [#"{"return": {}}"# + "\r\n"])
        #expect(h.host.closed == [51, 50])
        #expect(h.execute("closefd", [JSONMember("fdname", .string("f"))]) == [#"{"return": {}}"# + "\r\n"])
        #expect(h.host.closed == [51, 50, 52])
        #expect(
            h.execute("closefd", [JSONMember("fdname", .string("f"))]).first?.contains(
                "File descriptor named 'f' not found")
                == true)
        #expect(
            h.execute("add-fd", [JSONMember("fdset-id", .integer(1))], fds: [60]) == [
                #"{"return": {"fd": 60, "fdset-id": 1}}"# + "\r\n"
            ])
        #expect(h.execute("query-status", fds: [61]).count == 1)
        #expect(h.host.closed.last == 61)
    }

    @Test func slowRepliesKeepOrder() throws {
        var h = try Harness { $0.faults.slowReplies = ["query-version": 0.25] }
        h.negotiate()
        #expect(h.execute("query-version", id: 1).isEmpty)
        #expect(h.execute("query-status", id: 2).isEmpty)
        #expect(h.pendingTimers.map(\.after) == [250_000_000])
        let out = h.fireTimers()
        #expect(out.count == 2)
        #expect(out.first?.hasSuffix("\"id\": 1}\r\n") == true)
        #expect(out.last?.hasSuffix("\"id\": 2}\r\n") == true)
    }

    @Test func dropMidReplyAndExit() throws {
        var h = try Harness {
            $0.faults.dropMidReply = ["query-status"]
            $0.faults.exitOnCommand = ["quit"]
        }
        h.negotiate()
        let out = h.execute("query-status", id: 1)
        #expect(out.count == 1)
        #expect(out.first?.hasSuffix("\r\n") == false)
        #expect(h.lastActions.last == .disconnect(client: h.client))
        _ = h.execute("quit")
        #expect(h.lastActions.last == .exit(status: 3))
    }
}
