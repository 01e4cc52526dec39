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
