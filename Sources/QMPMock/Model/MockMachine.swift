import Glibc
import QMPWire

/// One unit of client input, as the framer and parser delivered it.
public enum MockInputUnit: Sendable, Equatable {
    /// Input QEMU's JSON parser rejects; `desc` is QEMU's text. Answered with an id-less GenericError.
    case invalid(desc: String)
    /// A complete JSON value; `id` is the value QEMU would echo (usually `.raw` bytes from the wire layer).
    case message(JSONValue, id: JSONValue?)
}

/// What the I/O shell must do after feeding the model an input; performed in order.
public enum MockAction: Sendable, Equatable {
    /// Write `bytes` (whole QMP lines) to the client.
    case send(client: Int, bytes: [UInt8])
    /// Call ``MockMachine/timerFired(_:now:)`` with `timer` after the delay.
    case schedule(timer: Int, afterNanoseconds: Int64)
    /// Close the client's connection (after the preceding sends).
    case disconnect(client: Int)
    /// Exit the whole process at once with `status` (fault injection: QEMU dying mid-command).
    case exit(status: Int32)
    /// Something a person watching the mock wants in the log (group fd opened/closed, fault fired).
    case note(String)
}

/// A reply the model or a script produced: a `return` value or an `error` object.
public enum MockReply: Sendable, Equatable {
    case success(JSONValue)
    case failure(JSONValue)

    static func error(_ errorClass: String, _ desc: String) -> MockReply {
        .failure(.object([JSONMember("class", .string(errorClass)), JSONMember("desc", .string(desc))]))
    }
}

/// An event a script asks for, `delay` nanoseconds after its reply (or after negotiation).
public struct MockScriptEvent: Sendable, Equatable {
    public var delayNanoseconds: Int64
    public var name: String
    public var data: JSONValue?

    public init(delayNanoseconds: Int64, name: String, data: JSONValue?) {
        self.delayNanoseconds = delayNanoseconds
        self.name = name
        self.data = data
    }
}

/// A scripted answer to one command.
public struct MockScriptDecision: Sendable, Equatable {
    public var reply: MockReply
    public var events: [MockScriptEvent]

    public init(reply: MockReply, events: [MockScriptEvent] = []) {
        self.reply = reply
        self.events = events
    }
}

/// Scripted behaviour consulted before the built-in model: scenarios and replays.
public protocol MockScript: Sendable {
    /// Decides the reply to a negotiated command, or nil to let the built-in model answer it.
    ///
    /// - Parameter fdCount: how many descriptors arrived (SCM_RIGHTS) with the command's bytes.
    mutating func decide(command: String, arguments: JSONValue?, fdCount: Int) -> MockScriptDecision?
    /// Events to send once a client has negotiated (their delays count from then).
    mutating func eventsAfterNegotiation() -> [MockScriptEvent]
    /// What is left unplayed, for the final report (empty when the script ran completely).
    var unmetExpectations: [String] { get }
    /// Events to send after the model answered a command the script only expected (no canned reply).
    mutating func takePendingEvents() -> [MockScriptEvent]
}

extension MockScript {
    public mutating func takePendingEvents() -> [MockScriptEvent] { [] }
}

/// The mock QEMU: QMP sessions, the device tree and VFIO group semantics, as a state machine.
///
/// Inputs are ``clientConnected(now:)``, ``receive(_:fds:from:now:)``, ``timerFired(_:now:)`` and
/// ``clientDisconnected(_:)``; each returns the ``MockAction``s the shell performs. The only side effects
/// inside are through ``MockHost`` (open/close of VFIO nodes and received descriptors), which is what
/// lets `device_add` fail exactly when QEMU's would.
public struct MockMachine {
    private struct Client {
        var negotiated = false
        var oob = false
        var queue: [(unit: MockInputUnit, fds: [Int32])] = []
        var busy = false
        var fdNames: [String: Int32] = [:]
    }

    private enum DeviceState: Equatable {
        case attached
        /// `device_del` accepted; finalize is due.
        case unplugging
        /// Unparented (event sent in before-close order), finalize still due.
        case unparented
    }

    private struct Device {
        var id: String?
        var path: String
        var driver: String
        var hotplugged: Bool
        var bdf: String?
        var sysfsdev: String?
        /// The last component of `sysfsdev` when it is no PCI address (an mdev UUID).
        var sysfsName: String?
        var group: Int?
        var cdevFD: Int32?
        var state = DeviceState.attached
    }

