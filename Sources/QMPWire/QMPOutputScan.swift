/// The top-level members of one object of QEMU's *output*, found by its structure alone.
///
/// QEMU's writer is the only producer of these bytes and its output is valid JSON, so routing a
/// reply needs no grammar: one pass over the bytes that follows strings and nesting finds the member
/// values (the same ranges as ``QMPMessage/parseOutput(_:)``) at a fraction of the cost. Whatever the
/// writer would never print (an escape in a key, a known key twice, something that is not an object
/// of `"key": value` pairs) gives nil, and the caller falls back to the grammar for QEMU's error text.
enum QMPOutputScan {
    /// The members of the object that makes up all of `bytes` (whitespace around it allowed).
    static func members(of bytes: UnsafeBufferPointer<UInt8>) -> MessageOffsets? {
        guard let (offsets, end) = leadingObject(of: bytes), skipWhitespace(bytes, from: end) == bytes.count else {
            return nil
        }
        return offsets
    }

    /// The members of the object at the start of `bytes` and the index just past its closing brace;
    /// nil also when the object does not end within `bytes`.
    static func leadingObject(of bytes: UnsafeBufferPointer<UInt8>) -> (MessageOffsets, end: Int)? {
        leadingObject(of: bytes, rules: .writerOutput)
    }

    /// ``leadingObject(of:)`` with what is accepted between the structure's marks left to `rules`.
    /// One copy for all rules (not inlined, not cloned per caller): see ``ObjectScanRules``.
    @inline(never)
    static func leadingObject(
        of bytes: UnsafeBufferPointer<UInt8>, rules: ObjectScanRules
    ) -> (MessageOffsets, end: Int)? {
        let n = bytes.count
        guard n <= MessageOffsets.maxBytes else { return nil }
        var offsets = MessageOffsets()
        var i = 0
        guard skipWhitespace(bytes, &i, rules), i < n, bytes[i] == UInt8(ascii: "{") else { return nil }
        i += 1
        guard skipWhitespace(bytes, &i, rules) else { return nil }
        if i < n, bytes[i] == UInt8(ascii: "}") {
            offsets.closingBrace = i
            return (offsets, i + 1)
        }
        var previousValueEnd: Int?
        var idJustSeen = false
        while true {
            guard i < n, bytes[i] == UInt8(ascii: "\"") else { return nil }
            let keyStart = i
            if idJustSeen {
                offsets.keyStartAfterID = keyStart
                idJustSeen = false
            }
            let keyEnd = quoteOrBackslash(bytes, from: i + 1)
            guard keyEnd < n, bytes[keyEnd] == UInt8(ascii: "\"") else { return nil }
            let key = UnsafeBufferPointer(rebasing: bytes[(keyStart + 1)..<keyEnd])
            let member = QMPMessage.Member(key: key)
            guard rules.accepts(keyNaming: member) else { return nil }
            i = keyEnd + 1
            guard skipWhitespace(bytes, &i, rules), i < n, bytes[i] == UInt8(ascii: ":") else { return nil }
            i += 1
            guard skipWhitespace(bytes, &i, rules) else { return nil }
            let valueStart = i
            guard let valueEnd = rules.valueEnd(bytes, from: valueStart) else { return nil }
            if let member {
                guard offsets[member] == nil else { return nil }
                offsets[member] = valueStart..<valueEnd
                if member == .id {
                    offsets.idKeyStart = keyStart
                    offsets.valueEndBeforeID = previousValueEnd
                    idJustSeen = true
                }
            }
            offsets.lastValueEnd = valueEnd
            previousValueEnd = valueEnd
            i = valueEnd
            guard skipWhitespace(bytes, &i, rules), i < n else { return nil }
            if bytes[i] == UInt8(ascii: "}") {
                offsets.closingBrace = i
                return (offsets, i + 1)
            }
            guard bytes[i] == UInt8(ascii: ",") else { return nil }
            i += 1
            guard skipWhitespace(bytes, &i, rules) else { return nil }
        }
    }

