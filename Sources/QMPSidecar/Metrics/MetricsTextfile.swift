import Logging
import QMPRuntime

#if canImport(Glibc)
import Glibc
#endif

/// Writes the metrics to a Prometheus textfile (`--metrics-file`), node_exporter's textfile
/// collector style: the whole file replaced atomically (a temporary file beside it, then
/// `rename(2)`), and only when its text changed.
///
/// Nothing runs while nothing happens: ``changed()`` arms one timer (``delay``) if none is armed; when
/// it fires the text is rendered and written if it differs from the last written. An idle sidecar
/// has no timer and makes no system call.
///
/// - Important: reactor thread only.
final class MetricsTextfile {
    let path: String
    /// How long after a change the file is written: changes in between share one write.
    let delay: Duration
    private let reactor: Reactor
    private let logger: Logger
    private let render: () -> [UInt8]
    private var timer: Reactor.TimerID?
    private var written: [UInt8]?
    private var warned = false
    /// How many times the file was replaced (for tests and the log).
    private(set) var writes = 0

    /// - Parameter render: the file's text now.
    init(path: String, delay: Duration, reactor: Reactor, logger: Logger, render: @escaping () -> [UInt8]) {
        self.path = path
        self.delay = delay
        self.reactor = reactor
        self.logger = logger
        self.render = render
    }

    /// Something a metric shows may have changed: write within ``delay``. Costs a comparison when a
    /// write is already due.
    @inline(__always)
    func changed() {
        if timer == nil { armTimer() }
    }

    /// Out of line: the clock's types are resilient, and a caller that inlined this would ask the
    /// runtime for their layout on every call, on every read.
    @inline(never)
    private func armTimer() {
        timer = reactor.schedule(after: delay) { [unowned self] in
            self.timer = nil
            self.writeIfChanged()
        }
    }

    /// Writes now (at start and at shutdown), cancelling a pending write.
    func flush() {
        if let timer { reactor.cancel(timer) }
        timer = nil
        writeIfChanged()
    }

    private func writeIfChanged() {
        let text = render()
        guard text != written else { return }
        do {
            try Self.replace(path, with: text)
            written = text
            writes += 1
        } catch {
            guard !warned else { return }
            warned = true
            logger.warning(
                "cannot write the metrics file: check that its directory exists and is writable",
                metadata: ["path": "\(path)", "error": "\(error)"])
        }
    }

    /// Replaces `path` with `bytes` atomically: readers see the old file or the new one, whole.
    static func replace(_ path: String, with bytes: [UInt8]) throws(RuntimeError) {
        let temporary = "\(path).tmp.\(getpid())"
        let fd = open(temporary, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw RuntimeError.systemCall("open", context: temporary) }
        var offset = 0
        while offset < bytes.count {
            let count = bytes.withUnsafeBytes { write(fd, $0.baseAddress! + offset, bytes.count - offset) }
            if count < 0 && errno == EINTR { continue }
            guard count > 0 else {
                let error = errno
                close(fd)
                unlink(temporary)
                throw RuntimeError.systemCall("write", errno: error, context: temporary)
            }
            offset += count
        }
        close(fd)
        guard rename(temporary, path) == 0 else {
            let error = errno
            unlink(temporary)
            throw RuntimeError.systemCall("rename", errno: error, context: "\(temporary) to \(path)")
        }
    }
}
