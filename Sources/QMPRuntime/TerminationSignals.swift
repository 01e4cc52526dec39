import CQMPShims

#if canImport(Glibc)
import Glibc
#endif

/// SIGTERM/SIGINT delivered to a reactor as a readable self-pipe, so a process whose only thread
/// waits in `epoll_wait()` ends cleanly without Swift concurrency (whose dispatch worker pool keeps a 1 Hz
/// monitor timer running for the life of the process: an idle sidecar would not sleep).
///
/// Also ignores SIGPIPE and unblocks the signals: a parent may have spawned the process with them
/// blocked (test runners' worker threads do).
///
/// - Important: One instance per process, created and used on the reactor's thread.
public final class TerminationSignals {
    private let reactor: Reactor
    private let readFD: Int32
    private let writeFD: Int32
    private var registration: Reactor.RegistrationID?

    /// Installs the handlers and calls `onSignal` with the signal number on the reactor thread.
    ///
    /// - Throws: ``RuntimeError`` if the pipe cannot be created.
    public init(
        reactor: Reactor, signals: [Int32] = [SIGTERM, SIGINT], onSignal: @escaping (Int32) -> Void
    ) throws(RuntimeError) {
        var fds: [Int32] = [-1, -1]
        guard cqmp_pipe(&fds, 1) == 0 else { throw .systemCall("pipe2", errno: errno, context: "signal pipe") }
        self.reactor = reactor
        readFD = fds[0]
        writeFD = fds[1]
        terminationSignalPipe = fds[1]
        let handler: @convention(c) (Int32) -> Void = { signal in
            var byte = UInt8(truncatingIfNeeded: signal)
            _ = write(terminationSignalPipe, &byte, 1)  // async-signal-safe
        }
        var unblock = sigset_t()
        sigemptyset(&unblock)
        for number in signals {
            Glibc.signal(number, handler)
            sigaddset(&unblock, number)
        }
        Glibc.signal(SIGPIPE, SIG_IGN)
        pthread_sigmask(SIG_UNBLOCK, &unblock, nil)
        let readFD = self.readFD
        registration = reactor.register(fd: readFD, interest: .read) { _ in
            var byte: UInt8 = 0
            while read(readFD, &byte, 1) == 1 { onSignal(Int32(byte)) }
        }
    }

    deinit {
        if let registration { reactor.unregister(registration) }
        close(readFD)
        close(writeFD)
    }
}

/// The write end of the signal self-pipe, for the async-signal-safe handler.
nonisolated(unsafe) private var terminationSignalPipe: Int32 = -1
