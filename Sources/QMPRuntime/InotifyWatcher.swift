import Logging

#if canImport(Glibc)
import Glibc
#endif

/// Watches files for close events with inotify, on a ``Reactor``.
///
/// By default each watch asks for `IN_CLOSE_WRITE | IN_CLOSE_NOWRITE`: the kernel reports the close
/// of the *last* reference to an open file of the watched inode (by any process), which is how the
/// VFIO tracker learns that a group node was released. ``onEvent`` receives the watched path (every
/// path, when several paths name the same inode). When the kernel's event queue overflowed,
/// ``onEvent`` is called for every watched path so the owner re-checks them all.
///
/// - Important: Use only on the reactor's thread. The watcher owns its inotify descriptor (closed by
///   ``close()`` or `deinit`). While open, the reactor's registration keeps it alive.
public final class InotifyWatcher {
    /// Called with the watched path when a matching event arrives for it.
    public var onEvent: (String) -> Void
    /// When set, called instead of ``onEvent`` with the event's mask bits too (e.g. to tell `IN_OPEN`
    /// from `IN_CLOSE_*` when ``mask`` asks for both).
    public var onMaskedEvent: ((String, UInt32) -> Void)?
    /// When set, a queue overflow calls this once instead of reporting every watched path: events were
    /// lost, so an owner that counts them knows its counts are no longer exact.
    public var onOverflow: (() -> Void)?
    /// Called with the watched path when the kernel dropped its watch by itself (the file was deleted,
    /// or its file system unmounted). The path is no longer watched.
    public var onWatchLost: ((String) -> Void)?
    /// The event mask used for new watches.
    public let mask: UInt32
    /// The reactor it runs on.
    public let reactor: Reactor

    /// `IN_CLOSE_WRITE | IN_CLOSE_NOWRITE`.
    public static let closeEvents = UInt32(IN_CLOSE_WRITE) | UInt32(IN_CLOSE_NOWRITE)

    private var fd: Int32
    private var registration: Reactor.RegistrationID?
    private var pathsByWatch: [Int32: [String]] = [:]
    private var watchByPath: [String: Int32] = [:]
    private var buffer = [UInt8](repeating: 0, count: 16 * 1024)
    private let logger: Logger

    /// Creates an inotify instance and registers it with `reactor`.
    ///
    /// - Parameters:
    ///   - mask: inotify event bits for each watch (default: close events).
    ///   - onEvent: receives the watched path of each event.
    /// - Throws: ``RuntimeError`` if `inotify_init1` fails (e.g. EMFILE: raise
    ///   `fs.inotify.max_user_instances`).
    public init(
        reactor: Reactor, mask: UInt32 = InotifyWatcher.closeEvents, logger: Logger? = nil,
        onEvent: @escaping (String) -> Void
    ) throws(RuntimeError) {
        let fd = inotify_init1(Int32(IN_CLOEXEC) | Int32(IN_NONBLOCK))
        if fd < 0 {
            throw RuntimeError.systemCall(
                "inotify_init1", context: "creating an inotify instance (raise fs.inotify.max_user_instances if EMFILE)"
            )
        }
        self.fd = fd
        self.mask = mask
        self.reactor = reactor
        self.onEvent = onEvent
        self.logger = logger ?? reactor.logger
        registration = reactor.register(fd: fd, interest: .read) { [self] _ in
            self.readEvents()
        }
    }

    deinit {
        if fd >= 0 { Glibc.close(fd) }
    }

    /// The paths currently watched.
    public var watchedPaths: [String] { Array(watchByPath.keys) }

    /// Starts watching `path` (following symlinks). Watching a path twice is a no-op.
    ///
    /// - Throws: ``RuntimeError`` naming the path and errno (ENOENT, EACCES, ENOSPC: raise
    ///   `fs.inotify.max_user_watches`).
    public func watch(_ path: String) throws(RuntimeError) {
        guard fd >= 0 else { throw RuntimeError(code: .closed, message: "inotify watcher is closed") }
        guard watchByPath[path] == nil else { return }
        let wd = inotify_add_watch(fd, path, mask)
        if wd < 0 {
            throw RuntimeError.systemCall("inotify_add_watch", context: "watching \(path)")
        }
        watchByPath[path] = wd
        pathsByWatch[wd, default: []].append(path)
    }

    /// Stops watching `path`. Idempotent.
    public func unwatch(_ path: String) {
        guard let wd = watchByPath.removeValue(forKey: path) else { return }
        var paths = pathsByWatch[wd] ?? []
        paths.removeAll { $0 == path }
        if paths.isEmpty {
            pathsByWatch.removeValue(forKey: wd)
            if fd >= 0 { _ = inotify_rm_watch(fd, wd) }
        } else {
            pathsByWatch[wd] = paths
        }
    }

    /// Reads and delivers the events already queued, without waiting for the reactor to poll: an owner
    /// that learns something through another descriptor in the same loop round (a reply that follows
    /// an open, an event that follows a close) first takes what the kernel already reported.
    public func drain() {
        readEvents()
    }

    /// Removes all watches and closes the inotify descriptor. Idempotent.
    public func close() {
        guard fd >= 0 else { return }
        if let registration { reactor.unregister(registration) }
        registration = nil
        Glibc.close(fd)
        fd = -1
        pathsByWatch.removeAll()
        watchByPath.removeAll()
    }

    private enum Delivery {
        case event(String, UInt32)
        case lost(String)
        case overflow
    }

    private func readEvents() {
        while fd >= 0 {
            let socket = fd
            let count = buffer.withUnsafeMutableBytes { Glibc.read(socket, $0.baseAddress, $0.count) }
            if count < 0 {
                if errno == EINTR { continue }
                if errno != EAGAIN {
                    logger.error("inotify read failed", metadata: ["error": "\(RuntimeError.systemCall("read"))"])
                }
                return
            }
            if count == 0 { return }
            var delivered: [Delivery] = []
            buffer.withUnsafeBytes { raw in
                var offset = 0
                let header = MemoryLayout<inotify_event>.size
                while offset + header <= count {
                    let wd = raw.loadUnaligned(fromByteOffset: offset, as: Int32.self)
                    let eventMask = raw.loadUnaligned(fromByteOffset: offset + 4, as: UInt32.self)
                    let nameLength = Int(raw.loadUnaligned(fromByteOffset: offset + 12, as: UInt32.self))
                    offset += header + nameLength
                    if eventMask & UInt32(IN_Q_OVERFLOW) != 0 {
                        logger.warning("inotify queue overflowed; events were lost")
                        if onOverflow == nil {
                            for path in watchByPath.keys { delivered.append(.event(path, mask)) }
                        } else {
                            delivered.append(.overflow)
                        }
                        continue
                    }
                    guard let paths = pathsByWatch[wd] else { continue }
                    if eventMask & UInt32(IN_IGNORED) != 0 {
                        pathsByWatch.removeValue(forKey: wd)
                        for path in paths {
                            watchByPath.removeValue(forKey: path)
                            delivered.append(.lost(path))
                        }
                        continue
                    }
                    if eventMask & mask != 0 {
                        for path in paths { delivered.append(.event(path, eventMask & mask)) }
                    }
                }
            }
            // Callbacks run after parsing: they may watch/unwatch or close freely.
            for delivery in delivered {
                switch delivery {
                case .event(let path, let bits):
                    if let onMaskedEvent { onMaskedEvent(path, bits) } else { onEvent(path) }
                case .lost(let path): onWatchLost?(path)
                case .overflow: onOverflow?()
                }
            }
        }
    }
}
