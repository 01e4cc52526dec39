import Glibc

/// A JSON value the mock writes, serialized byte-for-byte the way QEMU 7.2 does.
///
/// QEMU keeps objects in a `QDict`, a hash table of 512 buckets; its JSON writer walks the buckets in
/// order and, inside a bucket, the most recently inserted key first. So `{"return": ..., "id": ...}`
/// but `{"id": ..., "error": ...}`. ``serialized()`` reproduces that order for ``object(_:)`` so that
/// the mock's replies and events are identical to QEMU's, not merely equivalent. ``raw(_:)`` carries
/// bytes that must be reproduced verbatim (an id as QEMU echoes it, a canned reply from a scenario).
public enum MockJSON: Sendable, Equatable {
    case null
    case bool(Bool)
    case int(Int64)
    case double(Double)
    case string(String)
    case array([MockJSON])
    /// Members in insertion order (QEMU's insertion order, which decides the output order).
    case object([(String, MockJSON)])
    /// Already-serialized JSON, written as is.
    case raw([UInt8])

    public static func == (lhs: MockJSON, rhs: MockJSON) -> Bool {
        switch (lhs, rhs) {
        case (.null, .null): return true
        case (.bool(let a), .bool(let b)): return a == b
        case (.int(let a), .int(let b)): return a == b
        case (.double(let a), .double(let b)): return a == b
        case (.string(let a), .string(let b)): return a == b
        case (.array(let a), .array(let b)): return a == b
        case (.object(let a), .object(let b)):
            return a.count == b.count && zip(a, b).allSatisfy { $0.0 == $1.0 && $0.1 == $1.1 }
        case (.raw(let a), .raw(let b)): return a == b
        default: return false
        }
    }

    /// The member `key` of an object, or nil.
    public subscript(key: String) -> MockJSON? {
        guard case .object(let members) = self else { return nil }
        return members.first { $0.0 == key }?.1
    }

    /// The string payload, or nil.
    public var stringValue: String? {
        if case .string(let s) = self { return s }
        return nil
    }

    /// QEMU's compact output (`{"a": 1, "b": [1, 2]}`), without line terminator.
    public func serialized() -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(64)
        write(into: &out)
        return out
    }

    /// One QMP output line: the serialized value followed by CR LF.
    public func line() -> [UInt8] {
        var out = serialized()
        out.append(13)
        out.append(10)
        return out
    }

    private func write(into out: inout [UInt8]) {
        switch self {
        case .null: out.append(contentsOf: Array("null".utf8))
        case .bool(let b): out.append(contentsOf: Array((b ? "true" : "false").utf8))
        case .int(let i): out.append(contentsOf: Array(String(i).utf8))
        case .double(let d): out.append(contentsOf: Array(QEMUJSONText.double(d).utf8))
        case .string(let s): QEMUJSONText.quote(s, into: &out)
        case .raw(let bytes): out.append(contentsOf: bytes)
        case .array(let items):
            out.append(UInt8(ascii: "["))
            for (i, item) in items.enumerated() {
                if i > 0 { out.append(contentsOf: [UInt8(ascii: ","), UInt8(ascii: " ")]) }
                item.write(into: &out)
            }
            out.append(UInt8(ascii: "]"))
        case .object(let members):
            out.append(UInt8(ascii: "{"))
            for (i, (key, value)) in QEMUJSONText.qdictOrder(members).enumerated() {
                if i > 0 { out.append(contentsOf: [UInt8(ascii: ","), UInt8(ascii: " ")]) }
                QEMUJSONText.quote(key, into: &out)
                out.append(contentsOf: [UInt8(ascii: ":"), UInt8(ascii: " ")])
                value.write(into: &out)
            }
            out.append(UInt8(ascii: "}"))
        }
    }
}

/// QEMU's JSON writer rules (qobject/json-writer.c, qobject/qdict.c), reimplemented from their behaviour.
enum QEMUJSONText {
    /// QDict's bucket of a key: the tdb hash modulo 512.
    static func bucket(_ key: String) -> Int {
        let bytes = Array(key.utf8)
        var value = UInt32(truncatingIfNeeded: 0x238F_13AF &* UInt32(truncatingIfNeeded: bytes.count))
        for (i, byte) in bytes.enumerated() {
            value = value &+ (UInt32(byte) << UInt32((i * 5) % 24))
        }
        let hash = 1_103_515_243 &* value &+ 12345
        return Int(hash % 512)
    }

    /// Members in the order QEMU's writer emits them: ascending bucket, latest insertion first within one.
    /// A key inserted twice keeps its first position with the last value (qdict_put replaces in place).
    static func qdictOrder(_ members: [(String, MockJSON)]) -> [(String, MockJSON)] {
        var unique: [(String, MockJSON)] = []
        for (key, value) in members {
            if let index = unique.firstIndex(where: { $0.0 == key }) {
                unique[index].1 = value
            } else {
                unique.append((key, value))
            }
        }
        let indexed = unique.enumerated().map { (index: $0.offset, bucket: bucket($0.element.0), member: $0.element) }
        return indexed.sorted { a, b in
            a.bucket != b.bucket ? a.bucket < b.bucket : a.index > b.index
        }.map(\.member)
    }

    /// Appends `s` as QEMU quotes it: `\"`, `\\`, `\b`, `\f`, `\n`, `\r`, `\t`, other controls and every
    /// non-ASCII code point as `\uXXXX` (upper-case hex, surrogate pairs beyond the BMP).
    static func quote(_ s: String, into out: inout [UInt8]) {
        out.append(UInt8(ascii: "\""))
        for scalar in s.unicodeScalars {
            switch scalar {
            case "\"": out.append(contentsOf: Array("\\\"".utf8))
            case "\\": out.append(contentsOf: Array("\\\\".utf8))
            case "\u{08}": out.append(contentsOf: Array("\\b".utf8))
            case "\u{0C}": out.append(contentsOf: Array("\\f".utf8))
            case "\n": out.append(contentsOf: Array("\\n".utf8))
            case "\r": out.append(contentsOf: Array("\\r".utf8))
            case "\t": out.append(contentsOf: Array("\\t".utf8))
            default:
                let v = scalar.value
                if v > 0xFFFF {
                    hex4(0xD800 + ((v - 0x10000) >> 10), into: &out)
                    hex4(0xDC00 + ((v - 0x10000) & 0x3FF), into: &out)
                } else if v < 0x20 || v >= 0x7F {
                    hex4(v, into: &out)
                } else {
                    out.append(UInt8(v))
                }
            }
        }
        out.append(UInt8(ascii: "\""))
    }

    private static func hex4(_ v: UInt32, into out: inout [UInt8]) {
        let digits = Array("0123456789ABCDEF".utf8)
        out.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "u")])
        for shift in stride(from: 12, through: 0, by: -4) {
            out.append(digits[Int((v >> UInt32(shift)) & 0xF)])
        }
    }

    /// `%.17g` as QEMU prints doubles (integral values keep no fraction, e.g. `1`; QEMU adds nothing).
    static func double(_ d: Double) -> String {
        var text = String(format17g: d)
        if text == "inf" || text == "-inf" || text == "nan" || text == "-nan" { text = "null" }
        return text
    }
}

extension String {
    /// `printf("%.17g")` without Foundation.
    init(format17g d: Double) {
        var buffer = [CChar](repeating: 0, count: 64)
        _ = withVaList([d]) { vsnprintf(&buffer, 64, "%.17g", $0) }
        self = String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}
