import CQMPShims
import Logging

#if canImport(Glibc)
import Glibc
#endif

/// Tells when a process exits, through a pidfd (`pidfd_open(2)`, Linux 5.3+) on a ``Reactor``.
///
/// Works for any process we may signal, not only children (QEMU is usually not our child). For a
/// child, the pidfd becomes readable when it turns into a zombie; reaping it stays the parent's job.
/// If the process is already gone when the watcher is created, `onExit` runs on the next loop round.
///
/// - Important: Use only on the reactor's thread. The watcher owns its pidfd (closed after the exit
///   was reported, by ``cancel()``, or in `deinit`). `onExit` runs at most once.
public final class ProcessExitWatcher {
    /// The watched process.
    public let pid: pid_t
    /// The reactor it runs on.
    public let reactor: Reactor
    private var fd: Int32
    private var registration: Reactor.RegistrationID?
    private var pendingTimer: Reactor.TimerID?
    private var onExit: (() -> Void)?

    /// `true` once the exit was reported.
    public private(set) var hasExited = false

    /// Starts watching `pid`.
    ///
    /// - Throws: ``RuntimeError`` if `pidfd_open` fails for another reason than "no such process"
    ///   (ENOSYS: the kernel is older than 5.3).
    public init(pid: pid_t, reactor: Reactor, onExit: @escaping () -> Void) throws(RuntimeError) {
        self.pid = pid
        self.reactor = reactor
        self.onExit = onExit
        let fd = cqmp_pidfd_open(pid, 0)
        if fd < 0 {
            let err = errno
            guard err == ESRCH else {
                throw RuntimeError.systemCall(
                    "pidfd_open", errno: err, context: "watching process \(pid) (needs Linux 5.3 or later)")
            }
            self.fd = -1
            pendingTimer = reactor.schedule(after: .zero) { [weak self] in self?.report() }
            return
        }
        self.fd = fd
        registration = reactor.register(fd: fd, interest: .read) { [self] _ in
            self.report()
        }
    }

    deinit {
        if fd >= 0 { Glibc.close(fd) }
    }

    /// Stops watching; `onExit` will not be called. Idempotent.
    public func cancel() {
        onExit = nil
        teardown()
    }

    private func report() {
        hasExited = true
        let callback = onExit
        onExit = nil
        teardown()
        callback?()
    }

    private func teardown() {
        if let registration { reactor.unregister(registration) }
        registration = nil
        if let pendingTimer { reactor.cancel(pendingTimer) }
        pendingTimer = nil
        if fd >= 0 {
            Glibc.close(fd)
            fd = -1
        }
    }
}
