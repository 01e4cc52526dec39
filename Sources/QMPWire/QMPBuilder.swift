#if canImport(Glibc)
import Glibc
#endif

/// A QMP event timestamp: wall-clock seconds and microseconds, as QEMU sends them.
public struct QMPTimestamp: Hashable, Sendable {
    public var seconds: Int64
    public var microseconds: Int64

    public init(seconds: Int64, microseconds: Int64) {
        self.seconds = seconds
        self.microseconds = microseconds
    }

    /// The current wall-clock time (`CLOCK_REALTIME`).
    public static func now() -> QMPTimestamp {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        return QMPTimestamp(seconds: Int64(ts.tv_sec), microseconds: Int64(ts.tv_nsec / 1000))
    }
}

/// Builds the messages the sidecar emits itself, formatted exactly as QEMU 7.2 formats its own:
/// one line ending in `\r\n`, `": "` and `", "` separators, members in QDict order.
///
/// QEMU's orders, as its QDict iterates them: `{"return": ..., "id": ...}`,
/// `{"id": ..., "error": {"class": ..., "desc": ...}}`,
/// `{"timestamp": {"seconds": ..., "microseconds": ...}, "event": ..., "data": ...}`.
public enum QMPBuilder {
    /// One QEMU-style line for an object with these members (insertion order as QEMU inserts them).
    static func line(_ members: [(String, [UInt8])]) -> [UInt8] {
        let keys = members.map { ModifiedUTF8.bytes($0.0) }
        var out: [UInt8] = [UInt8(ascii: "{")]
        for (n, index) in QMPJSON.qdictOrder(keys).enumerated() {
            if n > 0 { out.append(contentsOf: ", ".utf8) }
            QMPJSON.writeQuoted(members[index].0, into: &out)
            out.append(contentsOf: ": ".utf8)
            out.append(contentsOf: members[index].1)
        }
        out.append(contentsOf: "}\r\n".utf8)
        return out
    }

    /// The id bytes QEMU would echo for `id` (the value as the client sent it).
    private static func echo(_ id: [UInt8]?) -> [UInt8]? {
        id.map { QMPJSON.echoed($0) ?? $0 }
    }

    /// An error reply: `{"id": <id>, "error": {"class": <class>, "desc": <desc>}}\r\n`.
    ///
    /// - Parameters:
    ///   - class: the error class (`GenericError`, `CommandNotFound`, ...).
    ///   - desc: the human-readable text.
    ///   - id: the id value exactly as the client sent it (echoed as QEMU echoes it), or `nil`.
    public static func error(class errorClass: String, desc: String, id: [UInt8]?) -> [UInt8] {
        var descBytes: [UInt8] = []
        QMPJSON.writeQuoted(desc, into: &descBytes)
        return error(class: errorClass, quotedDesc: descBytes, echoedID: echo(id))
    }

    /// ``error(class:desc:id:)`` for an id already in the form QEMU echoes it.
    public static func error(class errorClass: String, desc: String, echoedID: [UInt8]?) -> [UInt8] {
        error(class: errorClass, quotedDesc: QMPJSON.quoted(desc), echoedID: echoedID)
    }

    /// The reply QEMU sends for a unit it rejected before dispatch (no id).
    public static func error(_ input: QMPInputError) -> [UInt8] {
        var descBytes: [UInt8] = []
        QMPJSON.writeQuoted(rawBytes: input.descBytes, into: &descBytes)
        return error(class: "GenericError", quotedDesc: descBytes, echoedID: nil)
    }

    private static func error(class errorClass: String, quotedDesc: [UInt8], echoedID id: [UInt8]?) -> [UInt8] {
        var classBytes: [UInt8] = []
        QMPJSON.writeQuoted(errorClass, into: &classBytes)
        var body: [UInt8] = []
        let inner: [(String, [UInt8])] = [("class", classBytes), ("desc", quotedDesc)]
        body = line(inner)
        body.removeLast(2)
        var members: [(String, [UInt8])] = [("error", body)]
        if let id { members.append(("id", id)) }
        return line(members)
    }

    /// A success reply: `{"return": <value>, "id": <id>}\r\n`.
    ///
    /// - Parameters:
    ///   - returnValue: the return value (an empty object for commands without one).
    ///   - id: the id value exactly as the client sent it, or `nil`.
    public static func reply(returnValue: JSONValue, id: [UInt8]?) -> [UInt8] {
        reply(returnValue: returnValue, echoedID: echo(id))
    }

    /// ``reply(returnValue:id:)`` for an id already in the form QEMU echoes it.
    public static func reply(returnValue: JSONValue, echoedID: [UInt8]?) -> [UInt8] {
        var members: [(String, [UInt8])] = [("return", returnValue.qemuBytes)]
        if let echoedID { members.append(("id", echoedID)) }
        return line(members)
    }

    /// An event: `{"timestamp": {"seconds": s, "microseconds": us}, "event": <name>, "data": <data>}\r\n`.
    ///
    /// - Parameters:
    ///   - name: the event name.
    ///   - data: the event data (omitted when `nil`, as QEMU does for events without data).
    ///   - at: the timestamp; ``QMPTimestamp/now()`` for the current time.
    public static func event(name: String, data: JSONValue?, at timestamp: QMPTimestamp) -> [UInt8] {
        let stamp = line([
            ("seconds", Array(String(timestamp.seconds).utf8)),
            ("microseconds", Array(String(timestamp.microseconds).utf8)),
        ]).dropLast(2)
        var nameBytes: [UInt8] = []
        QMPJSON.writeQuoted(name, into: &nameBytes)
        var members: [(String, [UInt8])] = [("event", nameBytes)]
        if let data { members.append(("data", data.qemuBytes)) }
        members.append(("timestamp", Array(stamp)))
        return line(members)
    }

    /// Any value as one QEMU-formatted line ending in `\r\n` (e.g. a greeting).
    public static func line(_ value: JSONValue) -> [UInt8] {
        value.qemuBytes + [0x0D, 0x0A]
    }
}