    private struct Group {
        var fd: Int32?
        var members: Set<String> = []
    }

    private enum TimerTask {
        case finalize(path: String)
        case resume(client: Int)
        case event(MockScriptEvent)
        case stopHolder(group: Int)
    }

    public let configuration: MockConfiguration
    private let host: any MockHost
    private var script: (any MockScript)?
    private var clients: [Int: Client] = [:]
    private var nextClient = 1
    /// Devices by QOM path, in creation order (qom-list order).
    private var devices: [(path: String, device: Device)] = []
    private var groups: [Int: Group] = [:]
    /// `<dev>/vfio/vfio`, open while any legacy group is (QEMU keeps one container for the machine).
    private var containerFD: Int32?
    private var nextAnon = 1
    private var fdsets: [Int: [(fd: Int32, opaque: String?)]] = [:]
    private var timers: [Int: TimerTask] = [:]
    private var nextTimer = 1
    private var running = false
    /// Whether the guest ever ran: a stopped VM is then `paused`, not `prelaunch`.
    private var started = false
    private var timersOnNegotiation: Bool

    public init(configuration: MockConfiguration, host: any MockHost, script: (any MockScript)? = nil) {
        self.configuration = configuration
        self.host = host
        self.script = script
        self.running = !configuration.startPaused
        self.started = self.running
        self.timersOnNegotiation = script != nil
    }

    /// Groups whose node the mock holds open now, with the descriptor (for tests and the log).
    public var openGroups: [Int: Int32] {
        groups.compactMapValues(\.fd)
    }

    /// The QOM paths of the devices present, in creation order.
    public var devicePaths: [String] { devices.map(\.path) }

    /// What the script has not played (see ``MockScript/unmetExpectations``).
    public var unmetExpectations: [String] { script?.unmetExpectations ?? [] }

    // MARK: - Inputs

    /// Realizes the cold-plugged devices (`--device`), as QEMU does before it opens the monitor.
    public mutating func start() throws(MockError) -> [MockAction] {
        var actions: [MockAction] = []
        for spec in configuration.devices {
            if let error = deviceAdd(arguments: spec.arguments, hotplugged: false, client: nil, actions: &actions) {
                let desc = error["desc"]?.stringValue ?? "failed"
                throw MockError.usage("--device \(spec.driver): \(desc)")
            }
        }
        return actions
    }

    /// A client connected: it gets the greeting.
    public mutating func clientConnected(now: QMPTimestamp) -> (client: Int, actions: [MockAction]) {
        let id = nextClient
        nextClient += 1
        clients[id] = Client()
        let greeting = JSONValue.object([
            JSONMember(
                "QMP",
                .object([
                    JSONMember("version", configuration.version.json),
                    JSONMember("capabilities", .array([.string("oob")])),
                ]))
        ])
        return (id, [.send(client: id, bytes: greeting.qemuLine)])
    }

    /// The client went away: its `getfd` descriptors are closed, queued commands dropped.
    public mutating func clientDisconnected(_ client: Int) {
        guard let state = clients.removeValue(forKey: client) else { return }
        for fd in state.fdNames.values { host.close(fd) }
        for queued in state.queue { queued.fds.forEach(host.close) }
    }

    /// One unit of input from `client` with the descriptors that arrived with its bytes (the model owns them).
    public mutating func receive(_ unit: MockInputUnit, fds: [Int32], from client: Int, now: QMPTimestamp)
        -> [MockAction]
    {
        guard clients[client] != nil else {
            fds.forEach(host.close)
            return []
        }
        clients[client]!.queue.append((unit, fds))
        var actions: [MockAction] = []
        drain(client, now: now, actions: &actions)
        return actions
    }

    /// A timer scheduled with ``MockAction/schedule(timer:afterNanoseconds:)`` expired.
    public mutating func timerFired(_ timer: Int, now: QMPTimestamp) -> [MockAction] {
        guard let task = timers.removeValue(forKey: timer) else { return [] }
        var actions: [MockAction] = []
        switch task {
        case .finalize(let path):
            finalize(path: path, now: now, actions: &actions)
        case .resume(let client):
            guard clients[client] != nil, !clients[client]!.queue.isEmpty else { break }
            let head = clients[client]!.queue.removeFirst()
            execute(head.unit, fds: head.fds, client: client, now: now, actions: &actions)
            clients[client]?.busy = false
            drain(client, now: now, actions: &actions)
        case .event(let event):
            broadcast(event: event.name, data: event.data, now: now, actions: &actions)
        case .stopHolder(let group):
            host.stopHolder(group: group)
            actions.append(.note("second holder of group \(group) exited"))
        }
        return actions
    }

