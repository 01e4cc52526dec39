import Logging
import QMPProxy
import QMPRuntime
import QMPWire
import VFIOTracking

#if canImport(Glibc)
import Glibc
#endif

/// The I/O driver of VFIO tracking: feeds VFIOTracking's registry and group state machine from the
/// QMP traffic the router already parsed, from inotify, timers and QEMU's pidfd, and emits
/// `GROUP_RELEASED` / `GROUP_RELEASE_TIMEOUT` through the ``QMPUpstreamCommander``.
///
/// The release truth costs nothing per fd (docs/GROUP-EVENTS.md): before a `device_add` of a VFIO
/// device is forwarded, its nodes get an `IN_OPEN | IN_CLOSE_*` watch, as QEMU sees them; from then on
/// the open file descriptions of each node are counted (``OpenDescriptionCount``), and a count of zero
/// after the group's last `DEVICE_DELETED` is the release — whatever the event order, however many fds
/// QEMU holds. Scans of `/proc` are only the fallback where counts are unknown (cold-plug discovery, a
/// restart with devices attached, an inotify queue overflow, a node that cannot be watched), run in
/// bounded steps, and counted in ``statistics``. Timers run only while a group is detaching and its
/// counts are unknown: nothing detaching, no wake-ups.
///
/// - Important: lives on the reactor's thread; call every method there. Never opens a group node.
public final class VFIOReleaseDriver: SidecarVFIOHooks {
    /// The options.
    public let configuration: VFIOConfiguration
    /// The reactor it runs on.
    public let reactor: Reactor
    /// What it has done so far (for metrics, tests and benchmarks).
    public internal(set) var statistics = VFIOReleaseStatistics()

    weak var commander: (any QMPUpstreamCommander)?
    let logger: Logger
    let sysfs: VFIOSysfs
    let scanner: HolderScanner
    let watches: GroupNodeWatches
    var registry = VFIODeviceRegistry()
    var machine: VFIOGroupStateMachine
    var qemuPID: pid_t?
    var qemuGone = false
    var exitWatcher: ProcessExitWatcher?
    var pollTimers: [Int: Reactor.TimerID] = [:]
    var timeoutTimers: [Int: Reactor.TimerID] = [:]
    var heldEvents: [Int: [[UInt8]]] = [:]
    var queue: [VFIOGroupStateMachine.Action] = []
    var performing = false
    /// Groups whose watches go once the current round's output is written (``scheduleDeferredUnwatch()``).
    var deferredUnwatch: [Int] = []
    var unwatchScheduled = false
    var stopped = false
    var warnedUnreadable = false
    var pendingLearn: Set<Int> = []
    var learnTimer: Reactor.TimerID?
    var learnScan: (scan: FDScan, groups: [Int])?
    /// Groups whose `checkQEMU` waits for the running or next learning scan.
    var checkAfterLearning: Set<Int> = []
    var discovery: ColdPlugDiscovery?
    /// What waits for the current event to be queued to the clients (``eventDelivered(_:)``).
    var afterEvent: [() -> Void] = []
    /// `device_add`s forwarded and not answered yet, in order: their arguments' text and what they name.
    var pendingAdds: [(arguments: [UInt8], device: PendingDevice?)] = []
    /// `CLOCK_MONOTONIC` ns of each group's last close event (for the release latency).
    var lastCloseAt: [Int: UInt64] = [:]
    /// While a `GROUP_RELEASED` is being broadcast: its latency since the group's last close, if seen.
    var releasing: (group: Int, latency: UInt64?)?

    /// A forwarded `device_add` of a VFIO device, resolved through sysfs.
    struct PendingDevice {
        var description: VFIODeviceDescription
        var resolved: ResolvedVFIODevice
        var paths: [String]
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
        self.watches = GroupNodeWatches(reactor: reactor, scanner: scanner, sysfs: sysfs, logger: logger)
        watches.onOpen = { [weak self] _ in self?.statistics.openEvents += 1 }
        watches.onClose = { [weak self] group, lastClose in self?.closeEvent(group, lastClose: lastClose) }
        watches.onOverflow = { [weak self] in self?.overflowed() }
    }

