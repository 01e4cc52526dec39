/// A JSON value as QEMU's parser sees it, kept only as far as the proxy must reason about it.
///
/// The proxy answers a few things itself exactly as QEMU 7.2 would (capabilities negotiation, the
/// checks QEMU runs on a request before dispatching it). QEMU's answers depend on the *order* in which
/// it visits the members of a request, which is the iteration order of its `QDict` hash table, and on
/// the decoded text of keys and strings. This type gives both; it is never used to re-serialize
/// anything QEMU sent.
enum QEMUValue: Equatable, Sendable {
    case object([(key: String, value: QEMUValue)])
    case array([QEMUValue])
    case string(String)
    /// A number, with its source text (QEMU's echo of numbers is the wire layer's business).
    case number(String)
    case bool(Bool)
    case null

    static func == (lhs: QEMUValue, rhs: QEMUValue) -> Bool {
        switch (lhs, rhs) {
        case (.object(let a), .object(let b)):
            return a.count == b.count && zip(a, b).allSatisfy { $0.key == $1.key && $0.value == $1.value }
        case (.array(let a), .array(let b)): return a == b
        case (.string(let a), .string(let b)): return a == b
        case (.number(let a), .number(let b)): return a == b
        case (.bool(let a), .bool(let b)): return a == b
        case (.null, .null): return true
        default: return false
        }
    }

    /// The members of an object, or nil.
    var members: [(key: String, value: QEMUValue)]? {
        if case .object(let members) = self { return members }
        return nil
    }

    /// The value of the member `key` of an object, or nil.
    subscript(key: String) -> QEMUValue? {
        members?.first(where: { $0.key == key })?.value
    }

    /// The type name QEMU's input visitor uses in "Invalid parameter type" errors.
    var qapiTypeName: String {
        switch self {
        case .object: return "object"
        case .array: return "array"
        case .string: return "string"
        case .number: return "number"
        case .bool: return "boolean"
        case .null: return "null"
        }
    }
}

extension QEMUValue {
    /// Reads one JSON value in QEMU's grammar (double- or single-quoted strings, `\'` escapes).
    ///
    /// Returns nil when the text is not one well-formed value; callers pass text that the wire layer
    /// already validated, so nil means a disagreement worth a log line, not a user error.
    static func read(_ bytes: some Collection<UInt8>) -> QEMUValue? {
        var reader = Reader(bytes: Array(bytes))
        guard let value = reader.value(depth: 0) else { return nil }
        reader.skipSpace()
        return reader.index == reader.bytes.count ? value : nil
    }

    /// Decodes a single JSON string literal (either quote style).
    static func decodeString(_ bytes: some Collection<UInt8>) -> String? {
        if case .string(let s) = read(bytes) { return s }
        return nil
    }

    private struct Reader {
        let bytes: [UInt8]
        var index = 0

        mutating func skipSpace() {
            while index < bytes.count, [0x20, 0x09, 0x0A, 0x0D].contains(bytes[index]) { index += 1 }
        }

        mutating func value(depth: Int) -> QEMUValue? {
            guard depth <= 1024 else { return nil }
            skipSpace()
            guard index < bytes.count else { return nil }
            switch bytes[index] {
            case UInt8(ascii: "{"):
                index += 1
                var members: [(key: String, value: QEMUValue)] = []
                skipSpace()
                if index < bytes.count, bytes[index] == UInt8(ascii: "}") {
                    index += 1
                    return .object(members)
                }
                while true {
                    skipSpace()
                    guard index < bytes.count, bytes[index] == 0x22 || bytes[index] == 0x27,
                        let key = string()
                    else { return nil }
                    skipSpace()
                    guard index < bytes.count, bytes[index] == UInt8(ascii: ":") else { return nil }
                    index += 1
                    guard let member = value(depth: depth + 1) else { return nil }
                    members.append((key, member))
                    skipSpace()
                    guard index < bytes.count else { return nil }
                    if bytes[index] == UInt8(ascii: ",") {
                        index += 1
                        continue
                    }
                    guard bytes[index] == UInt8(ascii: "}") else { return nil }
                    index += 1
                    return .object(members)
                }
            case UInt8(ascii: "["):
                index += 1
                var elements: [QEMUValue] = []
                skipSpace()
                if index < bytes.count, bytes[index] == UInt8(ascii: "]") {
                    index += 1
                    return .array(elements)
                }
                while true {
                    guard let element = value(depth: depth + 1) else { return nil }
                    elements.append(element)
                    skipSpace()
                    guard index < bytes.count else { return nil }
                    if bytes[index] == UInt8(ascii: ",") {
                        index += 1
                        continue
                    }
                    guard bytes[index] == UInt8(ascii: "]") else { return nil }
                    index += 1
                    return .array(elements)
                }
            case 0x22, 0x27:
                return string().map { .string($0) }
            case UInt8(ascii: "t"): return keyword("true", .bool(true))
            case UInt8(ascii: "f"): return keyword("false", .bool(false))
            case UInt8(ascii: "n"): return keyword("null", .null)
            default:
                let start = index
                while index < bytes.count, Self.isNumberByte(bytes[index]) { index += 1 }
                guard index > start else { return nil }
                return .number(String(decoding: bytes[start..<index], as: UTF8.self))
            }
        }

