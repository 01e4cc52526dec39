import Logging

#if canImport(Glibc)
import Glibc
#endif

/// Connects to an address from a ``Reactor`` thread, retrying on a timer while the peer is not
/// listening yet (ENOENT, ECONNREFUSED, EAGAIN), until a deadline.
///
/// For `--reconnect` (waiting for a new QEMU while the reactor keeps serving) and for start-up inside
/// a reactor. Each attempt is one `connect` (immediate for unix sockets; for TCP it blocks for the
/// handshake, so prefer unix or local TCP). Nothing runs between attempts: the reactor sleeps until
/// the retry timer.
///
/// - Important: Use only on the reactor's thread. `completion` runs exactly once (unless cancelled)
///   and owns the descriptor it receives on success.
public final class ConnectRetry {
    /// The address being connected to.
    public let address: SocketAddress
    private let reactor: Reactor
    private let deadline: ContinuousClock.Instant
    private let interval: Duration
    private var completion: ((Result<Int32, RuntimeError>) -> Void)?
    private var timer: Reactor.TimerID?

    /// Starts connecting; the first attempt runs on the next loop round.
    ///
    /// - Parameters:
    ///   - deadline: when to give up with a `.timedOut` error naming the QEMU option to check.
    ///   - interval: delay between attempts.
    ///   - completion: the connected descriptor (caller owns it) or the error.
    public init(
        address: SocketAddress, reactor: Reactor, deadline: ContinuousClock.Instant,
        interval: Duration = .milliseconds(20), completion: @escaping (Result<Int32, RuntimeError>) -> Void
    ) {
        self.address = address
        self.reactor = reactor
        self.deadline = deadline
        self.interval = interval
        self.completion = completion
        timer = reactor.schedule(after: .zero) { [self] in self.attempt() }
    }

    /// Stops retrying; `completion` is not called. Idempotent.
    public func cancel() {
        completion = nil
        if let timer { reactor.cancel(timer) }
        timer = nil
    }

    /// `true` while attempts are still scheduled.
    public var isPending: Bool { completion != nil }

    private func attempt() {
        timer = nil
        guard completion != nil else { return }
        do {
            let fd = try Sockets.connect(to: address)
            finish(.success(fd))
        } catch {
            guard let err = error.errno, Sockets.isRetryableConnectError(err) else {
                finish(.failure(error))
                return
            }
            let now = ContinuousClock.now
            if now >= deadline {
                finish(
                    .failure(
                        RuntimeError(
                            code: .timedOut,
                            message:
                                "\(address) not reachable in time (last error: \(String(cString: strerror(err)))): is QEMU started with -qmp \(address),server=on,wait=off?",
                            call: "connect", errno: err)))
                return
            }
            let next = min(now + interval, deadline)
            timer = reactor.schedule(at: next) { [self] in self.attempt() }
        }
    }

    private func finish(_ result: Result<Int32, RuntimeError>) {
        let callback = completion
        completion = nil
        callback?(result)
    }
}
