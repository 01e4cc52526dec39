import Logging
import QMPWire

#if canImport(Glibc)
import Glibc
#endif

/// One log line per event on standard error, as text or as JSON (`--log-format`).
///
/// Text: `2026-12-02T01:02:03.456Z info qmp-sidecar: client connected client=1 pid=4711`.
/// JSON: `{"time": "2026-12-02T01:02:03.456Z", "level": "info", "label": "qmp-sidecar", "message":
/// "client connected", "client": "1", "pid": "4711"}` — metadata keys as members, sorted, so a
/// journal or a log shipper can filter on them.
///
/// Each line is written with one `write(2)`, so lines of concurrent writers never interleave.
public struct SidecarLogHandler: LogHandler {
    /// How lines look.
    public enum Format: String, Sendable, CaseIterable {
        case text
        case json
    }

    public var logLevel: Logger.Level
    public var metadata: Logger.Metadata = [:]
    public var metadataProvider: Logger.MetadataProvider?
    private let label: String
    private let format: Format
    private let output: Int32
    private let clock: @Sendable () -> timespec

    /// - Parameters:
    ///   - output: the fd lines go to (standard error by default; tests pass a pipe).
    ///   - clock: wall-clock time of a line (tests pass a fixed one).
    public init(
        label: String, format: Format, level: Logger.Level, output: Int32 = STDERR_FILENO,
        clock: @escaping @Sendable () -> timespec = SidecarLogHandler.wallClock
    ) {
        self.label = label
        self.format = format
        self.logLevel = level
        self.output = output
        self.clock = clock
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    public func log(event: LogEvent) {
        var merged = metadata
        if let provided = metadataProvider?.get() { merged.merge(provided) { $1 } }
        if let own = event.metadata { merged.merge(own) { $1 } }
        var line = render(level: event.level, message: event.message.description, metadata: merged)
        line.append(0x0A)
        line.withUnsafeBytes { buffer in
            var offset = 0
            while offset < buffer.count {
                let written = Glibc.write(output, buffer.baseAddress! + offset, buffer.count - offset)
                if written < 0 && errno == EINTR { continue }
                guard written > 0 else { return }
                offset += written
            }
        }
    }

    /// The line for one event, without its newline.
    func render(level: Logger.Level, message: String, metadata: Logger.Metadata) -> [UInt8] {
        let time = Self.iso8601(clock())
        let keys = metadata.keys.sorted()
        switch format {
        case .text:
            var text = "\(time) \(level) \(label): \(message)"
            for key in keys { text += " \(key)=\(metadata[key]!)" }
            return Array(text.utf8)
        case .json:
            var bytes = Array(#"{"time": "#.utf8) + QMPJSON.quoted(time)
            func member(_ key: String, _ value: String) {
                bytes += Array(", ".utf8) + QMPJSON.quoted(key) + Array(": ".utf8) + QMPJSON.quoted(value)
            }
            member("level", level.rawValue)
            member("label", label)
            member("message", message)
            for key in keys where !["time", "level", "label", "message"].contains(key) {
                member(key, "\(metadata[key]!)")
            }
            bytes.append(UInt8(ascii: "}"))
            return bytes
        }
    }

    /// `CLOCK_REALTIME` now.
    @Sendable public static func wallClock() -> timespec {
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        return now
    }

    /// `2026-12-02T01:02:03.456Z` (UTC, milliseconds).
    static func iso8601(_ time: timespec) -> String {
        var seconds = time.tv_sec
        var parts = tm()
        gmtime_r(&seconds, &parts)
        func two(_ value: Int32) -> String { value < 10 ? "0\(value)" : "\(value)" }
        let millis = Int(time.tv_nsec / 1_000_000)
        let fraction = millis < 10 ? "00\(millis)" : millis < 100 ? "0\(millis)" : "\(millis)"
        return
            "\(parts.tm_year + 1900)-\(two(parts.tm_mon + 1))-\(two(parts.tm_mday))T\(two(parts.tm_hour)):\(two(parts.tm_min)):\(two(parts.tm_sec)).\(fraction)Z"
    }
}
