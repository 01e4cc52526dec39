import Logging
import QMPRuntime
import QMPWire

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// The I/O driver of VFIO tracking: feeds the device registry and the group state machine from QMP
/// traffic, inotify close events, timers and QEMU's pidfd, and emits `GROUP_RELEASED` /
/// `GROUP_RELEASE_TIMEOUT` through the ``QMPUpstreamCommander``.
///
/// Detection follows DESIGN §5: an inotify close watch on each node of a tracked group (as QEMU sees
/// it, `/proc/<pid>/root/dev/vfio/N`) is the trigger; a `stat` of the fd numbers QEMU was seen using for
/// the group (learned at attach or discovery) is the hot-path truth; a full scan of QEMU's fds only when
/// that knowledge is missing; a scan of all processes only when no close was witnessed. Timers run only
/// while a group is detaching: nothing detaching, no wake-ups.
///
/// - Important: lives on the reactor's thread; call every method there. Never opens a group node.
public final class VFIOReleaseMonitor {
    /// Counters of the expensive operations, for tests and benchmarks.
    public struct Statistics: Sendable, Hashable {
        /// Full scans of QEMU's fd directory.
        public var qemuFullScans = 0
        /// `stat`s of known QEMU fd numbers.
        public var knownFDChecks = 0
        /// Scans of every process's fds.
        public var allProcessScans = 0
        /// Close events received on watched nodes.
        public var closeEvents = 0
        /// Backoff polls that fired.
        public var pollsFired = 0
        /// `CLOCK_MONOTONIC` ns when the last close event was handled.
        public var lastCloseEventAt: UInt64 = 0
        /// `CLOCK_MONOTONIC` ns when the last `GROUP_RELEASED` was handed to the commander.
        public var lastReleaseAt: UInt64 = 0

        public init() {}
    }

    /// The options.
    public let configuration: VFIOConfiguration
    /// The reactor it runs on.
    public let reactor: Reactor
    /// What it has done so far.
    public private(set) var statistics = Statistics()

    private weak var commander: (any QMPUpstreamCommander)?
    private let logger: Logger
    private let sysfs: VFIOSysfs
    private let scanner: HolderScanner
    private var registry = VFIODeviceRegistry()
    private var machine: VFIOGroupStateMachine
    private var qemuPID: pid_t?
    private var qemuGone = false
    private var exitWatcher: ProcessExitWatcher?
    private var inotify: InotifyWatcher?
    private var nodes: [Int: GroupNodes] = [:]
    private var groupOfWatchPath: [String: Int] = [:]
    private var pollTimers: [Int: Reactor.TimerID] = [:]
    private var timeoutTimers: [Int: Reactor.TimerID] = [:]
    private var heldEvents: [Int: [[UInt8]]] = [:]
    private var queue: [VFIOGroupStateMachine.Action] = []
    private var performing = false
    private var stopped = false
    private var warnedUnreadable = false
    private var pendingLearn: Set<Int> = []
    private var learnTimer: Reactor.TimerID?
    private var learnScan: (scan: FDScan, groups: [Int])?
    private var discovery: Discovery?

    /// Cold-plug discovery after one upstream negotiation: internal commands whose replies are
    /// outstanding, and the completion to call when none are.
    private final class Discovery {
        var outstanding = 0
        var completion: (() -> Void)?
        /// QOM paths whose `DEVICE_DELETED` came while discovery was running.
        var deleted: Set<String> = []
    }

    /// Whether cold-plug discovery is still waiting for replies.
    public var isDiscovering: Bool { discovery != nil }

    private struct Node {
        /// The node under `--dev-root`.
        var path: String
        /// What is watched: the node as QEMU sees it, else `path`.
        var watchPath: String
        var identity: NodeIdentity?
        var watched = false
    }

    private struct GroupNodes {
        var nodes: [Node] = []
        /// fd number → node QEMU holds; nil when unknown (full scan needed), empty when known free.
        var qemuFDs: [Int32: NodeIdentity]?
        var identities: Set<NodeIdentity> { Set(nodes.compactMap(\.identity)) }
    }