        static func isNumberByte(_ byte: UInt8) -> Bool {
            (byte >= 0x30 && byte <= 0x39) || byte == UInt8(ascii: "-") || byte == UInt8(ascii: "+")
                || byte == UInt8(ascii: ".") || byte == UInt8(ascii: "e") || byte == UInt8(ascii: "E")
        }

        mutating func keyword(_ word: String, _ result: QEMUValue) -> QEMUValue? {
            let utf8 = Array(word.utf8)
            guard index + utf8.count <= bytes.count, Array(bytes[index..<index + utf8.count]) == utf8 else {
                return nil
            }
            index += utf8.count
            return result
        }

        /// Reads a string literal starting at `index` (on its opening quote).
        mutating func string() -> String? {
            let quote = bytes[index]
            index += 1
            var out: [UInt8] = []
            while index < bytes.count {
                let byte = bytes[index]
                index += 1
                if byte == quote { return String(decoding: out, as: UTF8.self) }
                guard byte == UInt8(ascii: "\\") else {
                    out.append(byte)
                    continue
                }
                guard index < bytes.count else { return nil }
                let escape = bytes[index]
                index += 1
                switch escape {
                case UInt8(ascii: "\""), UInt8(ascii: "'"), UInt8(ascii: "\\"), UInt8(ascii: "/"): out.append(escape)
                case UInt8(ascii: "b"): out.append(0x08)
                case UInt8(ascii: "f"): out.append(0x0C)
                case UInt8(ascii: "n"): out.append(0x0A)
                case UInt8(ascii: "r"): out.append(0x0D)
                case UInt8(ascii: "t"): out.append(0x09)
                case UInt8(ascii: "u"):
                    guard var scalar = hex4() else { return nil }
                    if (0xD800..<0xDC00).contains(scalar), index + 1 < bytes.count,
                        bytes[index] == UInt8(ascii: "\\"), bytes[index + 1] == UInt8(ascii: "u")
                    {
                        index += 2
                        guard let low = hex4(), (0xDC00..<0xE000).contains(low) else { return nil }
                        scalar = 0x10000 + ((scalar - 0xD800) << 10) + (low - 0xDC00)
                    }
                    out.append(contentsOf: String(Unicode.Scalar(scalar).map(Character.init) ?? "\u{FFFD}").utf8)
                default: return nil
                }
            }
            return nil
        }

        mutating func hex4() -> UInt32? {
            guard index + 4 <= bytes.count,
                let value = UInt32(String(decoding: bytes[index..<index + 4], as: UTF8.self), radix: 16)
            else { return nil }
            index += 4
            return value
        }
    }
}

/// The iteration order of QEMU's `QDict` (qobject/qdict.c): 512 buckets by `tdb_hash(key)`, each
/// bucket a list with the most recently inserted entry first.
///
/// QEMU's request checks (`qmp_dispatch_check_obj`) and its reply serialization both walk a QDict, so
/// this order decides which error QEMU reports first and where `"id"` sits in a reply.
enum QDictOrder {
    static func bucket(_ key: String) -> Int {
        var value = UInt32(truncatingIfNeeded: 0x238F_13AF &* key.utf8.count)
        for (i, byte) in key.utf8.enumerated() {
            value = value &+ (UInt32(byte) << UInt32(i * 5 % 24))
        }
        return Int((1_103_515_243 &* value &+ 12345) % 512)
    }

    /// Keys in the order QEMU iterates them, given their insertion (parse) order.
    static func ordered(_ keys: [String]) -> [String] {
        keys.enumerated()
            .sorted { a, b in
                let (ba, bb) = (bucket(a.element), bucket(b.element))
                return ba != bb ? ba < bb : a.offset > b.offset
            }
            .map(\.element)
    }
}

/// Serializes strings the way QEMU's `qobject_to_json` does (qobject/qjson.c `quoted_str`).
enum QEMUString {
    /// The JSON literal QEMU writes for `text`: `"`, `\`, and the usual controls escaped with a
    /// backslash; other controls and everything outside printable ASCII as `\uXXXX` (uppercase hex,
    /// surrogate pairs beyond the BMP).
    static func quoted(_ text: String) -> String {
        var out = "\""
        for scalar in text.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\u{08}": out += "\\b"
            case "\u{0C}": out += "\\f"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            default:
                let v = scalar.value
                if v > 0xFFFF {
                    let u = v - 0x10000
                    out += hex(0xD800 + (u >> 10)) + hex(0xDC00 + (u & 0x3FF))
                } else if v < 0x20 || v >= 0x7F {
                    out += hex(v)
                } else {
                    out.unicodeScalars.append(scalar)
                }
            }
        }
        return out + "\""
    }

    private static func hex(_ v: UInt32) -> String {
        let digits = String(v, radix: 16, uppercase: true)
        return "\\u" + String(repeating: "0", count: max(0, 4 - digits.count)) + digits
    }
}
