/// One unit of client input, parsed when framing could do it in the same pass.
public enum QMPInputUnit: Hashable, Sendable {
    /// A unit that QEMU's grammar accepts as an object: what ``QMPMessage/parse(_:)`` gives for the
    /// unit ``QMPFramer`` delivers. `end` as in ``QMPFrame``.
    case parsed(QMPMessage, end: Int)
    /// A unit as ``QMPFramer/append(_:into:)`` delivers it, not parsed yet.
    case frame(QMPFrame)
}

extension QMPFramer {
    /// Units bigger than this go through the byte-wise lexer: far below QEMU's 64 MiB and 2 Mi token
    /// limits, so the grammar alone can stand in for the streamer's checks.
    static let parsedUnitLimit = 1 << 20

    /// Feeds the next bytes of the stream and hands the units they complete, in order, to `parsed`
    /// (a message with the stream offset just past it) or `frame`.
    ///
    /// Splits exactly as ``append(_:into:)-([QMPFrame])``. An object that starts between units and
    /// ends within these bytes is validated by QEMU's grammar and framed in the same pass: the grammar
    /// ends where the streamer's depth count ends, and it lexes as the streamer does. Anything else
    /// (a lexer or grammar error, an object not complete yet, whitespace runs the framer would shorten,
    /// limits other than QEMU's) goes through the byte-wise framer, unparsed. Units are handed over
    /// as they are found, not in an array, which spares a copy of each.
    public mutating func append(
        _ bytes: UnsafeRawBufferPointer, parsed: (QMPMessage, _ end: Int) -> Void, frame: (QMPFrame) -> Void
    ) {
        let all = bytes.bindMemory(to: UInt8.self)
        var i = 0
        if hasQEMULimits {
            while i < all.count, isBetweenUnits {
                let b = all[i]
                if b.isJSONWhitespace {
                    i += 1  // between units whitespace belongs to no unit
                    continue
                }
                let rest = UnsafeBufferPointer(rebasing: all[i..<min(all.count, i + Self.parsedUnitLimit)])
                guard b == UInt8(ascii: "{"), let (message, length) = QMPMessage.parseLeading(rest) else { break }
                i += length
                parsed(message, streamOffset + i)
            }
            skipUnits(byteCount: i)
        }
        guard i < all.count else { return }
        var frames: [QMPFrame] = []
        append(UnsafeRawBufferPointer(rebasing: bytes[i...]), into: &frames)
        for unit in frames { frame(unit) }
    }
}

extension QMPMessage {
    /// The object at the start of `bytes` when QEMU's grammar accepts it and the framer would deliver
    /// exactly its bytes (no whitespace run it would shorten), with its length.
    static func parseLeading(_ bytes: UnsafeBufferPointer<UInt8>) -> (QMPMessage, length: Int)? {
        guard let (top, end) = scanLeading(bytes) else { return nil }
        return (QMPMessage(bytes: Array(UnsafeBufferPointer(rebasing: bytes[..<end])), top: top), end)
    }

    /// ``parseLeading(_:)`` without making the message: its members' offsets and its length.
    static func scanLeading(_ bytes: UnsafeBufferPointer<UInt8>) -> (MessageOffsets, length: Int)? {
        // The plain command first: one pass with no tokens, for what the grammar would certainly accept.
        if let plain = QMPOutputScan.leadingObject(of: bytes, rules: .plainCommand) {
            return (plain.0, plain.end)
        }
        return scanLeadingByGrammar(bytes)
    }

    /// Out of line: the plain command's path stays short without the grammar's call inlined into it.
    @inline(never)
    private static func scanLeadingByGrammar(_ bytes: UnsafeBufferPointer<UInt8>) -> (MessageOffsets, length: Int)? {
        guard let (top, end, longestWhitespaceRun) = try? QMPGrammar.scanLeading(bytes), top.isObject,
            longestWhitespaceRun <= QMPFramer.maxWhitespaceRun
        else { return nil }
        return (top.offsets, end)
    }
}
