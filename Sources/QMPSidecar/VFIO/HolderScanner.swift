import QMPRuntime

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// How a node is recognised among a process's open files: by `st_rdev` for character devices (a private
/// `mknod` copy in QEMU's mount namespace has another inode, the same device number), by
/// (`st_dev`, `st_ino`) for regular files.
///
/// Character devices compare by `st_rdev`: libvirt mknods a private copy of `/dev/vfio/N` inside QEMU's
/// mount namespace, a different inode with the same device number. Regular files (tests, the mock)
/// compare by (`st_dev`, `st_ino`).
public enum NodeIdentity: Sendable, Hashable, CustomStringConvertible {
    /// A character device, by device number.
    case characterDevice(rdev: UInt64)
    /// Anything else, by file identity.
    case file(dev: UInt64, ino: UInt64)

    /// The identity of what `path` names (following symlinks), or nil when it cannot be stat'ed.
    ///
    /// - Important: uses `stat(2)`, never `open(2)`: opening a group node would hold the group.
    public init?(path: String) {
        var info = stat()
        guard stat(path, &info) == 0 else { return nil }
        self.init(info)
    }

    init(_ info: stat) {
        if (info.st_mode & S_IFMT) == S_IFCHR {
            self = .characterDevice(rdev: UInt64(info.st_rdev))
        } else {
            self = .file(dev: UInt64(info.st_dev), ino: UInt64(info.st_ino))
        }
    }

    /// Whether this is a character device (a real VFIO node, not a test's regular file).
    public var isCharacterDevice: Bool {
        if case .characterDevice = self { true } else { false }
    }

    /// Whether an open file with this `stat` is this node.
    func matches(_ info: stat) -> Bool {
        switch self {
        case .characterDevice(let rdev):
            return (info.st_mode & S_IFMT) == S_IFCHR && UInt64(info.st_rdev) == rdev
        case .file(let dev, let ino):
            return (info.st_mode & S_IFMT) != S_IFCHR && UInt64(info.st_dev) == dev && UInt64(info.st_ino) == ino
        }
    }

    public var description: String {
        switch self {
        case .characterDevice(let rdev): "chr rdev \(rdev)"
        case .file(let dev, let ino): "file \(dev)/\(ino)"
        }
    }
}

/// A process holding a node open.
public struct NodeHolder: Sendable, Hashable {
    /// Its pid.
    public var pid: Int32
    /// Its `comm` (`/proc/<pid>/comm`), empty when unreadable.
    public var comm: String
    /// The fd numbers it holds on the nodes.
    public var fds: [Int32]
    /// The user it runs as (the owner of `/proc/<pid>`), nil when unknown: who may be told about it
    /// (``HolderDisclosure``).
    public var owner: uid_t?

    public init(pid: Int32, comm: String, fds: [Int32], owner: uid_t? = nil) {
        self.pid = pid
        self.comm = comm
        self.fds = fds
        self.owner = owner
    }
}

/// Holder checks through an injected procfs root: `stat` of `<proc>/<pid>/fd/<n>` (which follows the
/// magic link to the open file), compared with ``NodeIdentity``.
///
/// Costs: one known fd is one `stat` (~6 µs); a full scan of a process is one `stat` per fd (30–45 ms at
/// 10k fds); an all-process scan adds every process. Keep full scans off the hot path.
public struct HolderScanner: Sendable {
    /// The procfs root (default `/proc`).
    public var procRoot: String

    public init(procRoot: String = "/proc") {
        var root = procRoot
        while root.count > 1 && root.hasSuffix("/") { root.removeLast() }
        self.procRoot = root
    }

    /// `<proc>/<pid>/root<path>`: a node as a process in another mount namespace sees it.
    public func pathAsSeenBy(pid: Int32, _ path: String) -> String { "\(procRoot)/\(pid)/root\(path)" }

    /// Full scan of `pid`'s fds: the fd numbers open on any of `nodes`, with the node they match.
    /// Nil when the process's fd directory cannot be read (gone, or no permission).
    public func fds(of pid: Int32, matching nodes: Set<NodeIdentity>) -> [Int32: NodeIdentity]? {
        guard !nodes.isEmpty else { return [:] }
        guard let scan = FDScan(procRoot: procRoot, pid: pid, nodes: nodes) else { return nil }
        _ = scan.step(maxEntries: .max)
        return scan.found
    }

    /// A full scan of `pid`'s fds that can be done in steps (so a reactor can serve other work between
    /// them); nil when the fd directory cannot be read.
    public func startScan(of pid: Int32, matching nodes: Set<NodeIdentity>) -> FDScan? {
        FDScan(procRoot: procRoot, pid: pid, nodes: nodes)
    }