    /// Moves `i` past whitespace; false when the run is longer than `rules` accept.
    @inline(__always)
    private static func skipWhitespace(
        _ bytes: UnsafeBufferPointer<UInt8>, _ i: inout Int, _ rules: ObjectScanRules
    ) -> Bool {
        let start = i
        i = skipWhitespace(bytes, from: i)
        return i - start <= rules.maxWhitespaceRun
    }

    @inline(__always)
    static func skipWhitespace(_ bytes: UnsafeBufferPointer<UInt8>, from start: Int) -> Int {
        var i = start
        while i < bytes.count, bytes[i].isJSONWhitespace {
            i += 1
        }
        return i
    }

    /// The index just past the value starting at `start`: a string, an object or array (to its matching
    /// bracket, strings followed), or a scalar token (number, keyword, `inf`, `nan`).
    static func valueEnd(_ bytes: UnsafeBufferPointer<UInt8>, from start: Int) -> Int? {
        let n = bytes.count
        guard start < n else { return nil }
        var i = start
        switch bytes[i] {
        case UInt8(ascii: "\""):
            return stringEnd(bytes, from: i)
        case UInt8(ascii: "{"), UInt8(ascii: "["):
            var depth = 0
            while i < n {
                switch bytes[i] {
                case UInt8(ascii: "\""):
                    guard let end = stringEnd(bytes, from: i) else { return nil }
                    i = end
                    continue
                case UInt8(ascii: "{"), UInt8(ascii: "["):
                    depth += 1
                case UInt8(ascii: "}"), UInt8(ascii: "]"):
                    depth -= 1
                    if depth == 0 { return i + 1 }
                default:
                    break
                }
                i += 1
            }
            return nil
        default:
            while i < n, isScalarByte(bytes[i]) { i += 1 }
            return i > start ? i : nil
        }
    }

    /// The index just past the closing quote of the string starting at `start`.
    @inline(__always)
    private static func stringEnd(_ bytes: UnsafeBufferPointer<UInt8>, from start: Int) -> Int? {
        var i = start + 1
        while true {
            i = quoteOrBackslash(bytes, from: i)
            guard i < bytes.count else { return nil }
            if bytes[i] == UInt8(ascii: "\"") { return i + 1 }
            i += 2  // past the escaped byte
        }
    }

    /// The index of the first `"` or `\` at or after `start` (at least `bytes.count` when none):
    /// eight bytes at a time while eight remain, since strings make up most of a reply.
    @inline(__always)
    static func quoteOrBackslash(_ bytes: UnsafeBufferPointer<UInt8>, from start: Int) -> Int {
        var i = start
        if let base = bytes.baseAddress {
            let ones: UInt64 = 0x0101_0101_0101_0101
            while i + 8 <= bytes.count {
                let word = UInt64(littleEndian: UnsafeRawPointer(base + i).loadUnaligned(as: UInt64.self))
                let quotes = word ^ (ones &* 0x22)
                let backslashes = word ^ (ones &* 0x5C)
                // High bits mark zero bytes of each; the lowest marked byte is exact (a borrow only
                // marks bytes above a real zero).
                let found = ((quotes &- ones) & ~quotes | (backslashes &- ones) & ~backslashes) & (ones &* 0x80)
                if found != 0 { return i + found.trailingZeroBitCount / 8 }
                i += 8
            }
        }
        while i < bytes.count, bytes[i] != UInt8(ascii: "\""), bytes[i] != UInt8(ascii: "\\") { i += 1 }
        return i
    }

    @inline(__always)
    private static func isScalarByte(_ byte: UInt8) -> Bool {
        switch byte {
        case UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "a")...UInt8(ascii: "z"),
            UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "-"), UInt8(ascii: "+"), UInt8(ascii: "."):
            true
        default:
            false
        }
    }
}
