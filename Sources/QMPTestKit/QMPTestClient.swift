#if canImport(Glibc)
import Glibc
#endif

/// A minimal blocking QMP client for tests: connects to a unix socket, reads the greeting, sends
/// raw bytes, reads CRLF-terminated lines with a timeout.
///
/// - Important: not thread-safe; one test uses one client. The socket closes on deinit.
public final class QMPTestClient: @unchecked Sendable {
    private let fd: Int32
    private var buffer: [UInt8] = []
    /// The greeting line (without CRLF).
    public private(set) var greeting: [UInt8] = []

    /// Connects to `path` and reads the greeting.
    ///
    /// - Parameter timeout: seconds any single read may block before ``readLine()`` throws.
    public init(path: String, timeout: Double = 10) throws {
        // QEMU's monitor serves one client at a time and may refuse a connection for a moment
        // while it tears the previous one down: retried until the timeout.
        fd = try connectUnixStream(path, timeout: timeout)
        var tv = timeval(tv_sec: Int(timeout), tv_usec: Int((timeout - Double(Int(timeout))) * 1e6))
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        greeting = try readLine()
    }

    deinit {
        close(fd)
    }

    /// Sends bytes as they are.
    public func send(_ bytes: [UInt8]) throws {
        var offset = 0
        while offset < bytes.count {
            let n = bytes[offset...].withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            if n < 0 {
                if errno == EINTR { continue }
                throw QMPTestKitError("send failed: errno \(errno)")
            }
            offset += n
        }
    }

    /// Sends a string's UTF-8 bytes.
    public func send(_ text: String) throws { try send(Array(text.utf8)) }

    /// Reads one line; returns it without the trailing `\r\n`. Throws on timeout or EOF.
    public func readLine() throws -> [UInt8] {
        while true {
            if let newline = buffer.firstIndex(of: 0x0A) {
                var line = Array(buffer[..<newline])
                buffer.removeSubrange(...newline)
                if line.last == 0x0D { line.removeLast() }
                return line
            }
            var chunk = [UInt8](repeating: 0, count: 65536)
            let n = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n < 0 {
                if errno == EINTR { continue }
                throw QMPTestKitError("recv failed or timed out: errno \(errno)")
            }
            if n == 0 { throw QMPTestKitError("QMP peer closed the connection") }
            buffer += chunk[0..<n]
        }
    }

    /// Reads lines until one is not an event; returns it.
    public func readReply() throws -> [UInt8] {
        while true {
            let line = try readLine()
            if !line.starts(with: Array(#"{"timestamp""#.utf8)) && !line.starts(with: Array(#"{"event""#.utf8)) {
                return line
            }
        }
    }

    /// Sends `qmp_capabilities` and checks the reply is a success.
    public func negotiate() throws {
        try send(#"{"execute":"qmp_capabilities"}"#)
        let reply = try readReply()
        guard reply.starts(with: Array(#"{"return""#.utf8)) else {
            throw QMPTestKitError("qmp_capabilities failed: \(String(decoding: reply, as: UTF8.self))")
        }
    }
}