    // MARK: SidecarVFIOHooks

    public var localCommandNames: Set<String> { [configuration.queryCommandName] }

    public var observedCommands: Set<String> { ["device_add"] }

    public func upstreamReady(qemuPID: pid_t?, discovered: @escaping () -> Void) {
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
        startDiscovery(completion: discovered)
    }

    /// A client's `device_add` is about to reach QEMU: watch the nodes it will open, now, so their
    /// open is counted.
    public func commandObserved(_ name: String, arguments: [UInt8]) {
        guard name == "device_add" else { return }
        let device = pendingDevice(arguments)
        if let device {
            watches.add(group: device.resolved.group, paths: device.paths, qemuPID: livePID, beforeUse: true)
        }
        pendingAdds.append((arguments, device))
    }

    public func observedReply(_ name: String, arguments: [UInt8], succeeded: Bool) {
        guard name == "device_add", let index = pendingAdds.firstIndex(where: { $0.arguments == arguments })
        else { return }
        let device = pendingAdds.remove(at: index).device
        if succeeded {
            // The open happened before QEMU replied: take its event before judging the counts.
            watches.drain()
            if let device {
                watches.commandSucceeded(group: device.resolved.group, paths: device.paths)
                track(device.description, resolved: device.resolved)
            } else if let description = VFIODeviceDescription(arguments: arguments), description.isVFIO {
                logDeviceNotResolved(description)
            }
        } else if let group = device?.resolved.group {
            dropUnusedWatches(group)
        }
    }

    public func event(_ name: String, _ message: QMPMessage) -> Bool {
        guard name == "DEVICE_DELETED" else { return false }
        let data = message.jsonValue(.data)
        guard
            let path = VFIODeviceRegistry.deletedPath(
                path: data?["path"]?.stringValue, device: data?["device"]?.stringValue)
        else { return false }
        guard let device = registry.untrack(qomPath: path) else {
            discovery?.deletedWhileRunning(path, logger: logger)
            return false
        }
        // A close that came first is already queued: take it, so the release follows this event at once.
        watches.drain()
        if registry.devices(inGroup: device.group).isEmpty {
            logger.info(
                "IOMMU group detaching: its last guest device was deleted",
                metadata: ["group": "\(device.group)", "device": "\(device.displayName)"])
        }
        let now = Self.monotonicNow()
        logger.debug(
            "VFIO device deleted", metadata: ["device": "\(device.displayName)", "group": "\(device.group)"])
        var held = false
        if configuration.holdDeviceDeleted {
            heldEvents[device.group, default: []].append(message.bytes + [0x0D, 0x0A])
            held = true
        }
        // Fed to the machine once the proxy has queued this event: a release must not overtake it, and
        // goes out in the same write.
        afterEvent.append { [weak self] in
            guard let self else { return }
            self.run(
                self.machine.deviceDeleted(path, displayName: device.displayName, group: device.group, now: now))
        }
        return held
    }

    public func eventDelivered(_ name: String) {
        let work = afterEvent
        afterEvent = []
        for item in work { item() }
    }

    public func localCommand(_ name: String, arguments: [UInt8]?, disclosure: HolderDisclosure)
        -> ProxyRouter.LocalReply?
    {
        guard name == configuration.queryCommandName else { return nil }
        return .success(queryResult(disclosure: disclosure).qemuBytes)
    }

    /// QEMU's monitor connection went away. With a pid, its exit is awaited through the pidfd; without
    /// one, QEMU is taken as gone now.
    public func upstreamClosed() {
        discovery = nil
        for group in Set(pendingAdds.compactMap { $0.device?.resolved.group }) where machine.view(of: group) == nil {
            watches.remove(group: group)
        }
        pendingAdds = []
        if exitWatcher == nil || exitWatcher?.hasExited == true {
            qemuExited()
        }
    }