    // MARK: - Dispatch

    private mutating func drain(_ client: Int, now: QMPTimestamp, actions: inout [MockAction]) {
        while let state = clients[client], !state.busy, let head = state.queue.first {
            if case .message(let message, _) = head.unit, let name = commandName(message),
                let delay = configuration.faults.delay(for: name)
            {
                clients[client]!.busy = true
                actions.append(.note("slow reply: \(name) answered after \(Double(delay) / 1e9) s"))
                schedule(.resume(client: client), after: delay, actions: &actions)
                return
            }
            clients[client]!.queue.removeFirst()
            execute(head.unit, fds: head.fds, client: client, now: now, actions: &actions)
        }
    }

    private func commandName(_ message: JSONValue) -> String? {
        (message["execute"] ?? message["exec-oob"])?.stringValue
    }

    private mutating func execute(
        _ unit: MockInputUnit,
        fds: [Int32],
        client: Int,
        now: QMPTimestamp,
        actions: inout [MockAction]
    ) {
        var fds = fds
        defer { fds.forEach(host.close) }
        switch unit {
        case .invalid(let desc):
            let reply = JSONValue.object([JSONMember("error", errorObject("GenericError", desc))])
            actions.append(.send(client: client, bytes: reply.qemuLine))
        case .message(let message, let id):
            guard case .object(let members) = message else {
                let reply = JSONValue.object([
                    JSONMember("error", errorObject("GenericError", "QMP input must be a JSON object"))
                ])
                actions.append(.send(client: client, bytes: reply.qemuLine))
                return
            }
            let name = commandName(message) ?? ""
            if configuration.faults.exitOnCommand.contains(name) {
                actions.append(.note("fault: exiting on \(name)"))
                actions.append(.exit(status: 3))
                return
            }
            let result = dispatch(members, client: client, fds: &fds, now: now, actions: &actions)
            var line: [JSONMember]
            switch result.reply {
            case .success(let value): line = [JSONMember("return", value)]
            case .failure(let error): line = [JSONMember("error", error)]
            }
            if let id { line.append(JSONMember("id", id)) }
            let bytes = JSONValue.object(line).qemuLine
            if configuration.faults.dropMidReply.contains(name) {
                actions.append(.note("fault: dropping the connection in the middle of the \(name) reply"))
                actions.append(.send(client: client, bytes: Array(bytes.prefix(bytes.count / 2))))
                actions.append(.disconnect(client: client))
                return
            }
            actions.append(.send(client: client, bytes: bytes))
            for event in result.events {
                if event.delayNanoseconds <= 0 {
                    broadcast(event: event.name, data: event.data, now: now, actions: &actions)
                } else {
                    schedule(.event(event), after: max(event.delayNanoseconds, 0), actions: &actions)
                }
            }
            result.after(&self, now, &actions)
        }
    }

    private struct Dispatched {
        var reply: MockReply
        var events: [MockScriptEvent] = []
        /// Work that QEMU does after the reply is on its way (unplug of usb devices, finalize with no delay).
        var after: (inout MockMachine, QMPTimestamp, inout [MockAction]) -> Void = { _, _, _ in }
    }

