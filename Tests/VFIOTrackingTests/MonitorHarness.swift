import Logging
import QMPProxy
import QMPRuntime
import QMPSidecar
import QMPWire
import Testing
import VFIOFakeHost
import VFIOTracking

#if canImport(Glibc)
import Glibc
#endif

/// A fake proxy side: records broadcast lines, answers `qom-list`/`qom-get` from a table, asynchronously
/// (on the next reactor round) as QEMU would.
final class FakeCommander: QMPUpstreamCommander {
    let reactor: Reactor
    var lines: [[UInt8]] = []
    var commands: [(String, JSONValue?)] = []
    /// `qom-list` answers: parent path → [(name, type)].
    var children: [String: [(String, String)]] = [:]
    /// `qom-get` answers: QOM path → property → string value.
    var properties: [String: [String: String]] = [:]
    var onBroadcast: (() -> Void)?

    init(reactor: Reactor) { self.reactor = reactor }

    func sendInternalCommand(_ name: String, arguments: JSONValue?, reply: @escaping (QMPMessage) -> Void) {
        commands.append((name, arguments))
        let bytes: [UInt8]
        switch name {
        case "qom-list":
            let path = arguments?["path"]?.stringValue ?? ""
            if let entries = children[path] {
                bytes = QMPBuilder.reply(
                    returnValue: .array(
                        entries.map { .object([JSONMember("name", .string($0.0)), JSONMember("type", .string($0.1))]) }
                    ), id: nil)
            } else {
                bytes = QMPBuilder.error(class: "DeviceNotFound", desc: "Device '\(path)' not found", id: nil)
            }
        case "qom-get":
            let path = arguments?["path"]?.stringValue ?? ""
            let property = arguments?["property"]?.stringValue ?? ""
            if let value = properties[path]?[property] {
                bytes = QMPBuilder.reply(returnValue: .string(value), id: nil)
            } else {
                bytes = QMPBuilder.error(class: "GenericError", desc: "Property '\(property)' not found", id: nil)
            }
        default:
            bytes = QMPBuilder.error(class: "CommandNotFound", desc: "The command \(name) has not been found", id: nil)
        }
        let message = try! QMPMessage.parse(Array(bytes.dropLast(2))).get()
        reactor.schedule(after: .zero) { reply(message) }
    }

    func broadcastEvent(_ line: [UInt8]) {
        lines.append(line)
        onBroadcast?()
    }

    /// The client whose view is recorded (root by default, as the tests run).
    var viewer = HolderDisclosure(viewer: 0)

    func broadcastEvent(disclosing line: (HolderDisclosure) -> [UInt8]) {
        broadcastEvent(line(viewer))
    }

    /// Broadcast lines as parsed JSON.
    var events: [JSONValue] { lines.compactMap { try? JSONValue(parsing: $0.dropLast(2)) } }
    /// Names of the broadcast events, in order.
    var eventNames: [String] { events.compactMap { $0["event"]?.stringValue } }
}

/// One fake host, one stand-in QEMU, one reactor on the test's thread, one driver, fed through the
/// hook protocol as the sidecar feeds it.
final class MonitorHarness {
    let host: FakeHost
    let qemu: StandInProcess
    let reactor: Reactor
    let commander: FakeCommander
    let driver: VFIOReleaseDriver
    let configuration: VFIOConfiguration

    init(
        spec: String, releaseTimeout: Duration = .seconds(30), eventPrefix: String = "", hold: Bool = false,
        discover: Bool = false
    ) throws {
        host = try FakeHost(spec: spec)
        qemu = try StandInProcess()
        reactor = try Reactor()
        commander = FakeCommander(reactor: reactor)
        configuration = VFIOConfiguration(
            sysfsRoot: host.sysfsRoot, devRoot: host.devRoot, releaseTimeout: releaseTimeout,
            eventPrefix: eventPrefix, holdDeviceDeleted: hold, discoverColdPlugged: discover)
        var logger = Logger(label: "test.vfio")
        logger.logLevel = .critical
        driver = VFIOReleaseDriver(
            configuration: configuration, reactor: reactor, commander: commander, logger: logger)
    }

    deinit {
        driver.shutdown()
        qemu.terminate()
        host.removeTree()
    }

    /// The stand-in opens group `N`'s node, as QEMU does at the first `device_add` of the group.
    @discardableResult
    func openGroup(_ group: Int) throws -> Int32 { try qemu.open(host.groupNodePath(group)) }

    func ready() { driver.upstreamReady(qemuPID: qemu.pid) {} }

    static func arguments(_ id: String?, host address: String, driver: String = "vfio-pci") -> JSONValue {
        var members = [JSONMember("driver", .string(driver))]
        if let id { members.append(JSONMember("id", .string(id))) }
        members.append(JSONMember("host", .string(address)))
        return .object(members)
    }

    /// A `device_add` forwarded and answered, as the router reports it; then one loop round.
    func add(_ arguments: JSONValue, succeeded: Bool = true, settle: Bool = true) {
        driver.commandObserved("device_add", arguments: arguments.qemuBytes)
        driver.observedReply("device_add", arguments: arguments.qemuBytes, succeeded: succeeded)
        if settle { try? self.settle() }
    }

