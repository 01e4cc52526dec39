/// What the one-pass object scan (``QMPOutputScan/leadingObject(of:rules:)``) accepts between the
/// marks of an object's structure: its keys, its values and its whitespace runs.
///
/// A value, not a type parameter: both directions share one copy of the scan, which is one stretch
/// of code to fetch after each wake-up instead of two.
enum ObjectScanRules {
    /// QEMU's writer: any key, any value found by its structure alone, any whitespace.
    case writerOutput
    /// The command almost every client sends, recognised without the grammar (header prediction):
    /// a flat object of known members whose values are strings of printable ASCII without escapes,
    /// integers, `true`, `false` or `null`. Everything here is valid for QEMU's grammar, with the
    /// same member ranges; anything else (escapes, single quotes, UTF-8, numbers with a fraction,
    /// nested values, unknown or repeated keys, long whitespace runs) gives nil, and the caller asks
    /// the grammar, which decides and words the error.
    case plainCommand

    /// Whether a key is accepted, given the top-level member it names, if any.
    @inline(__always)
    func accepts(keyNaming member: QMPMessage.Member?) -> Bool {
        self == .writerOutput || member != nil
    }

    /// The index just past the value starting at `start`; nil when the value is not accepted.
    @inline(__always)
    func valueEnd(_ bytes: UnsafeBufferPointer<UInt8>, from start: Int) -> Int? {
        switch self {
        case .writerOutput: QMPOutputScan.valueEnd(bytes, from: start)
        case .plainCommand: Self.plainValueEnd(bytes, from: start)
        }
    }

    /// The longest run of whitespace accepted between two tokens. For plain commands it is shorter
    /// than ``QMPFramer``'s limit, so the framer never shortens a run of what is accepted.
    @inline(__always)
    var maxWhitespaceRun: Int {
        self == .writerOutput ? .max : 16
    }

    private static func plainValueEnd(_ bytes: UnsafeBufferPointer<UInt8>, from start: Int) -> Int? {
        guard start < bytes.count else { return nil }
        switch bytes[start] {
        case UInt8(ascii: "\""): return plainStringEnd(bytes, start)
        case UInt8(ascii: "-"), UInt8(ascii: "0")...UInt8(ascii: "9"): return integerEnd(bytes, start)
        case UInt8(ascii: "t"): return keywordEnd(bytes, start, "true")
        case UInt8(ascii: "f"): return keywordEnd(bytes, start, "false")
        case UInt8(ascii: "n"): return keywordEnd(bytes, start, "null")
        default: return nil
        }
    }

    /// The end of a double-quoted string of printable ASCII without escapes.
    @inline(__always)
    private static func plainStringEnd(_ bytes: UnsafeBufferPointer<UInt8>, _ start: Int) -> Int? {
        var i = start + 1
        while i < bytes.count, bytes[i] >= 0x20, bytes[i] < 0x7F, bytes[i] != 0x22, bytes[i] != 0x5C { i += 1 }
        return i < bytes.count && bytes[i] == 0x22 ? i + 1 : nil
    }

    /// The end of an integer: an optional minus, then `0` alone or digits without a leading zero.
    @inline(__always)
    private static func integerEnd(_ bytes: UnsafeBufferPointer<UInt8>, _ start: Int) -> Int? {
        var i = start
        if bytes[i] == UInt8(ascii: "-") { i += 1 }
        guard i < bytes.count, bytes[i].isDigit else { return nil }
        // A leading zero stands alone: the byte after it must end the value.
        if bytes[i] == UInt8(ascii: "0") { return i + 1 }
        while i < bytes.count, bytes[i].isDigit { i += 1 }
        return i
    }

    /// The end of `word` at `start`. The scan then requires whitespace, `,` or `}`, so `truex`
    /// is refused.
    private static func keywordEnd(_ bytes: UnsafeBufferPointer<UInt8>, _ start: Int, _ word: StaticString) -> Int? {
        let count = word.utf8CodeUnitCount
        guard bytes.count - start >= count else { return nil }
        for k in 0..<count where bytes[start + k] != word.utf8Start[k] { return nil }
        return start + count
    }
}

extension UInt8 {
    @inline(__always)
    fileprivate var isDigit: Bool { self >= UInt8(ascii: "0") && self <= UInt8(ascii: "9") }
}