    /// - Parameters:
    ///   - configuration: roots, timeout, event prefix, hold mode.
    ///   - reactor: the reactor whose thread runs everything.
    ///   - commander: the proxy side; held weakly (it owns the monitor).
    ///   - logger: structured logs (`group`, `device`, `pid` metadata).
    public init(
        configuration: VFIOConfiguration, reactor: Reactor, commander: any QMPUpstreamCommander, logger: Logger
    ) {
        self.configuration = configuration
        self.reactor = reactor
        self.commander = commander
        self.logger = logger
        self.sysfs = VFIOSysfs(sysfsRoot: configuration.sysfsRoot, devRoot: configuration.devRoot)
        self.scanner = HolderScanner(procRoot: configuration.procRoot)
        self.machine = VFIOGroupStateMachine(configuration: configuration)
    }

    // MARK: Inputs from the proxy

    /// Upstream negotiation finished: remember QEMU's pid (nil when unknown, e.g. TCP without the pid
    /// option), watch for its exit, and discover cold-plugged VFIO devices with `qom-list`/`qom-get`.
    ///
    /// - Parameter discovered: called once every discovery reply is in (every cold-plugged VFIO device
    ///   is tracked), at once when there is nothing to discover; never when QEMU goes away first. The
    ///   sidecar holds client commands until then, so a client's `device_del` cannot overtake
    ///   discovery.
    public func upstreamReady(qemuPID: pid_t?, discovered: (() -> Void)? = nil) {
        self.qemuPID = qemuPID
        self.qemuGone = false
        exitWatcher?.cancel()
        exitWatcher = nil
        if let qemuPID {
            do {
                exitWatcher = try ProcessExitWatcher(pid: qemuPID, reactor: reactor) { [weak self] in
                    self?.qemuExited()
                }
            } catch {
                logger.warning(
                    "cannot watch QEMU's exit; relying on upstream close",
                    metadata: ["pid": "\(qemuPID)", "error": "\(error)"])
            }
        }
        let batch = Discovery()
        batch.completion = discovered
        discovery = batch
        if configuration.discoverColdPlugged {
            discover(under: "/machine/peripheral", batch: batch)
            discover(under: "/machine/peripheral-anon", batch: batch)
        }
        if batch.outstanding == 0 { finishDiscovery(batch) }
    }

    private func finishDiscovery(_ batch: Discovery) {
        guard discovery === batch else { return }
        discovery = nil
        if !batch.deleted.isEmpty {
            logger.debug(
                "cold-plug discovery done; devices deleted meanwhile were not tracked",
                metadata: ["devices": "\(batch.deleted.sorted())"])
        }
        let completion = batch.completion
        batch.completion = nil
        completion?()
    }

    /// A client's `device_add` succeeded (the proxy calls this only on a success reply).
    public func deviceAddSucceeded(arguments: JSONValue) {
        guard let driver = arguments["driver"]?.stringValue else { return }
        let description = VFIODeviceDescription(
            driver: driver, id: arguments["id"]?.stringValue, host: arguments["host"]?.stringValue,
            sysfsdev: arguments["sysfsdev"]?.stringValue)
        guard description.isVFIO else { return }
        if let path = description.qomPath {
            track(description, at: path)
        } else {
            // No id: QEMU named it /machine/peripheral-anon/device[N]; find which.
            discover(under: "/machine/peripheral-anon")
        }
    }