    private mutating func dispatch(
        _ members: [JSONMember],
        client: Int,
        fds: inout [Int32],
        now: QMPTimestamp,
        actions: inout [MockAction]
    ) -> Dispatched {
        let allowOOB = clients[client]!.oob
        // qmp_dispatch_check_obj: members in QDict order.
        if let desc = QMPDispatchCheck.firstError(members, allowOOB: allowOOB) {
            return Dispatched(reply: .error("GenericError", desc))
        }
        let message = JSONValue.object(members)
        let hasOOB = message["exec-oob"] != nil
        let name = commandName(message)!
        var arguments: [JSONMember] = []
        if case .object(let args)? = message["arguments"] { arguments = args }

        if !clients[client]!.negotiated {
            guard name == "qmp_capabilities" else {
                return Dispatched(
                    reply: .error("CommandNotFound", "Expecting capabilities negotiation with 'qmp_capabilities'"))
            }
            if hasOOB {
                return Dispatched(reply: .error("GenericError", "The command \(name) does not support OOB"))
            }
            return negotiate(arguments, client: client, actions: &actions)
        }
        // Scripts answer any in-band command, including ones the model does not know.
        var stepEvents: [MockScriptEvent] = []
        if !hasOOB, var current = script {
            let decision = current.decide(command: name, arguments: message["arguments"], fdCount: fds.count)
            stepEvents = current.takePendingEvents()
            script = current
            if let decision { return Dispatched(reply: decision.reply, events: decision.events) }
        }
        guard MockCommands.known.contains(name) else {
            return Dispatched(reply: .error("CommandNotFound", "The command \(name) has not been found"))
        }
        if hasOOB {
            return Dispatched(reply: .error("GenericError", "The command \(name) does not support OOB"))
        }
        var result = command(name, arguments, client: client, fds: &fds, now: now, actions: &actions)
        result.events += stepEvents
        return result
    }

    private mutating func negotiate(_ arguments: [JSONMember], client: Int, actions: inout [MockAction])
        -> Dispatched
    {
        // The mock's greeting always offers OOB.
        let oob: Bool
        switch QMPDispatchCheck.capabilities(arguments, offered: ["oob"]) {
        case .failure(let desc): return Dispatched(reply: .error("GenericError", desc))
        case .enabled(let enabled): oob = enabled.contains("oob")
        }
        clients[client]!.negotiated = true
        clients[client]!.oob = oob
        var events: [MockScriptEvent] = []
        if timersOnNegotiation, var current = script {
            timersOnNegotiation = false
            events = current.eventsAfterNegotiation()
            script = current
        }
        var result = Dispatched(reply: .success(.object([])))
        result.after = { machine, _, actions in
            for event in events {
                machine.schedule(.event(event), after: max(event.delayNanoseconds, 0), actions: &actions)
            }
        }
        return result
    }

    // MARK: - Commands