    /// A successful `device_add` of a device whose group the stand-in opened before (the open is not
    /// seen: the fallback learns QEMU's fds).
    func added(_ id: String, host address: String, driver: String = "vfio-pci") {
        add(Self.arguments(id, host: address, driver: driver))
    }

    /// The common start of the fallback path: `hostdev0` (01:00.0, group 7) found attached. The
    /// stand-in opens the group before the driver watches it, the upstream is ready, then the
    /// `device_add` succeeds.
    ///
    /// - Returns: the stand-in's fd of the group node.
    @discardableResult
    func foundAttached() throws -> Int32 {
        let fd = try openGroup(7)
        ready()
        added("hostdev0", host: "01:00.0")
        return fd
    }

    /// The hot path: the `device_add` is forwarded (the driver watches the nodes), QEMU opens `node`
    /// (the group node by default), then replies. Returns the fd QEMU holds.
    @discardableResult
    func plugged(_ id: String, host address: String, node: String? = nil) throws -> Int32 {
        let arguments = Self.arguments(id, host: address).qemuBytes
        driver.commandObserved("device_add", arguments: arguments)
        let group = try VFIOSysfs(sysfsRoot: host.sysfsRoot, devRoot: host.devRoot).resolve(
            host: address, sysfsdev: nil
        ).group
        let fd = try qemu.open(node ?? host.groupNodePath(group))
        driver.observedReply("device_add", arguments: arguments, succeeded: true)
        try settle()
        return fd
    }

    /// The bytes QEMU would send for `DEVICE_DELETED` of `id` (or of an anonymous QOM path).
    static func deletedEvent(id: String?, path: String) -> QMPMessage {
        var data: [JSONMember] = []
        if let id { data.append(JSONMember("device", .string(id))) }
        data.append(JSONMember("path", .string(path)))
        let line = QMPBuilder.event(
            name: "DEVICE_DELETED", data: .object(data), at: QMPTimestamp(seconds: 1_700_000_000, microseconds: 42))
        return try! QMPMessage.parse(Array(line.dropLast(2))).get()
    }

    /// `DEVICE_DELETED` as the router hands it over; true when held.
    @discardableResult
    func deleted(_ id: String) -> Bool {
        deleted(Self.deletedEvent(id: id, path: "/machine/peripheral/\(id)"))
    }

    /// As the sidecar does: the event, then (once it is queued to the clients) what must follow it.
    @discardableResult
    func deleted(_ event: QMPMessage) -> Bool {
        let held = driver.event("DEVICE_DELETED", event)
        driver.eventDelivered("DEVICE_DELETED")
        return held
    }

    /// The query command's answer, parsed.
    /// The query command's answer as a client of `viewer` (root by default, as the tests run) sees it.
    func query(viewer: HolderDisclosure = HolderDisclosure(viewer: 0)) throws -> JSONValue {
        guard
            case .success(let bytes)? = driver.localCommand(
                configuration.queryCommandName, arguments: nil, disclosure: viewer)
        else {
            throw QueryFailed()
        }
        return try JSONValue(parsing: bytes)
    }

    struct QueryFailed: Error {}

    /// Runs the reactor until `condition` holds (checked after each broadcast and every 5 ms) or
    /// `timeout` passes. Returns whether it held.
    @discardableResult
    func run(until condition: @escaping () -> Bool, timeout: Duration = .seconds(10)) throws -> Bool {
        if condition() { return true }
        var met = false
        let reactor = self.reactor
        commander.onBroadcast = {
            if condition() {
                met = true
                reactor.stop()
            }
        }
        var tickTimer: Reactor.TimerID?
        func tick() {
            tickTimer = reactor.schedule(after: .milliseconds(5)) {
                if condition() {
                    met = true
                    reactor.stop()
                } else {
                    tick()
                }
            }
        }
        tick()
        let guardTimer = reactor.schedule(after: timeout) { reactor.stop() }
        try reactor.run()
        reactor.cancel(guardTimer)
        if let tickTimer { reactor.cancel(tickTimer) }
        commander.onBroadcast = nil
        return met || condition()
    }

    /// Runs the reactor until what is already due has run (e.g. the batched learning of QEMU's fds).
    func settle() throws {
        let reactor = self.reactor
        reactor.schedule(after: .zero) { reactor.stop() }
        try reactor.run()
    }

    /// Runs the reactor for `duration` (for "nothing happens" checks, bounded).
    func run(for duration: Duration) throws {
        let reactor = self.reactor
        let timer = reactor.schedule(after: duration) { reactor.stop() }
        try reactor.run()
        reactor.cancel(timer)
    }

    /// Waits for an event named `name` and returns its `data`.
    func waitForEvent(_ name: String, timeout: Duration = .seconds(10)) throws -> JSONValue? {
        let commander = self.commander
        guard try run(until: { commander.eventNames.contains(name) }, timeout: timeout) else { return nil }
        return commander.events.first { $0["event"]?.stringValue == name }?["data"]
    }
}

extension JSONValue {
    /// The array's strings.
    var strings: [String] { arrayValue?.compactMap(\.stringValue) ?? [] }
}
