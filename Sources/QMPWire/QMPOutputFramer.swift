/// Splits QEMU's *output* stream into messages.
///
/// QEMU's writer emits one JSON object per message (on one line ending in `\r\n`, or over several
/// lines with `pretty=on`), with double-quoted strings only. Its output is not bound by its own
/// input limits (replies above 64 MiB or 2 Mi tokens exist) and may hold `inf`/`nan`, which its
/// parser rejects; so output is split by brace depth alone, without ``QMPFramer``'s rules.
/// Each message runs from its `{` to the matching `}`; bytes between messages (CR, LF) are dropped.
/// Parse a message with ``QMPMessage/parseOutput(_:)``.
public struct QMPOutputFramer: Sendable {
    private var pending: [UInt8] = []
    private var depth = 0
    private var inString = false
    private var escaped = false

    /// Creates a framer at the start of QEMU's output.
    public init() {}

    /// Whether the next byte is outside any message (nothing of one pending).
    var isBetweenMessages: Bool { depth == 0 }

    /// Feeds bytes read from QEMU; returns the complete messages, in order.
    public mutating func append(_ bytes: [UInt8]) -> [[UInt8]] {
        // Not through the generic version: across modules it runs unspecialized (metadata lookups
        // on every read).
        bytes.withUnsafeBytes { append($0) }
    }

    /// Feeds bytes read from QEMU (a read buffer); returns the complete messages, in order.
    public mutating func append(_ bytes: UnsafeRawBufferPointer) -> [[UInt8]] {
        var messages: [[UInt8]] = []
        feed(bytes, into: &messages)
        return messages
    }

    /// Feeds bytes read from QEMU (a read buffer) and appends the complete messages to `messages`.
    public mutating func append(_ bytes: UnsafeRawBufferPointer, into messages: inout [[UInt8]]) {
        feed(bytes, into: &messages)
    }

    /// Feeds bytes read from QEMU; returns the complete messages, in order.
    public mutating func append(_ bytes: some Collection<UInt8>) -> [[UInt8]] {
        var messages: [[UInt8]] = []
        let handled: Void? = bytes.withContiguousStorageIfAvailable { buffer in
            feed(UnsafeRawBufferPointer(buffer), into: &messages)
        }
        if handled == nil {
            Array(bytes).withUnsafeBytes { feed($0, into: &messages) }
        }
        return messages
    }

    /// Feeds bytes read from QEMU (a read buffer) and hands each complete message, in order, to
    /// `scanned` with its members found by ``QMPMessage/scanOutput(_:)``, or to `unscanned` when the
    /// scan does not find them (then ``QMPMessage/parseOutput(_:)`` says why).
    ///
    /// Splits exactly as ``append(_:into:)``. A message that lies whole in one read is framed and
    /// scanned in one pass; the rest goes through the byte-wise framer. Handing messages over as they
    /// are found, not in an array, spares a copy of each.
    public mutating func append(
        _ bytes: UnsafeRawBufferPointer, scanned: (QMPMessage) -> Void, unscanned: ([UInt8]) -> Void
    ) {
        let all = bytes.bindMemory(to: UInt8.self)
        var i = 0
        if depth == 0 {
            while i < all.count {
                let b = all[i]
                if b == UInt8(ascii: "{") {
                    // A scan that succeeds ends where the depth count ends (each value it skips is
                    // balanced); one that fails leaves the message to the byte-wise framer.
                    let rest = UnsafeBufferPointer(rebasing: all[i...])
                    guard let (offsets, end) = QMPOutputScan.leadingObject(of: rest) else { break }
                    scanned(QMPMessage(bytes: Array(UnsafeBufferPointer(rebasing: rest[..<end])), top: offsets))
                    i += end
                } else if b == UInt8(ascii: "[") {
                    break
                } else {
                    i += 1  // CR, LF, or anything else between messages: dropped, as the framer does
                }
            }
        }
        guard i < all.count else { return }
        var lines: [[UInt8]] = []
        feed(UnsafeRawBufferPointer(rebasing: bytes[i...]), into: &lines)
        for line in lines {
            if let message = QMPMessage.scanOutput(line) { scanned(message) } else { unscanned(line) }
        }
    }

    private mutating func feed(_ buffer: UnsafeRawBufferPointer, into messages: inout [[UInt8]]) {
        let bytes = buffer.bindMemory(to: UInt8.self)
        var start = depth > 0 ? 0 : -1
        var i = 0
        while i < bytes.count {
            let b = bytes[i]
            if inString {
                if escaped {
                    escaped = false
                } else if b == 0x5C {
                    escaped = true
                } else if b == 0x22 {
                    inString = false
                }
            } else if b == 0x22 {
                if depth > 0 { inString = true }
            } else if b == UInt8(ascii: "{") || b == UInt8(ascii: "[") {
                if depth == 0 { start = i }
                depth += 1
            } else if (b == UInt8(ascii: "}") || b == UInt8(ascii: "]")) && depth > 0 {
                depth -= 1
                if depth == 0 {
                    if pending.isEmpty {
                        messages.append(Array(UnsafeBufferPointer(rebasing: bytes[max(start, 0)...i])))
                    } else {
                        pending.append(contentsOf: UnsafeBufferPointer(rebasing: bytes[max(start, 0)...i]))
                        messages.append(pending)
                        pending = []  // handed over: no copy-on-write of a shared buffer
                    }
                    start = -1
                }
            }
            i += 1
        }
        if depth > 0 {
            pending.append(contentsOf: UnsafeBufferPointer(rebasing: bytes[max(start, 0)...]))
        }
    }
}