    /// A `DEVICE_DELETED` event from QEMU. Returns ``EventDisposition/hold`` in hold mode for tracked
    /// devices (the monitor broadcasts the bytes itself right before `GROUP_RELEASED`).
    public func deviceDeleted(_ event: QMPMessage) -> EventDisposition {
        let data = event.jsonValue(.data)
        guard
            let path = VFIODeviceRegistry.deletedPath(
                path: data?["path"]?.stringValue, device: data?["device"]?.stringValue)
        else { return .forward }
        guard let device = registry.untrack(qomPath: path) else {
            if let discovery {
                // Discovery may still be asking about this device; it must not track it afterwards.
                discovery.deleted.insert(path)
                logger.info(
                    "DEVICE_DELETED during cold-plug discovery for a device not (yet) tracked; it will not be tracked",
                    metadata: ["device": "\(path)"])
            }
            return .forward
        }
        let now = Self.monotonicNow()
        logger.debug(
            "VFIO device deleted", metadata: ["device": "\(device.displayName)", "group": "\(device.group)"])
        if registry.devices(inGroup: device.group).isEmpty {
            logger.info(
                "IOMMU group detaching: its last guest device was deleted",
                metadata: ["group": "\(device.group)", "device": "\(device.displayName)"])
        }
        var disposition = EventDisposition.forward
        if configuration.holdDeviceDeleted {
            var line = event.bytes
            while let last = line.last, last == 0x0A || last == 0x0D || last == 0x20 { line.removeLast() }
            heldEvents[device.group, default: []].append(line + [0x0D, 0x0A])
            disposition = .hold
        }
        // Fed to the machine after the proxy has forwarded this event: a release must not overtake it.
        reactor.schedule(after: .zero) { [weak self] in
            guard let self else { return }
            self.run(
                self.machine.deviceDeleted(path, displayName: device.displayName, group: device.group, now: now))
        }
        return disposition
    }

    /// Byte-level form of ``deviceAddSucceeded(arguments:)``: the text of the `arguments` object.
    public func deviceAddSucceeded(argumentsText: [UInt8]) {
        guard let arguments = try? JSONValue(parsing: argumentsText) else { return }
        deviceAddSucceeded(arguments: arguments)
    }

    /// Byte-level form of ``deviceDeleted(_:)``: one event line (a trailing CRLF is ignored).
    /// Returns true when the event is held (hold mode).
    public func deviceDeleted(line: [UInt8]) -> Bool {
        var bytes = line
        while let last = bytes.last, last == 0x0A || last == 0x0D { bytes.removeLast() }
        guard case .success(let message) = QMPMessage.parse(bytes) else { return false }
        return deviceDeleted(message) == .hold
    }

    /// The commands ``localCommand(_:arguments:)`` answers (the proxy checks these before forwarding).
    public var localCommandNames: Set<String> { [configuration.queryCommandName] }

    /// Answers the sidecar's own query command; nil for any other command (the proxy forwards it).
    public func localCommand(_ name: String, arguments: JSONValue?) -> LocalReply? {
        guard name == configuration.queryCommandName else { return nil }
        return .success(queryResult())
    }

    /// QEMU's monitor connection went away. With a pid, its exit is awaited through the pidfd; without
    /// one, QEMU is taken as gone now.
    public func upstreamClosed() {
        discovery = nil
        if exitWatcher == nil || exitWatcher?.hasExited == true {
            qemuExited()
        }
    }

    /// Stops everything: timers, watches, the pidfd. Held events are flushed to the clients.
    public func stop() {
        guard !stopped else { return }
        stopped = true
        for timer in pollTimers.values { reactor.cancel(timer) }
        for timer in timeoutTimers.values { reactor.cancel(timer) }
        pollTimers.removeAll()
        timeoutTimers.removeAll()
        if let learnTimer { reactor.cancel(learnTimer) }
        learnTimer = nil
        learnScan = nil
        exitWatcher?.cancel()
        exitWatcher = nil
        inotify?.close()
        inotify = nil
        for group in heldEvents.keys.sorted() { flushHeld(group) }
    }

    // MARK: Queries for tests and the query command

    /// The state machine's view of a group.
    public func view(ofGroup group: Int) -> VFIOGroupStateMachine.GroupView? { machine.view(of: group) }

    /// The tracked devices.
    public var trackedDevices: [TrackedVFIODevice] { registry.all }

    /// Every group the state machine knows, in group order.
    public var groupViews: [VFIOGroupStateMachine.GroupView] { machine.views }

