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

extension QMPOutputFramer {
    /// The message that `bytes` hold when, between messages, they are one object the output scan
    /// reads followed by CR, LF or spaces only: what ``append(_:scanned:unscanned:)`` would hand to
    /// `scanned`, leaving the framer as it is, as a view of `bytes` (no copy). Nil for anything else.
    public func loneMessage(_ bytes: UnsafeRawBufferPointer) -> QMPMessageView? {
        let all = bytes.bindMemory(to: UInt8.self)
        guard isBetweenMessages, !all.isEmpty, all[0] == UInt8(ascii: "{"),
            let (offsets, end) = QMPOutputScan.leadingObject(of: all)
        else { return nil }
        for b in all[end...] where b != 0x0D && b != 0x0A && b != 0x20 { return nil }
        return QMPMessageView(bytes: UnsafeBufferPointer(rebasing: all[..<end]), top: offsets)
    }
}