    private mutating func command(
        _ name: String,
        _ arguments: [JSONMember],
        client: Int,
        fds: inout [Int32],
        now: QMPTimestamp,
        actions: inout [MockAction]
    ) -> Dispatched {
        let schema = MockCommands.schema[name] ?? []
        var args: [String: JSONValue] = [:]
        if name != "device_add" {
            switch MockCommands.check(arguments, schema) {
            case .success(let checked): args = checked
            case .failure(let reply): return Dispatched(reply: reply)
            }
        }
        switch name {
        case "qmp_capabilities":
            return Dispatched(
                reply: .error("CommandNotFound", "Capabilities negotiation is already complete, command ignored"))
        case "query-status":
            return Dispatched(
                reply: .success(
                    .object([
                        // QAPI member order of StatusInfo.
                        JSONMember("running", .bool(running)), JSONMember("singlestep", .bool(false)),
                        JSONMember("status", .string(running ? "running" : started ? "paused" : "prelaunch")),
                    ])
                )
            )
        case "query-version":
            return Dispatched(reply: .success(configuration.version.json))
        case "query-commands":
            // The mock's own table (QEMU lists its ~200); clients such as qmp-shell use it for completion.
            let names = MockCommands.known.sorted().map { JSONValue.object([JSONMember("name", .string($0))]) }
            return Dispatched(reply: .success(.array(names)))
        case "stop":
            // QEMU sends STOP before the reply to stop.
            if running { broadcast(event: "STOP", data: nil, now: now, actions: &actions) }
            running = false
            return Dispatched(reply: .success(.object([])))
        case "cont":
            // QEMU sends RESUME before the reply to cont.
            if !running { broadcast(event: "RESUME", data: nil, now: now, actions: &actions) }
            running = true
            started = true
            return Dispatched(reply: .success(.object([])))
        case "quit":
            broadcast(
                event: "SHUTDOWN",
                data: .object([JSONMember("guest", .bool(false)), JSONMember("reason", .string("host-qmp-quit"))]),
                now: now,
                actions: &actions
            )
            var result = Dispatched(reply: .success(.object([])))
            result.after = { _, _, actions in actions.append(.exit(status: 0)) }
            return result
        case "qom-list":
            return Dispatched(reply: qomList(args["path"]!.stringValue!))
        case "qom-get":
            return Dispatched(reply: qomGet(args["path"]!.stringValue!, args["property"]!.stringValue!))
        case "device_add":
            if let error = deviceAdd(arguments: .object(arguments), hotplugged: true, client: client, actions: &actions)
            {
                return Dispatched(reply: .failure(error))
            }
            return Dispatched(reply: .success(.object([])))
        case "device_del":
            return deviceDel(args["id"]!.stringValue!, now: now, actions: &actions)
        case "getfd":
            guard !fds.isEmpty else {
                return Dispatched(reply: .error("GenericError", "No file descriptor supplied via SCM_RIGHTS"))
            }
            let fdname = args["fdname"]!.stringValue!
            if let first = fdname.first, first.isNumber {
                return Dispatched(
                    reply: .error("GenericError", "Parameter 'fdname' expects a name not starting with a digit"))
            }
            let fd = fds.removeFirst()
            if let old = clients[client]!.fdNames.updateValue(fd, forKey: fdname) { host.close(old) }
            return Dispatched(reply: .success(.object([])))
        case "closefd":
            let fdname = args["fdname"]!.stringValue!
            guard let fd = clients[client]!.fdNames.removeValue(forKey: fdname) else {
                return Dispatched(reply: .error("GenericError", "File descriptor named '\(fdname)' not found"))
            }
            host.close(fd)
            return Dispatched(reply: .success(.object([])))
        case "add-fd":
            guard !fds.isEmpty else {
                return Dispatched(reply: .error("GenericError", "No file descriptor supplied via SCM_RIGHTS"))
            }
            var setID: Int
            if case .integer(let requested)? = args["fdset-id"] {
                setID = Int(requested)
            } else {
                setID = 0
                while fdsets[setID] != nil { setID += 1 }
            }
            let fd = fds.removeFirst()
            fdsets[setID, default: []].append((fd, args["opaque"]?.stringValue))
            return Dispatched(
                reply: .success(
                    .object([JSONMember("fdset-id", .integer(Int64(setID))), JSONMember("fd", .integer(Int64(fd)))])))
        case "remove-fd":
            guard case .integer(let setID)? = args["fdset-id"], var set = fdsets[Int(setID)] else {
                let id = args["fdset-id"].map { String(decoding: $0.qemuBytes, as: UTF8.self) } ?? "?"
                return Dispatched(reply: .error("GenericError", "File descriptor named 'fdset-id:\(id)' not found"))
            }
            if case .integer(let fd)? = args["fd"] {
                guard let index = set.firstIndex(where: { Int64($0.fd) == fd }) else {
                    return Dispatched(
                        reply: .error("GenericError", "File descriptor named 'fdset-id:\(setID), fd:\(fd)' not found")
                    )
                }
                host.close(set.remove(at: index).fd)
            } else {
                set.forEach { host.close($0.fd) }
                set = []
            }
            fdsets[Int(setID)] = set.isEmpty ? nil : set
            return Dispatched(reply: .success(.object([])))
        default:
            return Dispatched(reply: .error("CommandNotFound", "The command \(name) has not been found"))
        }
    }

    // MARK: - Device tree

    private func deviceIndex(resolving path: String) -> Int? {
        if path.hasPrefix("/") { return devices.firstIndex { $0.path == path } }
        let matches = devices.indices.filter {
            devices[$0].path.hasSuffix("/" + path)
        }
        return matches.count == 1 ? matches[0] : nil
    }

    private func qomList(_ path: String) -> MockReply {
        func entry(_ name: String, _ type: String) -> JSONValue {
            .object([JSONMember("name", .string(name)), JSONMember("type", .string(type))])
        }
        let containers: [String: [JSONValue]] = [
            "/": [entry("type", "string"), entry("machine", "child<pc-i440fx-7.2-machine>")],
            "/machine": [
                entry("type", "string"), entry("peripheral", "child<container>"),
                entry("peripheral-anon", "child<container>"), entry("unattached", "child<container>"),
            ],
            "/machine/peripheral": [entry("type", "string")]
                + devices.filter { $0.device.id != nil }.map { entry($0.device.id!, "child<\($0.device.driver)>") },
            "/machine/peripheral-anon": [entry("type", "string"), entry("device[0]", "child<qemu-xhci>")]
                + devices.filter { $0.device.id == nil }.map {
                    entry(String($0.path.split(separator: "/").last!), "child<\($0.device.driver)>")
                },
        ]
        if let list = containers[path] { return .success(.array(list)) }
        guard let index = deviceIndex(resolving: path) else {
            return .error("DeviceNotFound", "Device '\(path)' not found")
        }
        var list = [
            entry("type", "string"), entry("parent_bus", "link<bus>"), entry("realized", "bool"),
            entry("hotplugged", "bool"), entry("hotpluggable", "bool"),
        ]
        if devices[index].device.driver == "vfio-pci" {
            list += [entry("host", "str"), entry("sysfsdev", "str"), entry("addr", "int32"), entry("rombar", "uint32")]
        } else {
            list += [entry("port", "str"), entry("serial", "str"), entry("attached", "bool")]
        }
        return .success(.array(list))
    }