    /// Re-checks known fd numbers of `pid`: those still open on the node they were learned for.
    /// Each costs one `stat`.
    public func stillHeld(pid: Int32, fds: [Int32: NodeIdentity]) -> [Int32: NodeIdentity] {
        recheck(pid: pid, fds: fds).held
    }

    /// Like ``stillHeld(pid:fds:)``, and also tells whether a known number now names another open file
    /// (closed and reused): then the knowledge is stale and only a full scan can tell.
    public func recheck(pid: Int32, fds: [Int32: NodeIdentity]) -> (held: [Int32: NodeIdentity], stale: Bool) {
        var held: [Int32: NodeIdentity] = [:]
        var stale = false
        var info = stat()
        for (number, node) in fds where stat("\(procRoot)/\(pid)/fd/\(number)", &info) == 0 {
            if node.matches(info) {
                held[number] = node
            } else {
                stale = true
            }
        }
        return (held, stale)
    }

    /// Every process holding any of `nodes` (all of `<proc>/*/fd`), by pid.
    public func allHolders(of nodes: Set<NodeIdentity>) -> [NodeHolder] {
        guard !nodes.isEmpty, let dir = opendir(procRoot) else { return [] }
        var pids: [Int32] = []
        while let entry = readdir(dir) {
            if let pid = Self.parseFD(DirectoryEntries.name(of: entry)) { pids.append(pid) }
        }
        closedir(dir)
        var holders: [NodeHolder] = []
        for pid in pids.sorted() {
            guard let held = fds(of: pid, matching: nodes), !held.isEmpty else { continue }
            holders.append(NodeHolder(pid: pid, comm: comm(of: pid), fds: held.keys.sorted(), owner: owner(of: pid)))
        }
        return holders
    }

    /// The user `pid` runs as: the owner of `/proc/<pid>` (its effective uid; root for a process
    /// that is not dumpable, which only root may inspect anyway). Nil when it cannot be stat'ed.
    public func owner(of pid: Int32) -> uid_t? {
        var info = stat()
        return stat("\(procRoot)/\(pid)", &info) == 0 ? info.st_uid : nil
    }

    /// `/proc/<pid>/comm` without the newline; empty when unreadable.
    public func comm(of pid: Int32) -> String {
        let fd = open("\(procRoot)/\(pid)/comm", O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return "" }
        defer { close(fd) }
        var buffer = [UInt8](repeating: 0, count: 64)
        let count = read(fd, &buffer, buffer.count)
        guard count > 0 else { return "" }
        var text = String(decoding: buffer[0..<count], as: UTF8.self)
        while text.hasSuffix("\n") { text.removeLast() }
        return text
    }

    /// Whether `pid` exists under the procfs root.
    public func processExists(_ pid: Int32) -> Bool {
        access("\(procRoot)/\(pid)", F_OK) == 0
    }

    static func parseFD(_ name: UnsafePointer<CChar>) -> Int32? {
        var value: Int32 = 0
        var digits = 0
        while true {
            let byte = UInt8(bitPattern: name[digits])
            if byte == 0 { break }
            guard byte >= 0x30 && byte <= 0x39, digits < 9 else { return nil }
            value = value * 10 + Int32(byte - 0x30)
            digits += 1
        }
        return digits > 0 ? value : nil
    }
}

/// A resumable full scan of one process's fd directory (see ``HolderScanner/startScan(of:matching:)``).
///
/// - Important: not thread-safe; owns an open directory stream until finished or deallocated.
public final class FDScan {
    /// The process scanned.
    public let pid: Int32
    /// The nodes looked for.
    public let nodes: Set<NodeIdentity>
    /// fd number → node, for what was found so far.
    public private(set) var found: [Int32: NodeIdentity] = [:]
    /// `stat`s done so far.
    public private(set) var entriesChecked = 0
    private var dir: OpaquePointer?

    init?(procRoot: String, pid: Int32, nodes: Set<NodeIdentity>) {
        guard let dir = opendir("\(procRoot)/\(pid)/fd") else { return nil }
        self.pid = pid
        self.nodes = nodes
        self.dir = dir
    }

    deinit {
        if let dir { closedir(dir) }
    }

    /// Checks up to `maxEntries` more fds; returns true when the scan is complete.
    public func step(maxEntries: Int) -> Bool {
        guard let dir else { return true }
        let dirFD = dirfd(dir)
        var info = stat()
        var budget = maxEntries
        while budget > 0 {
            guard let entry = readdir(dir) else {
                closedir(dir)
                self.dir = nil
                return true
            }
            let name = DirectoryEntries.name(of: entry)
            guard let number = HolderScanner.parseFD(name) else { continue }
            budget -= 1
            entriesChecked += 1
            guard !nodes.isEmpty, fstatat(dirFD, name, &info, 0) == 0 else { continue }
            for node in nodes where node.matches(info) {
                found[number] = node
                break
            }
        }
        return false
    }
}
