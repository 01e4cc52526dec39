/// Where a QMP socket lives: `unix:PATH` or `tcp:HOST:PORT` (the syntax of QEMU's `-qmp` option).
///
/// Parse with ``init(parsing:)``; `description` prints the same syntax back.
public enum SocketAddress: Hashable, Sendable, CustomStringConvertible {
    /// A unix stream socket at a file-system path (at most 107 bytes).
    case unix(path: String)
    /// A TCP socket; `host` is a name, an IPv4 address or an IPv6 address (without brackets).
    case tcp(host: String, port: UInt16)

    /// The longest path a `sockaddr_un` holds (`sun_path` is 108 bytes, NUL included).
    public static let maxUnixPathLength = 107

    /// Parses `unix:PATH` or `tcp:HOST:PORT` (`tcp:[::1]:4444` for IPv6).
    ///
    /// - Throws: ``RuntimeError`` with code `.invalidAddress` and a message showing the accepted forms.
    public init(parsing text: String) throws(RuntimeError) {
        let forms = "expected unix:PATH or tcp:HOST:PORT (e.g. unix:/run/qemu/vm1.qmp, tcp:127.0.0.1:4444)"
        if text.hasPrefix("unix:") {
            let path = String(text.dropFirst(5))
            if path.isEmpty {
                throw RuntimeError(code: .invalidAddress, message: "invalid address \"\(text)\": empty path; \(forms)")
            }
            if path.utf8.count > Self.maxUnixPathLength {
                throw RuntimeError(
                    code: .pathTooLong,
                    message:
                        "invalid address \"\(text)\": unix socket paths are limited to \(Self.maxUnixPathLength) bytes; use a shorter path (e.g. under /run)"
                )
            }
            self = .unix(path: path)
            return
        }
        if text.hasPrefix("tcp:") {
            let rest = text.dropFirst(4)
            guard let colon = rest.lastIndex(of: ":") else {
                throw RuntimeError(
                    code: .invalidAddress, message: "invalid address \"\(text)\": missing port; \(forms)")
            }
            var host = String(rest[rest.startIndex..<colon])
            let portText = rest[rest.index(after: colon)...]
            if host.hasPrefix("[") && host.hasSuffix("]") {
                host = String(host.dropFirst().dropLast())
            }
            guard !host.isEmpty else {
                throw RuntimeError(
                    code: .invalidAddress, message: "invalid address \"\(text)\": missing host; \(forms)")
            }
            guard let port = UInt16(portText) else {
                throw RuntimeError(
                    code: .invalidAddress,
                    message: "invalid address \"\(text)\": port \"\(portText)\" is not a number in 0...65535; \(forms)")
            }
            self = .tcp(host: host, port: port)
            return
        }
        throw RuntimeError(code: .invalidAddress, message: "invalid address \"\(text)\": \(forms)")
    }

    public var description: String {
        switch self {
        case .unix(let path): return "unix:\(path)"
        case .tcp(let host, let port):
            return host.contains(":") ? "tcp:[\(host)]:\(port)" : "tcp:\(host):\(port)"
        }
    }
}