    private func qomGet(_ path: String, _ property: String) -> MockReply {
        if ["/", "/machine", "/machine/peripheral", "/machine/peripheral-anon"].contains(path) {
            guard property == "type" else {
                return .error("GenericError", "Property 'container.\(property)' not found")
            }
            return .success(
                .string(path == "/" ? "container" : path == "/machine" ? "pc-i440fx-7.2-machine" : "container"))
        }
        guard let index = deviceIndex(resolving: path) else {
            return .error("DeviceNotFound", "Device '\(path)' not found")
        }
        let device = devices[index].device
        switch (property, device.driver) {
        case ("type", _): return .success(.string(device.driver))
        case ("realized", _), ("hotpluggable", _): return .success(.bool(true))
        case ("hotplugged", _): return .success(.bool(device.hotplugged))
        case ("host", "vfio-pci"): return .success(.string(device.bdf ?? "ffff:ff:ff.f"))
        case ("sysfsdev", "vfio-pci"): return .success(.string(device.sysfsdev ?? ""))
        case ("attached", "usb-kbd"): return .success(.bool(true))
        default: return .error("GenericError", "Property '\(device.driver).\(property)' not found")
        }
    }

    private static func isIdentifier(_ id: String) -> Bool {
        guard let first = id.unicodeScalars.first, first.properties.isAlphabetic, first.isASCII else { return false }
        return id.unicodeScalars.allSatisfy {
            $0.isASCII
                && ($0.properties.isAlphabetic || ("0"..."9").contains($0) || $0 == "-" || $0 == "." || $0 == "_")
        }
    }

    /// Canonical `dddd:bb:ss.f` from QEMU's accepted `[dddd:]bb:ss.f`, or nil.
    static func canonicalBDF(_ text: String) -> String? {
        let parts = text.split(separator: ":", omittingEmptySubsequences: false)
        guard parts.count == 2 || parts.count == 3 else { return nil }
        let domain = parts.count == 3 ? String(parts[0]) : "0000"
        let bus = String(parts[parts.count - 2])
        let slotFunction = parts[parts.count - 1].split(separator: ".", omittingEmptySubsequences: false)
        guard slotFunction.count == 2, let d = UInt32(domain, radix: 16), let b = UInt32(bus, radix: 16),
            let s = UInt32(slotFunction[0], radix: 16), let f = UInt32(slotFunction[1], radix: 10),
            d <= 0xFFFF, b <= 0xFF, s <= 0x1F, f <= 7
        else { return nil }
        func hex(_ v: UInt32, _ width: Int) -> String {
            let digits = String(v, radix: 16)
            return String(repeating: "0", count: max(0, width - digits.count)) + digits
        }
        return "\(hex(d, 4)):\(hex(b, 2)):\(hex(s, 2)).\(f)"
    }

