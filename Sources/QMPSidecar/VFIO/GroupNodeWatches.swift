import Logging
import QMPRuntime
import VFIOTracking

#if canImport(Glibc)
import Glibc
#endif

/// The nodes of each tracked group (its `/dev/vfio/<N>` and its devices' iommufd cdevs), their inotify
/// watches (`IN_OPEN | IN_CLOSE_*`) and their open-description counts (``OpenDescriptionCount``).
///
/// Each node is watched as QEMU sees it (`/proc/<pid>/root/dev/vfio/N`: libvirt gives QEMU a private
/// `/dev`). Watches placed before the `device_add` that opens a node count exactly from zero; watches
/// placed later (discovery, a restart) start unknown. The last fallback facts — the fd numbers a scan
/// found QEMU using — live here too, next to the node they are about.
///
/// - Important: reactor thread only. Never opens a node.
final class GroupNodeWatches {
    struct Node {
        /// The node under `--dev-root`.
        var path: String
        /// What is watched: the node as QEMU sees it, else `path`.
        var watchPath: String
        var identity: NodeIdentity
        var watched = false
        var count: OpenDescriptionCount
    }

    struct Group {
        var nodes: [Node] = []
        /// Fallback knowledge: fd number → node QEMU holds; nil when unknown (a scan is needed).
        var qemuFDs: [Int32: NodeIdentity]?
        var identities: Set<NodeIdentity> { Set(nodes.map(\.identity)) }
    }

    /// Called with the group when one of its nodes was opened / had a description closed (with
    /// whether that node is now certainly closed everywhere: exclusive, or counted exactly to zero).
    var onOpen: (Int) -> Void = { _ in }
    var onClose: (Int, Bool) -> Void = { _, _ in }
    /// Called once when the kernel dropped events: every count is unknown now.
    var onOverflow: () -> Void = {}

    private(set) var groups: [Int: Group] = [:]
    private var groupOfWatchPath: [String: Int] = [:]
    private var inotify: InotifyWatcher?
    private let reactor: Reactor
    private let logger: Logger
    private let scanner: HolderScanner
    private let sysfs: VFIOSysfs

    init(reactor: Reactor, scanner: HolderScanner, sysfs: VFIOSysfs, logger: Logger) {
        self.reactor = reactor
        self.scanner = scanner
        self.sysfs = sysfs
        self.logger = logger
    }

    /// The nodes of a device QEMU may open: its group's node, and its cdev when it has one.
    func nodePaths(of device: ResolvedVFIODevice) -> [String] {
        [sysfs.groupNodePath(device.group)] + (device.cdevNode.map { [$0] } ?? [])
    }

    /// Adds and watches `paths` of `group` (those already there keep their counts). Paths that do not
    /// exist are left out (an iommufd-only host has no `/dev/vfio/<N>`).
    ///
    /// - Parameter beforeUse: the watch goes on before the command that opens the nodes is forwarded,
    ///   so counts start at an exact zero; otherwise they start unknown.
    func add(group number: Int, paths: [String], qemuPID: pid_t?, beforeUse: Bool) {
        var group = groups[number] ?? Group()
        for path in paths where !group.nodes.contains(where: { $0.path == path }) {
            var watchPath = path
            if let pid = qemuPID {
                let seen = scanner.pathAsSeenBy(pid: pid, path)
                if NodeIdentity(path: seen) != nil { watchPath = seen }
            }
            guard let identity = NodeIdentity(path: watchPath) ?? NodeIdentity(path: path) else { continue }
            let exclusive = path == sysfs.groupNodePath(number) && identity.isCharacterDevice
            var node = Node(
                path: path, watchPath: watchPath, identity: identity,
                count: OpenDescriptionCount(watchedBeforeUse: beforeUse, exclusive: exclusive))
            node.watched = watch(node.watchPath, group: number)
            group.nodes.append(node)
        }
        groups[number] = group
    }

    /// Stops watching `group` and forgets its nodes.
    func remove(group number: Int) {
        for node in groups.removeValue(forKey: number)?.nodes ?? [] where node.watched {
            inotify?.unwatch(node.watchPath)
            groupOfWatchPath[node.watchPath] = nil
        }
    }

    /// Takes the events the kernel already queued (see ``InotifyWatcher/drain()``).
    func drain() { inotify?.drain() }

