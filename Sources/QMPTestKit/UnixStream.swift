import QMPRuntime

#if canImport(Glibc)
import Glibc
#endif

/// A blocking, close-on-exec unix stream socket connected to `path`, the one way the test clients
/// connect.
///
/// Retries while nobody listens there yet (no socket file, or bound but not listening) until `timeout`
/// seconds have passed; `timeout` 0 makes one attempt.
/// - Throws: QMPRuntime's `RuntimeError` naming the last `connect` error.
public func connectUnixStream(_ path: String, timeout: Double) throws -> Int32 {
    let deadline = ContinuousClock.now + .milliseconds(Int64(max(0, timeout) * 1000))
    let fd = try Sockets.connect(to: .unix(path: path), retryingUntil: deadline, interval: .milliseconds(2))
    _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK)
    return fd
}
