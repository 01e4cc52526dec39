import CQMPShims
import Logging

#if canImport(Glibc)
import Glibc
#endif

/// Accepts connections on a listening socket registered with a ``Reactor``.
///
/// Each accepted descriptor (nonblocking, close-on-exec) is handed to `onAccept`, which owns it
/// (typically wraps it in a ``Connection``). Accepts until EAGAIN on each readiness. EMFILE/ENFILE are
/// logged and accepting pauses for 100 ms instead of spinning.
///
/// - Important: Use only on the reactor's thread. The listener owns the listening descriptor and,
///   when given `unlinkPath`, removes that socket file on ``close()`` if it is still the one bound
///   by this socket (same inode). While open, the reactor's registration keeps it alive.
public final class Listener {
    /// The listening descriptor (-1 after close).
    public private(set) var fd: Int32
    /// The reactor it runs on.
    public let reactor: Reactor
    /// Called with each accepted descriptor; the callee owns it.
    public var onAccept: (Int32) -> Void
    private let unlinkPath: String?
    private let boundInode: ino_t?
    private var registration: Reactor.RegistrationID?
    private var pauseTimer: Reactor.TimerID?
    private let logger: Logger

    /// Starts accepting on `fd` at once.
    ///
    /// - Parameters:
    ///   - fd: a listening stream socket; the listener owns it from now on.
    ///   - unlinkPath: the unix socket file to remove on close (if it still is this socket).
    ///   - onAccept: receives each accepted descriptor, which it owns.
    public init(
        fd: Int32, reactor: Reactor, unlinkPath: String? = nil, logger: Logger? = nil,
        onAccept: @escaping (Int32) -> Void
    ) {
        self.fd = fd
        self.reactor = reactor
        self.onAccept = onAccept
        self.unlinkPath = unlinkPath
        self.logger = logger ?? reactor.logger
        var info = stat()
        if let unlinkPath, stat(unlinkPath, &info) == 0 {
            boundInode = info.st_ino
        } else {
            boundInode = nil
        }
        try? Sockets.setNonblocking(fd)
        registration = reactor.register(fd: fd, interest: .read) { [self] _ in
            self.acceptAll()
        }
    }

    deinit {
        if fd >= 0 { Glibc.close(fd) }
    }

    /// `true` after ``close()``.
    public var isClosed: Bool { fd < 0 }

    /// Stops accepting, closes the socket and removes its file (see `unlinkPath`). Idempotent.
    public func close() {
        guard fd >= 0 else { return }
        if let registration { reactor.unregister(registration) }
        registration = nil
        if let pauseTimer { reactor.cancel(pauseTimer) }
        pauseTimer = nil
        if let unlinkPath, let boundInode {
            var info = stat()
            if stat(unlinkPath, &info) == 0, info.st_ino == boundInode, info.st_mode & S_IFMT == S_IFSOCK {
                unlink(unlinkPath)
            }
        }
        Glibc.close(fd)
        fd = -1
    }

    private func acceptAll() {
        while fd >= 0 {
            let accepted = cqmp_accept(fd)
            if accepted >= 0 {
                onAccept(accepted)
                continue
            }
            let err = errno
            switch err {
            case EINTR, ECONNABORTED, EPROTO:
                continue
            case EAGAIN, EWOULDBLOCK:
                return
            case EMFILE, ENFILE, ENOBUFS, ENOMEM:
                logger.error(
                    "accept failed; pausing accepts for 100 ms",
                    metadata: ["error": "\(RuntimeError.systemCall("accept", errno: err))"])
                pauseAccepting()
                return
            default:
                logger.error("accept failed", metadata: ["error": "\(RuntimeError.systemCall("accept", errno: err))"])
                return
            }
        }
    }

    private func pauseAccepting() {
        guard let registration, pauseTimer == nil else { return }
        reactor.setInterest([], for: registration)
        pauseTimer = reactor.schedule(after: .milliseconds(100)) { [weak self] in
            guard let self, let registration = self.registration else { return }
            self.pauseTimer = nil
            self.reactor.setInterest(.read, for: registration)
        }
    }
}