    private mutating func deviceAdd(
        arguments: JSONValue,
        hotplugged: Bool,
        client: Int?,
        actions: inout [MockAction]
    ) -> JSONValue? {
        func fail(_ desc: String) -> JSONValue? { errorObject("GenericError", desc) }
        guard let driverValue = arguments["driver"] else { return fail("Parameter 'driver' is missing") }
        guard case .string(let driver) = driverValue else {
            return fail("Invalid parameter type for 'driver', expected: string")
        }
        guard MockCommands.drivers.contains(driver) else { return fail("'\(driver)' is not a valid device model name") }
        var id: String?
        // QEMU 7.2 reads the id with qdict_get_try_str: a non-string id makes an anonymous device.
        if case .string(let text)? = arguments["id"] {
            guard Self.isIdentifier(text) else { return fail("Parameter 'id' expects an identifier") }
            guard !devices.contains(where: { $0.device.id == text }) else {
                return fail("Duplicate device ID '\(text)'")
            }
            id = text
        }
        func stringProperty(_ name: String) -> String? {
            guard let value = arguments[name] else { return nil }
            if case .string(let s) = value { return s }
            return String(decoding: value.qemuBytes, as: UTF8.self)
        }
        let path = id.map { "/machine/peripheral/\($0)" } ?? "/machine/peripheral-anon/device[\(nextAnon)]"
        var device = Device(id: id, path: path, driver: driver, hotplugged: hotplugged)
        if driver == "vfio-pci" {
            let sysfsDevices = configuration.sysfsRoot + "/bus/pci/devices/"
            let devicePath: String
            if let host = stringProperty("host") {
                guard let bdf = Self.canonicalBDF(host) else {
                    return fail("Property 'vfio-pci.host' doesn't take value '\(host)'")
                }
                device.bdf = bdf
                device.sysfsdev = sysfsDevices + bdf
                devicePath = sysfsDevices + bdf
            } else if let sysfsdev = stringProperty("sysfsdev") {
                // QEMU keeps the path as given; a PCI device's address is read from its last component,
                // an mdev (UUID) has none. A path under /sys is looked up under the mock's sysfs root.
                device.sysfsdev = sysfsdev
                let last = sysfsdev.split(separator: "/").last.map(String.init) ?? sysfsdev
                device.bdf = Self.canonicalBDF(last)
                device.sysfsName = last
                devicePath =
                    sysfsdev.hasPrefix("/sys/") && configuration.sysfsRoot != "/sys"
                    ? configuration.sysfsRoot + sysfsdev.dropFirst(4) : sysfsdev
            } else {
                return fail(
                    "No provided host device - Use -device vfio-pci,host=DDDD:BB:DD.F or -device vfio-pci,sysfsdev=PATH_TO_DEVICE"
                )
            }
            let bdf = device.bdf ?? device.sysfsName ?? ""
            let name = device.sysfsdev!
            if devices.contains(where: {
                ($0.device.bdf ?? $0.device.sysfsName) == bdf && $0.device.driver == "vfio-pci"
            }) {
                return fail("vfio \(bdf): device is already attached")
            }
            let group: Int
            let cdev: String?
            switch host.lookup(devicePath: devicePath) {
            case .noDevice: return fail("vfio \(name): no such host device: No such file or directory")
            case .noGroup: return fail("vfio \(name): no iommu_group found: No such file or directory")
            case .found(let g, let c):
                group = g
                cdev = c
            }
            device.group = group
            if arguments["iommufd"] != nil {
                // iommufd backend: one descriptor per device on its cdev, possibly passed in with getfd.
                if let fdname = stringProperty("fd") {
                    guard let client, let fd = clients[client]?.fdNames.removeValue(forKey: fdname) else {
                        return fail("File descriptor named '\(fdname)' not found")
                    }
                    device.cdevFD = fd
                } else {
                    guard let cdev else {
                        return fail("vfio \(name): no vfio-dev cdev found: No such file or directory")
                    }
                    let cdevPath = configuration.devRoot + "/vfio/devices/" + cdev
                    switch host.open(cdevPath) {
                    case .success(let fd): device.cdevFD = fd
                    case .failure(let errno):
                        return fail(
                            "vfio \(name): failed to open \(cdevPath): \(String(cString: strerror(errno.value)))")
                    }
                }
                actions.append(.note("opened cdev of \(bdf) (group \(group)) fd \(device.cdevFD!)"))
                device.group = nil
            } else if groups[group]?.fd == nil {
                let groupPath = configuration.devRoot + "/vfio/\(group)"
                switch host.open(groupPath) {
                case .success(let fd):
                    groups[group, default: Group()].fd = fd
                    actions.append(.note("opened group \(group) (\(groupPath)) fd \(fd) for \(bdf)"))
                    if containerFD == nil,
                        case .success(let container) = host.open(configuration.devRoot + "/vfio/vfio")
                    {
                        // A dev root without the container node is fine: only group nodes matter here.
                        containerFD = container
                    }
                    if configuration.faults.secondHolder[group] != nil {
                        host.startHolder(group: group, fd: fd)
                        actions.append(.note("fault: a second process holds group \(group)"))
                    }
                case .failure(let errno):
                    return fail(
                        "vfio \(bdf): group \(group) is not viable: failed to open \(groupPath): \(String(cString: strerror(errno.value)))"
                    )
                }
            }
            if let group = device.group { groups[group, default: Group()].members.insert(path) }
        }
        if id == nil { nextAnon += 1 }
        devices.append((path, device))
        return nil
    }

