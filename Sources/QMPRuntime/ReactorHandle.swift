import CQMPShims
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// The eventfd and job queue behind a ``ReactorHandle``; the fd lives as long as any handle.
final class WakeChannel: Sendable {
    private struct State {
        var jobs: [@Sendable (Reactor) -> Void] = []
        var stopRequested = false
        var signalled = false
        var closed = false
    }

    let fd: Int32
    private let state = Mutex(State())

    init() throws(RuntimeError) {
        let fd = cqmp_eventfd()
        if fd < 0 {
            throw RuntimeError.systemCall("eventfd", context: "creating the reactor's wake-up descriptor")
        }
        self.fd = fd
    }

    deinit {
        Glibc.close(fd)
    }

    /// Enqueues work; returns false once the reactor is gone.
    func submit(job: (@Sendable (Reactor) -> Void)?, stop: Bool) -> Bool {
        let needsSignal: Bool? = state.withLock { state in
            if state.closed { return nil }
            if let job { state.jobs.append(job) }
            if stop { state.stopRequested = true }
            if state.signalled { return false }
            state.signalled = true
            return true
        }
        guard let needsSignal else { return false }
        if needsSignal {
            var one: UInt64 = 1
            _ = withUnsafeBytes(of: &one) { Glibc.write(fd, $0.baseAddress, 8) }
        }
        return true
    }

    func drain() -> ([@Sendable (Reactor) -> Void], Bool) {
        var counter: UInt64 = 0
        _ = withUnsafeMutableBytes(of: &counter) { Glibc.read(fd, $0.baseAddress, 8) }
        return state.withLock { state in
            let jobs = state.jobs
            let stop = state.stopRequested
            state.jobs.removeAll()
            state.stopRequested = false
            state.signalled = false
            return (jobs, stop)
        }
    }

    func close() {
        state.withLock { state in
            state.closed = true
            state.jobs.removeAll()
        }
    }
}

/// A `Sendable` handle to a ``Reactor``: the only way other threads interact with it.
///
/// Each call writes the reactor's eventfd (at most once until the reactor drains it), so the loop
/// wakes from `epoll_wait` immediately. Calls made after the reactor was deallocated return `false`.
public struct ReactorHandle: Sendable {
    let channel: WakeChannel

    /// Runs `job` on the reactor thread at its next loop round, with the reactor as argument.
    ///
    /// Jobs run in submission order. - Returns: false if the reactor no longer exists (job dropped).
    @discardableResult
    public func execute(_ job: @escaping @Sendable (Reactor) -> Void) -> Bool {
        channel.submit(job: job, stop: false)
    }

    /// Asks the reactor to return from `run()` (jobs submitted before this still run first).
    @discardableResult
    public func stop() -> Bool {
        channel.submit(job: nil, stop: true)
    }
}
