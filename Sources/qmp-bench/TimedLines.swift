import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// Lines read from one fd by a thread of their own, each stamped with `CLOCK_MONOTONIC` the moment
/// its `read` returned: what a client blocked on the socket would see, whatever the main thread is
/// doing.
///
/// - Important: owns `fd` (closed when the reader ends, at EOF).
final class TimedLines: @unchecked Sendable {
    struct Line {
        var text: String
        /// `CLOCK_MONOTONIC` ns.
        var time: UInt64
    }

    let fd: Int32
    private let lock = NSCondition()
    private var lines: [Line] = []
    private var ended = false

    init(fd: Int32) {
        self.fd = fd
        let thread = Thread { [self] in self.readLoop() }
        thread.stackSize = 1 << 20
        thread.start()
    }

    /// The next line, waiting up to `timeout` seconds; nil on timeout or EOF.
    func next(timeout: Double) -> Line? {
        let deadline = Date(timeIntervalSinceNow: timeout)
        lock.lock()
        defer { lock.unlock() }
        while lines.isEmpty && !ended {
            if !lock.wait(until: deadline) { break }
        }
        return lines.isEmpty ? nil : lines.removeFirst()
    }

    /// The next line containing `text`, skipping others; nil on timeout or EOF.
    func next(containing text: String, timeout: Double) -> Line? {
        let deadline = Date(timeIntervalSinceNow: timeout)
        while let line = next(timeout: max(0, deadline.timeIntervalSinceNow)) {
            if line.text.contains(text) { return line }
        }
        return nil
    }

    private func readLoop() {
        var buffer = [UInt8](repeating: 0, count: 1 << 16)
        var pending: [UInt8] = []
        while true {
            let count = read(fd, &buffer, buffer.count)
            if count < 0 && errno == EINTR { continue }
            guard count > 0 else { break }
            let time = Self.monotonicNow()
            pending += buffer[..<count]
            var complete: [Line] = []
            while let newline = pending.firstIndex(of: 0x0A) {
                var line = pending[..<newline]
                if line.last == 0x0D { line = line.dropLast() }
                complete.append(Line(text: String(decoding: line, as: UTF8.self), time: time))
                pending.removeSubrange(...newline)
            }
            if !complete.isEmpty {
                lock.lock()
                lines += complete
                lock.broadcast()
                lock.unlock()
            }
        }
        close(fd)
        lock.lock()
        ended = true
        lock.broadcast()
        lock.unlock()
    }

    /// `CLOCK_MONOTONIC` in nanoseconds (the clock the stand-in stamps its closes with).
    static func monotonicNow() -> UInt64 {
        var now = timespec()
        clock_gettime(CLOCK_MONOTONIC, &now)
        return UInt64(now.tv_sec) * 1_000_000_000 + UInt64(now.tv_nsec)
    }
}
