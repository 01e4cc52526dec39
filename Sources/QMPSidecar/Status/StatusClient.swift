import QMPRuntime
import QMPWire

#if canImport(Glibc)
import Glibc
#endif

/// A blocking QMP client for `qmp-sidecar status`: an ordinary client of the sidecar (greeting,
/// `qmp_capabilities`, commands, events), nothing privileged.
///
/// - Important: one thread; the socket closes on deinit.
public final class StatusClient {
    private let fd: Int32
    private var framer = QMPOutputFramer()
    private var messages: [JSONValue] = []
    private var events: [JSONValue] = []
    private var nextID = 1
    private let path: String

    /// Connects to the sidecar's client socket and negotiates.
    ///
    /// - Parameter timeout: longest wait for any one answer.
    public init(path: String, timeout: Duration = .seconds(10)) throws(SidecarError) {
        self.path = path
        do {
            fd = try Sockets.connect(to: .unix(path: path))
        } catch {
            throw SidecarError(
                .upstream, "cannot connect to \(path): \(error.message) (is qmp-sidecar listening there? --listen)")
        }
        let greeting = try next(timeout: timeout)
        guard greeting["QMP"] != nil else {
            throw SidecarError(.upstream, "\(path) did not greet like QMP: is it a QMP socket?")
        }
        _ = try execute("qmp_capabilities", timeout: timeout)
    }

    deinit { close(fd) }

    /// Runs `name` and returns its `return` value.
    ///
    /// - Throws: ``SidecarError`` with QEMU's error class and text, or on timeout / disconnect.
    public func execute(_ name: String, timeout: Duration = .seconds(10)) throws(SidecarError) -> JSONValue {
        let id = nextID
        nextID += 1
        try send(Array("{\"execute\": ".utf8) + QMPJSON.quoted(name) + Array(", \"id\": \(id)}\r\n".utf8))
        while true {
            let message = try next(timeout: timeout)
            if message["event"] != nil {
                events.append(message)
                continue
            }
            guard message["id"]?.int64Value == Int64(id) else { continue }
            if let value = message["return"] { return value }
            let error = message["error"]
            throw SidecarError(
                .upstream,
                "\(name) failed: \(error?["class"]?.stringValue ?? "?"): \(error?["desc"]?.stringValue ?? "?")")
        }
    }

    /// The next event; nil timeout waits for ever.
    public func nextEvent(timeout: Duration? = nil) throws(SidecarError) -> JSONValue {
        if !events.isEmpty { return events.removeFirst() }
        while true {
            let message = try next(timeout: timeout)
            if message["event"] != nil { return message }
        }
    }

    private func next(timeout: Duration?) throws(SidecarError) -> JSONValue {
        let deadline = timeout.map { ContinuousClock.now + $0 }
        while messages.isEmpty {
            var entry = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            var wait: Int32 = -1
            if let deadline {
                let left = deadline - .now
                guard left > .zero else { throw SidecarError(.upstream, "no answer from \(path) in time") }
                wait = Int32(
                    clamping: left.components.seconds * 1000 + left.components.attoseconds / 1_000_000_000_000_000 + 1)
            }
            let ready = poll(&entry, 1, wait)
            if ready < 0 && errno == EINTR { continue }
            guard ready > 0 else { continue }
            var buffer = [UInt8](repeating: 0, count: 65536)
            let count = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if count < 0 && (errno == EAGAIN || errno == EINTR) { continue }
            guard count > 0 else { throw SidecarError(.upstreamClosed, "\(path) closed the connection") }
            for frame in framer.append(buffer[..<count]) {
                if let value = try? JSONValue(parsing: frame) { messages.append(value) }
            }
        }
        return messages.removeFirst()
    }

    private func send(_ bytes: [UInt8]) throws(SidecarError) {
        var offset = 0
        while offset < bytes.count {
            let count = bytes.withUnsafeBytes {
                Glibc.send(fd, $0.baseAddress! + offset, $0.count - offset, Int32(MSG_NOSIGNAL))
            }
            if count < 0 && errno == EAGAIN {
                var entry = pollfd(fd: fd, events: Int16(POLLOUT), revents: 0)
                _ = poll(&entry, 1, 1000)
                continue
            }
            if count < 0 && errno == EINTR { continue }
            guard count > 0 else { throw SidecarError(.upstreamClosed, "\(path) closed the connection") }
            offset += count
        }
    }
}