    /// Number of timers this monitor has armed (zero when nothing is detaching).
    public var armedTimers: Int { pollTimers.count + timeoutTimers.count + (learnTimer == nil ? 0 : 1) }

    // MARK: Tracking

    private func track(_ description: VFIODeviceDescription, at qomPath: String) {
        let resolved: ResolvedVFIODevice
        do {
            resolved = try sysfs.resolve(host: description.host, sysfsdev: description.sysfsdev)
        } catch {
            logger.warning(
                "VFIO device not tracked: cannot resolve its IOMMU group",
                metadata: ["device": "\(description.id ?? qomPath)", "error": "\(error)"])
            return
        }
        let device = TrackedVFIODevice(
            qomPath: qomPath, id: description.id, driver: description.driver, resolved: resolved)
        if let previous = registry.track(device), previous.group != device.group {
            logger.warning("QOM path reused for another group", metadata: ["device": "\(qomPath)"])
        }
        logger.info(
            "VFIO device tracked",
            metadata: ["device": "\(device.displayName)", "group": "\(resolved.group)", "sysfs": "\(resolved.name)"])
        run(machine.deviceAttached(qomPath, group: resolved.group))
    }

    private func discover(under parent: String, batch: Discovery? = nil) {
        guard let commander else { return }
        batch?.outstanding += 1
        commander.sendInternalCommand("qom-list", arguments: .object([JSONMember("path", .string(parent))])) {
            [weak self] reply in
            guard let self else { return }
            defer {
                if let batch {
                    batch.outstanding -= 1
                    if batch.outstanding == 0 { self.finishDiscovery(batch) }
                }
            }
            guard let entries = reply.jsonValue(.returnValue)?.arrayValue else {
                self.logger.debug("qom-list failed", metadata: ["path": "\(parent)"])
                return
            }
            for entry in entries {
                guard let name = entry["name"]?.stringValue, let type = entry["type"]?.stringValue,
                    type.hasPrefix("child<vfio-"), type.hasSuffix(">")
                else { continue }
                let driver = String(type.dropFirst("child<".count).dropLast())
                let path = parent + "/" + name
                guard self.registry.device(atPath: path) == nil else { continue }
                let id = parent == "/machine/peripheral" ? name : nil
                self.fetchProperties(of: path, driver: driver, id: id, batch: batch)
            }
        }
    }

    private func fetchProperties(of path: String, driver: String, id: String?, batch: Discovery?) {
        guard let commander else { return }
        batch?.outstanding += 1
        func get(_ property: String, _ done: @escaping (String?) -> Void) {
            commander.sendInternalCommand(
                "qom-get",
                arguments: .object([JSONMember("path", .string(path)), JSONMember("property", .string(property))])
            ) { reply in done(reply.jsonValue(.returnValue)?.stringValue) }
        }
        get("host") { [weak self] host in
            get("sysfsdev") { sysfsdev in
                guard let self else { return }
                defer {
                    if let batch {
                        batch.outstanding -= 1
                        if batch.outstanding == 0 { self.finishDiscovery(batch) }
                    }
                }
                guard self.registry.device(atPath: path) == nil else { return }
                if let batch, batch.deleted.contains(path) {
                    self.logger.info(
                        "cold-plugged VFIO device deleted before discovery finished: not tracked",
                        metadata: ["device": "\(path)"])
                    return
                }
                let description = VFIODeviceDescription(driver: driver, id: id, host: host, sysfsdev: sysfsdev)
                guard description.isVFIO else {
                    self.logger.debug(
                        "discovered device has no host/sysfsdev (gone?): not tracked", metadata: ["device": "\(path)"])
                    return
                }
                self.track(description, at: path)
            }
        }
    }

    // MARK: Actions

    private func run(_ actions: [VFIOGroupStateMachine.Action]) {
        guard !stopped else { return }
        queue += actions
        guard !performing else { return }
        performing = true
        defer { performing = false }
        while !queue.isEmpty {
            perform(queue.removeFirst())
        }
    }

