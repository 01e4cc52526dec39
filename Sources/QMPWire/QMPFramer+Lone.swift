// The express lane's framing: a read that holds exactly one whole message, the common case of a
// client waiting for each reply and of QEMU answering one command.

extension QMPFramer {
    /// The object that `bytes` hold when they are one object followed by whitespace only, starting
    /// between units, as ``append(_:parsed:frame:)`` would hand it to `parsed`, as a view of `bytes`
    /// (no copy). Nil for anything else. Consumes nothing: call ``consumeLoneObject(byteCount:)`` to
    /// take it.
    public func loneObject(_ bytes: UnsafeRawBufferPointer) -> QMPMessageView? {
        let all = bytes.bindMemory(to: UInt8.self)
        guard hasQEMULimits, isBetweenUnits, !all.isEmpty, all[0] == UInt8(ascii: "{"),
            all.count <= Self.parsedUnitLimit, let (top, length) = QMPMessage.scanLeading(all)
        else { return nil }
        for b in all[length...] where !b.isJSONWhitespace { return nil }
        return QMPMessageView(bytes: UnsafeBufferPointer(rebasing: all[..<length]), top: top)
    }

    /// Takes the `count` bytes that ``loneObject(_:)`` accepted, as ``append(_:parsed:frame:)``
    /// would.
    public mutating func consumeLoneObject(byteCount count: Int) {
        skipUnits(byteCount: count)
    }
}

/// Where the id is in QEMU's reply to a command (see ``QMPOutputFramer/loneReply(_:id:)``).
public struct LoneReply: Sendable {
    /// The id member with the comma before it: `, "id": 12`.
    public let member: Range<Int>
    /// The id's value: `12`.
    public let value: Range<Int>
    /// Just past the closing brace.
    public let end: Int
}

extension QMPOutputFramer {
    /// A read that is exactly QEMU's successful reply to the sidecar id `id`, as QEMU's writer puts
    /// it: `{"return": VALUE, "id": ID}` and line ends. Header prediction: the bytes are compared
    /// with what such a reply must be, without scanning `VALUE`. Nil for anything else, changing
    /// nothing (the caller scans it).
    ///
    /// The match is exact because QEMU's output is one valid object per line and the read holds one
    /// line: the last `}` closes the top-level object, so the number before it is the value of the
    /// last top-level member; the quote before `id` follows a space, so it opens the key (an escaped
    /// quote follows a backslash), and the key is `id`; the object's first key is `return`.
    public func loneReply(_ bytes: UnsafeRawBufferPointer, id: UInt64) -> LoneReply? {
        let all = bytes.bindMemory(to: UInt8.self)
        guard isBetweenMessages, all.count > Self.replyHead.count,
            ShortBytes.equal(all.baseAddress!, Self.replyHead.start, count: Self.replyHead.count)
        else { return nil }
        var end = all.count
        while end > 0, all[end - 1] == 0x0D || all[end - 1] == 0x0A || all[end - 1] == 0x20 { end -= 1 }
        // One line: QEMU ends each message with one, and its strings hold no raw line feed. (A read
        // may hold several messages; a pretty-printed message spans lines.)
        guard end > Self.replyHead.count, all[end - 1] == UInt8(ascii: "}"),
            !ShortBytes.contains(0x0A, all.baseAddress!, count: end)
        else { return nil }
        // The id's digits, last first.
        var i = end - 1
        var rest = id
        repeat {
            i -= 1
            guard i > Self.replyHead.count, all[i] == UInt8(truncatingIfNeeded: rest % 10) + 0x30 else { return nil }
            rest /= 10
        } while rest > 0
        let valueStart = i
        let memberStart = valueStart - Self.idJoiner.count
        guard memberStart > Self.replyHead.count,
            ShortBytes.equal(all.baseAddress! + memberStart, Self.idJoiner.start, count: Self.idJoiner.count)
        else { return nil }
        return LoneReply(member: memberStart..<(end - 1), value: valueStart..<(end - 1), end: end)
    }

    private static let replyHead = StaticBytes(#"{"return": "#)
    private static let idJoiner = StaticBytes(#", "id": "#)
}

/// A static string's UTF-8 bytes, for comparing without making a `String`.
private struct StaticBytes: Sendable {
    let text: StaticString
    init(_ text: StaticString) { self.text = text }
    var count: Int { text.utf8CodeUnitCount }
    var start: UnsafeRawPointer { UnsafeRawPointer(text.utf8Start) }
}
