import CQMPShims
import Logging
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// A reactor running on a thread of its own, awaitable from async code (e.g. a swift-service-lifecycle
/// `Service.run()`).
///
/// The ``Reactor`` is created on the new thread and never leaves it: `setup` runs there first (open
/// listeners, connect, register handlers), then the loop runs until stopped through ``handle``.
/// When the loop ends, every registration and timer is dropped, so objects kept alive only by their
/// handlers are released (and close their descriptors in `deinit`).
public final class ReactorThread: Sendable {
    private struct State {
        var result: Result<Void, any Error>?
        var waiters: [CheckedContinuation<Void, any Error>] = []
    }

    private final class Start: @unchecked Sendable {
        // Only touched by the new thread after pthread_create hands it over.
        let body: @Sendable () -> Void
        init(_ body: @escaping @Sendable () -> Void) { self.body = body }
    }

    /// Thread-safe access to the running reactor: `execute` jobs on it, `stop` it.
    public let handle: ReactorHandle
    private let state = Mutex(State())

    private init(handle: ReactorHandle) {
        self.handle = handle
    }

    /// Starts a thread that creates a reactor, calls `setup` with it, and runs it.
    ///
    /// - Parameters:
    ///   - name: thread name (truncated to 15 bytes), for `top -H` and debuggers.
    ///   - logger: given to the reactor.
    ///   - setup: runs on the reactor thread before the loop; an error it throws ends the thread and
    ///     is rethrown by ``wait()``.
    /// - Throws: ``RuntimeError`` if the eventfd or the thread cannot be created (an epoll set that
    ///   cannot be created ends the thread; ``wait()`` rethrows it).
    public static func start(
        name: String = "qmp-reactor", logger: Logger = Logger(label: "qmp.runtime"),
        setup: @escaping @Sendable (Reactor) throws -> Void
    ) throws(RuntimeError) -> ReactorThread {
        let channel = try WakeChannel()
        let thread = ReactorThread(handle: ReactorHandle(channel: channel))
        let start = Start {
            _ = cqmp_set_thread_name(name)
            let result: Result<Void, any Error>
            do {
                let reactor = try Reactor(channel: channel, logger: logger)
                defer { reactor.dropAll() }
                try setup(reactor)
                try reactor.run()
                result = .success(())
            } catch {
                result = .failure(error)
            }
            thread.finish(result)
        }
        var tid = pthread_t()
        let box = Unmanaged.passRetained(start).toOpaque()
        let rc = pthread_create(
            &tid, nil,
            { raw in
                let start = Unmanaged<Start>.fromOpaque(raw!).takeRetainedValue()
                start.body()
                return nil
            }, box)
        if rc != 0 {
            Unmanaged<Start>.fromOpaque(box).release()
            throw RuntimeError.systemCall("pthread_create", errno: rc, context: "starting the reactor thread")
        }
        pthread_detach(tid)
        return thread
    }

    private func finish(_ result: Result<Void, any Error>) {
        let waiters = state.withLock { state in
            state.result = result
            let waiters = state.waiters
            state.waiters.removeAll()
            return waiters
        }
        for waiter in waiters {
            waiter.resume(with: result)
        }
    }

    /// Waits until the reactor thread ends; rethrows the error of `setup` or of the loop.
    ///
    /// Cancelling the waiting task stops the reactor (then still waits for the thread to finish),
    /// which is what a swift-service-lifecycle service wants on graceful shutdown.
    public func wait() async throws {
        try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
                let done = state.withLock { state -> Result<Void, any Error>? in
                    if let result = state.result { return result }
                    state.waiters.append(continuation)
                    return nil
                }
                if let done {
                    continuation.resume(with: done)
                }
            }
        } onCancel: {
            handle.stop()
        }
    }

    /// `true` once the thread has finished.
    public var isFinished: Bool {
        state.withLock { $0.result != nil }
    }
}