    private func perform(_ action: VFIOGroupStateMachine.Action) {
        switch action {
        case .learnQEMUHolders(let group):
            refreshNodes(group)
            // Batched: devices attached in one loop round (cold-plug discovery of many groups) share
            // one full scan of QEMU's fd table.
            pendingLearn.insert(group)
            scheduleLearn()
        case .watchNodes(let group):
            refreshNodes(group)
            watch(group)
        case .unwatchNodes(let group):
            unwatch(group)
        case .checkQEMU(let group):
            queue += machine.qemuChecked(group: group, holds: qemuHolds(group), now: Self.monotonicNow())
        case .scanAllProcesses(let group):
            statistics.allProcessScans += 1
            let holders = scanner.allHolders(of: nodes[group]?.identities ?? [])
            if let pid = livePID, holders.contains(where: { $0.pid == pid }) {
                nodes[group]?.qemuFDs = nil  // stale: QEMU holds something we did not know
            }
            queue += machine.processesScanned(group: group, anyHolder: !holders.isEmpty, now: Self.monotonicNow())
        case .schedulePoll(let group, let delay):
            if let timer = pollTimers.removeValue(forKey: group) { reactor.cancel(timer) }
            pollTimers[group] = reactor.schedule(after: .nanoseconds(Int64(delay))) { [weak self] in
                guard let self else { return }
                self.pollTimers[group] = nil
                self.statistics.pollsFired += 1
                self.run(self.machine.pollFired(group: group, now: Self.monotonicNow()))
            }
        case .cancelPoll(let group):
            if let timer = pollTimers.removeValue(forKey: group) { reactor.cancel(timer) }
        case .scheduleTimeout(let group, let delay):
            if let timer = timeoutTimers.removeValue(forKey: group) { reactor.cancel(timer) }
            timeoutTimers[group] = reactor.schedule(after: .nanoseconds(Int64(min(delay, UInt64(Int64.max))))) {
                [weak self] in
                guard let self else { return }
                self.timeoutTimers[group] = nil
                self.run(self.machine.timeoutFired(group: group, now: Self.monotonicNow()))
            }
        case .cancelTimeout(let group):
            if let timer = timeoutTimers.removeValue(forKey: group) { reactor.cancel(timer) }
        case .emitReleased(let group, let devices, let waited):
            flushHeld(group)
            logger.info(
                "IOMMU group released",
                metadata: ["group": "\(group)", "devices": "\(devices)", "waited-ns": "\(waited)"])
            broadcast(
                configuration.releasedEventName,
                [
                    JSONMember("group", .integer(Int64(group))),
                    JSONMember("devices", .array(devices.map(JSONValue.string))),
                    JSONMember("waited-ms", .integer(Int64(waited / 1_000_000))),
                ])
            statistics.lastReleaseAt = Self.monotonicNow()
        case .emitTimeout(let group, let devices, let waited):
            statistics.allProcessScans += 1
            let holders = scanner.allHolders(of: nodes[group]?.identities ?? [])
            logger.warning(
                "IOMMU group not released in time",
                metadata: ["group": "\(group)", "holders": "\(holders.map { "\($0.pid)(\($0.comm))" })"])
            broadcast(
                configuration.timeoutEventName,
                [
                    JSONMember("group", .integer(Int64(group))),
                    JSONMember("devices", .array(devices.map(JSONValue.string))),
                    JSONMember("waited-ms", .integer(Int64(waited / 1_000_000))),
                    JSONMember("holders", .array(holders.map(Self.holderJSON))),
                ])
        case .forget(let group):
            flushHeld(group)
            nodes[group] = nil
            for device in registry.devices(inGroup: group) { _ = registry.untrack(qomPath: device.qomPath) }
        }
    }