    private mutating func deviceDel(_ idOrPath: String, now: QMPTimestamp, actions: inout [MockAction]) -> Dispatched {
        let index =
            idOrPath.hasPrefix("/")
            ? devices.firstIndex { $0.path == idOrPath }
            : devices.firstIndex { $0.device.id == idOrPath }
        guard let index, devices[index].device.state != .unparented else {
            return Dispatched(reply: .error("DeviceNotFound", "Device '\(idOrPath)' not found"))
        }
        let path = devices[index].path
        var result = Dispatched(reply: .success(.object([])))
        guard devices[index].device.state == .attached else { return result }
        devices[index].device.state = .unplugging
        let delay = Int64(configuration.finalizeDelay * 1e9)
        let eventOrder = configuration.eventOrder
        result.after = { machine, now, actions in
            if eventOrder == .beforeClose, let i = machine.devices.firstIndex(where: { $0.path == path }) {
                machine.devices[i].device.state = .unparented
                machine.sendDeviceDeleted(machine.devices[i].device, now: now, actions: &actions)
            }
            // Always through a timer, even with no delay: QEMU finalizes from an RCU callback, so a
            // command already read may be answered before the close and the event (as measured).
            machine.schedule(.finalize(path: path), after: delay, actions: &actions)
        }
        return result
    }

    private mutating func finalize(path: String, now: QMPTimestamp, actions: inout [MockAction]) {
        guard let index = devices.firstIndex(where: { $0.path == path }) else { return }
        let device = devices.remove(at: index).device
        if let fd = device.cdevFD {
            host.close(fd)
            actions.append(.note("closed cdev fd \(fd) of \(device.bdf ?? path)"))
        }
        if let group = device.group {
            groups[group]?.members.remove(path)
            if groups[group]?.members.isEmpty == true, let fd = groups[group]?.fd {
                if configuration.faults.leakGroups.contains(group) {
                    actions.append(.note("fault: group \(group) fd \(fd) leaked (never closed)"))
                } else {
                    host.close(fd)
                    groups[group]?.fd = nil
                    actions.append(.note("closed group \(group) fd \(fd)"))
                    if let container = containerFD, !groups.values.contains(where: { $0.fd != nil }) {
                        host.close(container)
                        containerFD = nil
                    }
                    if let lingering = configuration.faults.secondHolder[group], let seconds = lingering {
                        schedule(.stopHolder(group: group), after: Int64(seconds * 1e9), actions: &actions)
                    }
                }
            }
        }
        if device.state != .unparented {
            sendDeviceDeleted(device, now: now, actions: &actions)
        }
    }

    private mutating func sendDeviceDeleted(_ device: Device, now: QMPTimestamp, actions: inout [MockAction]) {
        var data: [JSONMember] = []
        if let id = device.id { data.append(JSONMember("device", .string(id))) }
        data.append(JSONMember("path", .string(device.path)))
        broadcast(event: "DEVICE_DELETED", data: .object(data), now: now, actions: &actions)
    }

    // MARK: - Helpers

    private func errorObject(_ errorClass: String, _ desc: String) -> JSONValue {
        .object([JSONMember("class", .string(errorClass)), JSONMember("desc", .string(desc))])
    }

    private mutating func schedule(_ task: TimerTask, after nanoseconds: Int64, actions: inout [MockAction]) {
        let id = nextTimer
        nextTimer += 1
        timers[id] = task
        actions.append(.schedule(timer: id, afterNanoseconds: nanoseconds))
    }

    /// Sends an event to every negotiated client (never to one still negotiating, as QEMU).
    private func broadcast(event name: String, data: JSONValue?, now: QMPTimestamp, actions: inout [MockAction]) {
        let line = QMPBuilder.event(name: name, data: data, at: now)
        for id in clients.keys.sorted() where clients[id]!.negotiated {
            actions.append(.send(client: id, bytes: line))
        }
    }
}