    public func metricsSnapshot() -> VFIOMetricsSnapshot {
        VFIOMetricsSnapshot(
            groupsByState: groupsByState,
            fallbackScans: ["qemu-fds": statistics.qemuFullScans, "all-processes": statistics.allProcessScans])
    }

    public func releaseLatency() -> UInt64? { releasing?.latency }

    /// Stops everything: timers, watches, the pidfd. Held events are flushed to the clients.
    public func shutdown() {
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
        watches.close()
        for group in heldEvents.keys.sorted() { flushHeld(group) }
    }

    // MARK: Views for tests, metrics and the query command

    /// The state machine's view of a group.
    public func view(ofGroup group: Int) -> VFIOGroupStateMachine.GroupView? { machine.view(of: group) }

    /// The tracked devices.
    public var trackedDevices: [TrackedVFIODevice] { registry.all }

    /// Number of timers this driver has armed (zero when nothing is detaching).
    public var armedTimers: Int { pollTimers.count + timeoutTimers.count + (learnTimer == nil ? 0 : 1) }

    /// Tracked groups by state (`attached`, `detaching`, `released`, `timed-out`).
    public var groupsByState: [String: Int] {
        machine.views.reduce(into: [:]) { $0[$1.timedOut ? "timed-out" : $1.phase.rawValue, default: 0] += 1 }
    }

    // MARK: Tracking

    private func pendingDevice(_ arguments: [UInt8]) -> PendingDevice? {
        guard let description = VFIODeviceDescription(arguments: arguments), description.isVFIO,
            let resolved = try? sysfs.resolve(host: description.host, sysfsdev: description.sysfsdev)
        else { return nil }
        return PendingDevice(description: description, resolved: resolved, paths: watches.nodePaths(of: resolved))
    }

    private func logDeviceNotResolved(_ description: VFIODeviceDescription) {
        do {
            _ = try sysfs.resolve(host: description.host, sysfsdev: description.sysfsdev)
        } catch {
            logger.warning(
                "VFIO device not tracked: cannot resolve its IOMMU group",
                metadata: ["device": "\(description.id ?? "anonymous")", "error": "\(error)"])
        }
    }

    /// Tracks a device QEMU now has; anonymous ones are found by their QOM path first.
    func track(_ description: VFIODeviceDescription, resolved: ResolvedVFIODevice) {
        guard let qomPath = description.qomPath else {
            // No id: QEMU named it /machine/peripheral-anon/device[N]; find which.
            discoverAnonymous()
            return
        }
        track(description, resolved: resolved, at: qomPath)
    }

    func track(_ description: VFIODeviceDescription, resolved: ResolvedVFIODevice, at qomPath: String) {
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

    /// A failed `device_add` leaves no watch behind on a group nothing else needs.
    private func dropUnusedWatches(_ group: Int) {
        let inUse = machine.view(of: group).map { $0.phase != .released } ?? false
        guard !inUse, !pendingAdds.contains(where: { $0.device?.resolved.group == group }) else { return }
        watches.remove(group: group)
    }

    func qemuExited() {
        guard !qemuGone else { return }
        qemuGone = true
        logger.info("QEMU exited", metadata: ["pid": "\(qemuPID.map(String.init) ?? "unknown")"])
        run(machine.qemuExited(now: Self.monotonicNow()))
    }

    var livePID: pid_t? { qemuGone ? nil : qemuPID }

    /// `CLOCK_MONOTONIC` in nanoseconds.
    static func monotonicNow() -> UInt64 {
        var now = timespec()
        clock_gettime(CLOCK_MONOTONIC, &now)
        return UInt64(now.tv_sec) * 1_000_000_000 + UInt64(now.tv_nsec)
    }
}