    /// One full scan of QEMU's fds for every group waiting to learn, then the results to the machine.
    ///
    /// The scan runs in steps of ``learnStep`` fds, one step per loop round, so a QEMU holding 10k fds
    /// (30–45 ms of `stat`s) does not stall client traffic; groups attached meanwhile wait for the next
    /// scan.
    private func learnPending() {
        learnTimer = nil
        if learnScan == nil {
            let groups = pendingLearn.sorted()
            pendingLearn.removeAll()
            guard !groups.isEmpty else { return }
            let identities = groups.reduce(into: Set<NodeIdentity>()) { $0.formUnion(nodes[$1]?.identities ?? []) }
            guard let pid = livePID, !identities.isEmpty else {
                deliverLearned(groups, found: [:])
                return
            }
            statistics.qemuFullScans += 1
            guard let scan = scanner.startScan(of: pid, matching: identities) else {
                if scanner.processExists(pid) && !warnedUnreadable {
                    warnedUnreadable = true
                    logger.warning(
                        "cannot read QEMU's fd table: run qmp-sidecar as root or as QEMU's user",
                        metadata: ["path": "\(configuration.procRoot)/\(pid)/fd"])
                }
                deliverLearned(groups, found: [:])
                return
            }
            learnScan = (scan, groups)
        }
        guard let (scan, groups) = learnScan else { return }
        guard scan.step(maxEntries: Self.learnStep) else {
            scheduleLearn()
            return
        }
        learnScan = nil
        deliverLearned(groups, found: scan.found)
        if !pendingLearn.isEmpty { scheduleLearn() }
    }

    /// fds `stat`ed per loop round while learning (~4 ms).
    static let learnStep = 1024

    private func scheduleLearn() {
        guard learnTimer == nil, !stopped else { return }
        learnTimer = reactor.schedule(after: .zero) { [weak self] in self?.learnPending() }
    }

    private func deliverLearned(_ groups: [Int], found: [Int32: NodeIdentity]) {
        var actions: [VFIOGroupStateMachine.Action] = []
        for group in groups where nodes[group] != nil {
            let identities = nodes[group]?.identities ?? []
            let mine = found.filter { identities.contains($0.value) }
            nodes[group]?.qemuFDs = mine.isEmpty ? nil : mine
            actions += machine.holdersLearned(group: group, qemuHolds: !mine.isEmpty)
        }
        run(actions)
    }

    private var livePID: pid_t? { qemuGone ? nil : qemuPID }

    /// Hot path: `stat` the learned fd numbers; a full scan only when they are unknown.
    private func qemuHolds(_ group: Int) -> Bool {
        guard let pid = livePID, nodes[group] != nil else { return false }
        if let known = nodes[group]?.qemuFDs {
            statistics.knownFDChecks += known.count
            let (still, stale) = known.isEmpty ? ([:], false) : scanner.recheck(pid: pid, fds: known)
            if !still.isEmpty || !stale {
                nodes[group]?.qemuFDs = still
                return !still.isEmpty
            }
            // Every known fd is gone and one number was reused: QEMU may have reopened the node
            // elsewhere. Fall through to a full scan.
        }
        statistics.qemuFullScans += 1
        guard let found = scanner.fds(of: pid, matching: nodes[group]?.identities ?? []) else { return false }
        nodes[group]?.qemuFDs = found
        return !found.isEmpty
    }

    private func refreshNodes(_ group: Int) {
        var entry = nodes[group] ?? GroupNodes()
        var paths = [sysfs.groupNodePath(group)]
        for device in registry.devices(inGroup: group) {
            if let cdev = device.resolved.cdevNode, !paths.contains(cdev) { paths.append(cdev) }
        }
        for path in paths where !entry.nodes.contains(where: { $0.path == path }) {
            var watchPath = path
            if let pid = livePID {
                let seen = scanner.pathAsSeenBy(pid: pid, path)
                if NodeIdentity(path: seen) != nil { watchPath = seen }
            }
            entry.nodes.append(
                Node(
                    path: path, watchPath: watchPath,
                    identity: NodeIdentity(path: watchPath) ?? NodeIdentity(path: path)))
        }
        nodes[group] = entry
        if entry.nodes.contains(where: { $0.watched }) { watch(group) }
    }

