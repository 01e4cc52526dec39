#if canImport(Glibc)
import Glibc
#endif

/// Where a listening socket accepts connections from, to decide whether it may be used: a unix
/// socket is guarded by its file's permissions and SO_PEERCRED; a TCP socket has neither, so only
/// loopback is acceptable without an explicit opt-in.
public enum ListeningAddress: Sendable, Equatable, CustomStringConvertible {
    case unix
    /// A TCP socket bound to `host` (numeric) and `port`.
    case tcp(host: String, port: UInt16, loopback: Bool)
    /// Another family (or getsockname failed).
    case other(family: Int32)

    /// The address `fd` is bound to.
    public static func of(_ fd: Int32) -> ListeningAddress {
        var storage = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let rc = withUnsafeMutablePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        guard rc == 0 else { return .other(family: -1) }
        switch Int32(storage.ss_family) {
        case AF_UNIX:
            return .unix
        case AF_INET:
            let address = withUnsafeBytes(of: &storage) { $0.load(as: sockaddr_in.self) }
            let bytes = withUnsafeBytes(of: address.sin_addr) { Array($0) }
            return .tcp(
                host: bytes.map(String.init).joined(separator: "."), port: UInt16(bigEndian: address.sin_port),
                loopback: isLoopback(ipv4: bytes))
        case AF_INET6:
            let address = withUnsafeBytes(of: &storage) { $0.load(as: sockaddr_in6.self) }
            let bytes = withUnsafeBytes(of: address.sin6_addr) { Array($0) }
            var text = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN))
            inet_ntop(AF_INET6, bytes, &text, socklen_t(text.count))
            return .tcp(
                host: String(decoding: text.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self),
                port: UInt16(bigEndian: address.sin6_port),
                loopback: isLoopback(ipv6: bytes))
        case let family:
            return .other(family: family)
        }
    }

    /// 127.0.0.0/8.
    public static func isLoopback(ipv4 bytes: [UInt8]) -> Bool {
        bytes.count == 4 && bytes[0] == 127
    }

    /// `::1`, or an IPv4-mapped loopback address (`::ffff:127.x.y.z`). `::` (any) is not loopback.
    public static func isLoopback(ipv6 bytes: [UInt8]) -> Bool {
        guard bytes.count == 16 else { return false }
        if bytes[0..<15].allSatisfy({ $0 == 0 }) && bytes[15] == 1 { return true }
        let mapped = bytes[0..<10].allSatisfy({ $0 == 0 }) && bytes[10] == 0xFF && bytes[11] == 0xFF
        return mapped && isLoopback(ipv4: Array(bytes[12...]))
    }

    public var description: String {
        switch self {
        case .unix: return "unix"
        case .tcp(let host, let port, _): return host.contains(":") ? "tcp:[\(host)]:\(port)" : "tcp:\(host):\(port)"
        case .other(let family): return "address family \(family)"
        }
    }
}
