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