    private func watch(_ group: Int) {
        guard var entry = nodes[group] else { return }
        if inotify == nil {
            do {
                inotify = try InotifyWatcher(reactor: reactor, logger: logger) { [weak self] path in
                    self?.closeEvent(on: path)
                }
                inotify?.onWatchLost = { [weak self] path in self?.groupOfWatchPath[path] = nil }
            } catch {
                logger.warning("no inotify: release relies on the backoff poll", metadata: ["error": "\(error)"])
                return
            }
        }
        for index in entry.nodes.indices where !entry.nodes[index].watched {
            let node = entry.nodes[index]
            do {
                try inotify?.watch(node.watchPath)
                groupOfWatchPath[node.watchPath] = group
                entry.nodes[index].watched = true
            } catch {
                // No event for this node: the backoff poll decides while the group is detaching.
                logger.debug("cannot watch node", metadata: ["node": "\(node.watchPath)", "error": "\(error)"])
            }
        }
        nodes[group] = entry
    }

    private func unwatch(_ group: Int) {
        for node in nodes[group]?.nodes ?? [] where node.watched {
            inotify?.unwatch(node.watchPath)
            groupOfWatchPath[node.watchPath] = nil
        }
        nodes[group] = nil
    }

    private func closeEvent(on path: String) {
        guard let group = groupOfWatchPath[path] else { return }
        statistics.closeEvents += 1
        statistics.lastCloseEventAt = Self.monotonicNow()
        run(machine.closeObserved(group: group, now: Self.monotonicNow()))
    }

    private func qemuExited() {
        guard !qemuGone else { return }
        qemuGone = true
        logger.info("QEMU exited", metadata: ["pid": "\(qemuPID.map(String.init) ?? "unknown")"])
        run(machine.qemuExited(now: Self.monotonicNow()))
    }

    private func flushHeld(_ group: Int) {
        guard let lines = heldEvents.removeValue(forKey: group) else { return }
        for line in lines { commander?.broadcastEvent(line) }
    }

    private func broadcast(_ name: String, _ members: [JSONMember]) {
        commander?.broadcastEvent(QMPBuilder.event(name: name, data: .object(members), at: .now()))
    }

    private static func holderJSON(_ holder: NodeHolder) -> JSONValue {
        .object([JSONMember("pid", .integer(Int64(holder.pid))), JSONMember("comm", .string(holder.comm))])
    }

    private func queryResult() -> JSONValue {
        .array(
            machine.views.map { view in
                let identities =
                    nodes[view.number]?.identities
                    ?? Set([NodeIdentity(path: sysfs.groupNodePath(view.number))].compactMap { $0 })
                let state = view.timedOut ? "timed-out" : view.phase.rawValue
                let devices = registry.devices(inGroup: view.number).map { device -> JSONValue in
                    var members = [
                        JSONMember("qom-path", .string(device.qomPath)),
                        JSONMember("driver", .string(device.driver)),
                        JSONMember("sysfs", .string(device.resolved.name)),
                    ]
                    if let id = device.id { members.insert(JSONMember("id", .string(id)), at: 0) }
                    if let cdev = device.resolved.cdevNode { members.append(JSONMember("cdev", .string(cdev))) }
                    return .object(members)
                }
                return .object([
                    JSONMember("group", .integer(Int64(view.number))),
                    JSONMember("state", .string(state)),
                    JSONMember("devices", .array(devices)),
                    JSONMember("deleted", .array(view.deletedDevices.map(JSONValue.string))),
                    JSONMember("members", .array(sysfs.members(ofGroup: view.number).map(JSONValue.string))),
                    JSONMember("holders", .array(scanner.allHolders(of: identities).map(Self.holderJSON))),
                ])
            })
    }

    /// `CLOCK_MONOTONIC` in nanoseconds.
    static func monotonicNow() -> UInt64 {
        var now = timespec()
        clock_gettime(CLOCK_MONOTONIC, &now)
        return UInt64(now.tv_sec) * 1_000_000_000 + UInt64(now.tv_nsec)
    }
}
