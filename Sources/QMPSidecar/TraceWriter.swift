import Dispatch
import QMPProxy
import QMPRuntime
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// Writes the `--trace` file (docs/ARCHITECTURE.md "Trace format") off the reactor's critical path.
///
/// ``record(_:)`` formats a line and appends it to an in-memory buffer under a lock; a writer thread of
/// its own (a second, timer-less reactor, woken through its eventfd only when there is something to
/// write) drains the buffer to the file. Not a dispatch queue: libdispatch's worker pool would wake
/// the process every second. The reactor never waits for the disk: if the writer falls more than
/// ``maxBuffered`` bytes behind, lines are dropped and counted (reported at close).
public final class TraceWriter: Sendable {
    private struct State {
        var buffer: [UInt8] = []
        var flushScheduled = false
        var dropped = 0
    }

    private let fd: Int32
    private let start = ContinuousClock.now
    private let state = Mutex(State())
    private let writer: ReactorThread
    /// Buffered bytes beyond which lines are dropped rather than letting memory grow.
    public let maxBuffered = 64 << 20

    /// Opens (truncates) `path`.
    ///
    /// - Throws: ``SidecarError`` naming the path.
    public init(path: String) throws(SidecarError) {
        fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_APPEND, 0o600)
        if fd < 0 {
            throw SidecarError(
                .trace, "cannot open trace file \(path): \(String(cString: strerror(errno))); choose a writable path")
        }
        do {
            writer = try ReactorThread.start(name: "qmp-trace") { _ in }
        } catch {
            _ = Glibc.close(fd)
            throw SidecarError(.trace, "cannot start the trace writer thread: \(error)")
        }
    }

    /// Formats and queues one record. Never blocks on I/O.
    public func record(_ record: ProxyRouter.TraceRecord) {
        let micros = (ContinuousClock.now - start).components
        let t = micros.seconds * 1_000_000 + micros.attoseconds / 1_000_000_000_000
        var line = Array(
            "{\"t\": \(t), \"dir\": \"\(record.direction.rawValue)\", \"client\": \(record.client), \"fds\": \(record.fds), \"msg\": "
                .utf8)
        Self.appendJSONString(record.message, to: &line)
        line.append(contentsOf: "}\n".utf8)
        let schedule = state.withLock { state -> Bool in
            guard state.buffer.count + line.count <= maxBuffered else {
                state.dropped += 1
                return false
            }
            state.buffer.append(contentsOf: line)
            if state.flushScheduled { return false }
            state.flushScheduled = true
            return true
        }
        if schedule {
            _ = writer.handle.execute { _ in self.drain() }
        }
    }

    private func drain() {
        while true {
            let chunk = state.withLock { state -> [UInt8] in
                let chunk = state.buffer
                state.buffer = []
                if chunk.isEmpty { state.flushScheduled = false }
                return chunk
            }
            if chunk.isEmpty { return }
            chunk.withUnsafeBytes { raw in
                var offset = 0
                while offset < raw.count {
                    let n = write(fd, raw.baseAddress! + offset, raw.count - offset)
                    if n < 0 {
                        if errno == EINTR { continue }
                        return
                    }
                    offset += n
                }
            }
        }
    }

    /// Writes what is buffered and closes the file. Returns the number of dropped lines.
    @discardableResult
    public func close() -> Int {
        let drained = DispatchSemaphore(value: 0)  // a futex: starts no dispatch worker
        if writer.handle.execute({ reactor in
            self.drain()
            reactor.stop()
            drained.signal()
        }) {
            drained.wait()
        } else {
            drain()
        }
        _ = Glibc.close(fd)
        return state.withLock { $0.dropped }
    }

    /// Appends `bytes` (UTF-8 text) as a JSON string literal.
    static func appendJSONString(_ bytes: [UInt8], to out: inout [UInt8]) {
        out.append(0x22)
        for byte in bytes {
            switch byte {
            case 0x22: out.append(contentsOf: [0x5C, 0x22])
            case 0x5C: out.append(contentsOf: [0x5C, 0x5C])
            case 0x0A: out.append(contentsOf: [0x5C, UInt8(ascii: "n")])
            case 0x0D: out.append(contentsOf: [0x5C, UInt8(ascii: "r")])
            case 0x09: out.append(contentsOf: [0x5C, UInt8(ascii: "t")])
            case 0..<0x20:
                let hex = Array("0123456789abcdef".utf8)
                out.append(contentsOf: Array("\\u00".utf8) + [hex[Int(byte >> 4)], hex[Int(byte & 0xF)]])
            default: out.append(byte)
            }
        }
        out.append(0x22)
    }
}
