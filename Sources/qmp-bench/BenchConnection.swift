import Foundation
import QMPTestKit

#if canImport(Glibc)
import Glibc
#endif

/// A raw QMP connection for timing: blocking round trips, nonblocking pipelining. Every reply is
/// checked: an error (or a reply to another id) fails the run, so a fast error never counts.
final class BenchConnection {
    let fd: Int32
    private var buffer: [UInt8] = []
    private var scratch = [UInt8](repeating: 0, count: 1 << 16)

    init(path: String) throws {
        fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { raw in raw.copyBytes(from: Array(path.utf8) + [0]) }
        let rc = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
            }
        }
        guard rc == 0 else {
            close(fd)
            throw QMPTestKitError("connect(\(path)) failed: errno \(errno)")
        }
    }

    deinit { close(fd) }

    static func connecting(to path: String) throws -> BenchConnection {
        let deadline = Date().addingTimeInterval(20)
        while true {
            do { return try BenchConnection(path: path) } catch {
                if Date() > deadline { throw error }
                usleep(10_000)
            }
        }
    }

    func negotiate() throws {
        _ = try readLine()
        try write(Array(#"{"execute": "qmp_capabilities"}"#.utf8))
        try Self.check(try readLine(), id: nil)
    }

    /// One command and its checked reply; returns microseconds.
    func roundTrip(command: String, id: Int) throws -> Double {
        try roundTrip(raw: #"{"execute": "\#(command)", "id": \#(id)}"#, id: id)
    }

    /// One request (its JSON text) and its checked reply; returns microseconds.
    func roundTrip(raw: String, id: Int) throws -> Double {
        let request = Array(raw.utf8)
        let start = ContinuousClock.now
        try write(request)
        let reply = try readReply()
        let elapsed = ContinuousClock.now - start
        try Self.check(reply, id: id)
        return elapsed.microseconds
    }

    /// Writes `count` commands back to back while reading replies; returns commands per second.
    func pipelined(command: String, count: Int) throws -> Double {
        var output: [UInt8] = []
        for i in 0..<count { output += Array(#"{"execute": "\#(command)", "id": \#(i)}"#.utf8) }
        var written = 0
        var replies = 0
        let flags = fcntl(fd, F_GETFL)
        _ = fcntl(fd, F_SETFL, flags | O_NONBLOCK)
        defer { _ = fcntl(fd, F_SETFL, flags) }
        let start = ContinuousClock.now
        while replies < count {
            var pfd = pollfd(fd: fd, events: Int16(POLLIN) | (written < output.count ? Int16(POLLOUT) : 0), revents: 0)
            guard poll(&pfd, 1, 10_000) > 0 else { throw QMPTestKitError("pipelined run stalled") }
            if pfd.revents & Int16(POLLOUT) != 0 {
                let n = output[written...].withUnsafeBytes {
                    Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL))
                }
                if n > 0 { written += n }
            }
            if pfd.revents & (Int16(POLLIN) | Int16(POLLHUP)) != 0 {
                let n = read(fd, &scratch, scratch.count)
                guard n > 0 else { throw QMPTestKitError("connection closed during pipelined run") }
                buffer += scratch[..<n]
                while let line = takeLine() {
                    try Self.check(line, id: replies)
                    replies += 1
                }
            }
        }
        let elapsed = ContinuousClock.now - start
        return Double(count) / (elapsed.microseconds / 1e6)
    }

    /// Writes bytes without reading anything back.
    func write(_ bytes: [UInt8]) throws {
        var offset = 0
        while offset < bytes.count {
            let n = bytes[offset...].withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            guard n > 0 else { throw QMPTestKitError("send failed: errno \(errno)") }
            offset += n
        }
    }

    /// The next line that is not an event.
    func readReply() throws -> [UInt8] {
        while true {
            let line = try readLine()
            if !line.starts(with: Array(#"{"timestamp""#.utf8)), !line.starts(with: Array(#"{"event""#.utf8)) {
                return line
            }
        }
    }

    func readLine() throws -> [UInt8] {
        while true {
            if let line = takeLine() { return line }
            try fill()
        }
    }

    /// Reads once (blocking) into the line buffer.
    func fill() throws {
        let n = read(fd, &scratch, scratch.count)
        guard n > 0 else { throw QMPTestKitError("connection closed") }
        buffer += scratch[..<n]
    }

    /// A complete line already read, if any.
    func takeLine() -> [UInt8]? {
        guard let newline = buffer.firstIndex(of: 0x0A) else { return nil }
        let line = Array(buffer[..<newline])
        buffer.removeSubrange(...newline)
        return line
    }

    /// The first complete line already read that satisfies `predicate`, removed; other lines stay.
    func takeLine(where predicate: (ArraySlice<UInt8>) -> Bool) -> [UInt8]? {
        var start = 0
        while let newline = buffer[start...].firstIndex(of: 0x0A) {
            if predicate(buffer[start..<newline]) {
                let line = Array(buffer[start..<newline])
                buffer.removeSubrange(start...newline)
                return line
            }
            start = newline + 1
        }
        return nil
    }

    /// Fails unless `line` is a success reply carrying `id` (or no id when nil).
    static func check(_ line: [UInt8], id: Int?) throws {
        let text = String(decoding: line, as: UTF8.self)
        let idOK = id.map { text.contains("\"id\": \($0)}") || text.contains("\"id\": \($0),") } ?? true
        guard text.hasPrefix(#"{"return""#), idOK else {
            throw QMPTestKitError(
                "unexpected reply (wanted a success for id \(id.map(String.init) ?? "none")): \(text.prefix(200))")
        }
    }
}

extension Duration {
    var microseconds: Double {
        let parts = components
        return Double(parts.seconds) * 1e6 + Double(parts.attoseconds) / 1e12
    }
}
