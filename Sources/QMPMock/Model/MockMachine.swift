import QMPWire

/// The mock QEMU: QMP sessions, the device tree and VFIO group semantics, as a state machine.
///
/// Inputs are ``clientConnected(now:)``, ``receive(_:fds:from:now:)``, ``timerFired(_:now:)`` and
/// ``clientDisconnected(_:)``; each returns the ``MockAction``s the shell performs. The only side effects
/// inside are through ``MockHost`` (sysfs lookups, opening and closing VFIO nodes, device descriptors and
/// received descriptors), which is what lets `device_add` fail exactly when QEMU's would.
public struct MockMachine {
    struct Client {
        var negotiated = false
        var oob = false
        var queue: [(unit: MockInputUnit, fds: [Int32])] = []
        var busy = false
        var fdNames: [String: Int32] = [:]
    }

    enum DeviceState: Equatable {
        case attached
        /// `device_del` accepted; finalize is due.
        case unplugging
        /// Unparented (event sent in before-close order), finalize still due.
        case unparented
    }

    struct Device {
        var id: String?
        var path: String
        var driver: String
        var hotplugged: Bool
        /// The `host` property, canonical; nil when unset.
        var host: String?
        /// The `sysfsdev` property as realize leaves it: as given, or built from `host`.
        var sysfsdev: String?
        /// The last component of the device's sysfs path (QEMU's device name: a PCI address or mdev UUID).
        var name: String?
        /// The legacy group the device belongs to (nil with iommufd, which has no group descriptor).
        var group: Int?
        /// The per-device descriptor: QEMU's `anon_inode:[vfio-device]` (legacy) or the cdev (iommufd).
        var deviceFD: Int32?
        var state = DeviceState.attached
    }

    struct Group {
        var fd: Int32?
        var members: Set<String> = []
        /// Native group events: devices deleted since the last release, and when the last went.
        var deleted: [String] = []
        var lastDeleted: QMPTimestamp?
        var timeoutArmed = false
    }

    enum TimerTask {
        case finalize(path: String)
        case resume(client: Int)
        case event(MockScriptEvent)
        case stopHolder(group: Int)
        case groupReleaseTimeout(group: Int)
    }

    public let configuration: MockConfiguration
    let host: any MockHost
    var script: (any MockScript)?
    var clients: [Int: Client] = [:]
    var nextClient = 1
    /// Devices by QOM path, in creation order (qom-list order).
    var devices: [(path: String, device: Device)] = []
    var groups: [Int: Group] = [:]
    /// `<dev>/vfio/vfio`, open while any legacy group is (QEMU keeps one container for the machine).
    var containerFD: Int32?
    var nextAnon = 1
    var fdsets: [Int: [(fd: Int32, opaque: String?)]] = [:]
    var timers: [Int: TimerTask] = [:]
    var nextTimer = 1
    var running = false
    /// Whether the guest ever ran: a stopped VM is then `paused`, not `prelaunch`.
    var started = false
    var timersOnNegotiation: Bool

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
            do {
                try deviceAdd(arguments: spec.arguments, hotplugged: false, client: nil, actions: &actions)
            } catch {
                var desc = "failed"
                if case .failure(let object) = error, let text = object["desc"]?.stringValue { desc = text }
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
        case .groupReleaseTimeout(let group):
            groupReleaseTimeoutFired(group, now: now, actions: &actions)
        }
        return actions
    }

    mutating func schedule(_ task: TimerTask, after nanoseconds: Int64, actions: inout [MockAction]) {
        let id = nextTimer
        nextTimer += 1
        timers[id] = task
        actions.append(.schedule(timer: id, afterNanoseconds: nanoseconds))
    }
}