    /// From the counts alone: does any process hold a node of `group`? Nil unless every node is watched
    /// and counted exactly (then a fallback check must decide).
    func certainlyHeld(group number: Int) -> Bool? {
        guard let group = groups[number], !group.nodes.isEmpty else { return nil }
        var held = false
        for node in group.nodes {
            guard node.watched, let open = node.count.isOpen else { return nil }
            held = held || open
        }
        return held
    }

    /// A `device_add` needing `paths` succeeded: when none of them was seen opened since its watch,
    /// they were opened before it (QEMU already held the group, or the fd was passed in) and their
    /// counts are unknown.
    func commandSucceeded(group number: Int, paths: [String]) {
        guard var group = groups[number] else { return }
        let indices = group.nodes.indices.filter { paths.contains(group.nodes[$0].path) }
        guard indices.allSatisfy({ group.nodes[$0].count.opensSeen == 0 }) else { return }
        for index in indices { group.nodes[index].count.openedBeforeWatch() }
        groups[number] = group
    }

    /// A holder scan's result for `group`: `qemuFDs` is what a scan of QEMU found (nil: not scanned;
    /// empty: QEMU holds none), `anyHolder` what a scan of every process found (nil: not scanned).
    func scanned(group number: Int, qemuFDs: [Int32: NodeIdentity]?, anyHolder: Bool? = nil) {
        guard var group = groups[number] else { return }
        if let qemuFDs { group.qemuFDs = qemuFDs }
        for index in group.nodes.indices {
            let identity = group.nodes[index].identity
            if let anyHolder {
                group.nodes[index].count.verified(held: anyHolder)
            } else if let qemuFDs, qemuFDs.values.contains(identity), group.nodes[index].count.exclusive {
                group.nodes[index].count.verified(held: true)
            }
        }
        groups[number] = group
    }

    /// Replaces the fallback's known QEMU fds of `group`.
    func setQEMUFDs(_ fds: [Int32: NodeIdentity]?, group number: Int) {
        groups[number]?.qemuFDs = fds
    }

    /// Every node's open-description count, by group (for the query command and statistics).
    func counts(of number: Int) -> [OpenDescriptionCount] { groups[number]?.nodes.map(\.count) ?? [] }

    /// Closes the inotify instance.
    func close() {
        inotify?.close()
        inotify = nil
        groups = [:]
        groupOfWatchPath = [:]
    }

    // MARK: Private

    private func watch(_ path: String, group: Int) -> Bool {
        if inotify == nil {
            do {
                let watcher = try InotifyWatcher(
                    reactor: reactor, mask: UInt32(IN_OPEN) | InotifyWatcher.closeEvents, logger: logger
                ) { _ in }
                watcher.onMaskedEvent = { [weak self] path, mask in self?.event(on: path, mask: mask) }
                watcher.onOverflow = { [weak self] in self?.overflowed() }
                watcher.onWatchLost = { [weak self] path in self?.watchLost(path) }
                inotify = watcher
            } catch {
                logger.warning("no inotify: release relies on the backoff poll", metadata: ["error": "\(error)"])
                return false
            }
        }
        do {
            try inotify?.watch(path)
            groupOfWatchPath[path] = group
            return true
        } catch {
            // No events for this node: its count stays unknown and the fallback decides.
            logger.debug("cannot watch node", metadata: ["node": "\(path)", "error": "\(error)"])
            return false
        }
    }

    private func event(on path: String, mask: UInt32) {
        guard let number = groupOfWatchPath[path], var group = groups[number],
            let index = group.nodes.firstIndex(where: { $0.watchPath == path })
        else { return }
        // One read can carry an open and a close of the same node: each bit is its own event.
        if mask & UInt32(IN_OPEN) != 0 { group.nodes[index].count.opened() }
        let closed = mask & InotifyWatcher.closeEvents != 0
        if closed { group.nodes[index].count.closed() }
        groups[number] = group
        if mask & UInt32(IN_OPEN) != 0 { onOpen(number) }
        if closed { onClose(number, group.nodes[index].count.isOpen == false) }
    }

    private func overflowed() {
        for number in groups.keys {
            for index in groups[number]!.nodes.indices { groups[number]!.nodes[index].count.eventsLost() }
        }
        onOverflow()
    }

    private func watchLost(_ path: String) {
        guard let number = groupOfWatchPath.removeValue(forKey: path), var group = groups[number],
            let index = group.nodes.firstIndex(where: { $0.watchPath == path })
        else { return }
        group.nodes[index].watched = false
        groups[number] = group
    }
}
