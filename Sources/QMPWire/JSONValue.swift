import CJansson

/// A JSON value small enough to hold as a tree: command arguments, event data, `qom-list` replies.
///
/// Objects keep their members in order. Integers above `INT64_MAX` (which QEMU emits for uint64
/// values) are ``unsigned(_:)``; integers beyond 64 bits become ``double(_:)`` as in QEMU.
public indirect enum JSONValue: Hashable, Sendable {
    case null
    case bool(Bool)
    case integer(Int64)
    case unsigned(UInt64)
    case double(Double)
    case string(String)
    case array([JSONValue])
    case object([JSONMember])
    /// Already-serialized QEMU JSON text, written verbatim by ``qemuBytes`` (an id as QEMU echoes
    /// it, a reply value taken from a trace or scenario, an integer beyond `UInt64`). Never produced
    /// by parsing; the accessors see no value in it.
    case raw([UInt8])

    /// The member value for `key` of an object (the first one), or `nil`.
    public subscript(key: String) -> JSONValue? {
        guard case .object(let members) = self else { return nil }
        return members.first { $0.key == key }?.value
    }

    /// The string, if this is a string.
    public var stringValue: String? {
        if case .string(let s) = self { return s }
        return nil
    }

    /// The integer, if this is an integer that fits `Int64`.
    public var int64Value: Int64? {
        switch self {
        case .integer(let v): v
        case .unsigned(let v): Int64(exactly: v)
        default: nil
        }
    }

    /// The bool, if this is a bool.
    public var boolValue: Bool? {
        if case .bool(let b) = self { return b }
        return nil
    }

    /// The elements, if this is an array.
    public var arrayValue: [JSONValue]? {
        if case .array(let a) = self { return a }
        return nil
    }

    /// The members, if this is an object.
    public var objectValue: [JSONMember]? {
        if case .object(let m) = self { return m }
        return nil
    }
}

/// One member of a JSON object.
public struct JSONMember: Hashable, Sendable {
    public var key: String
    public var value: JSONValue

    public init(_ key: String, _ value: JSONValue) {
        self.key = key
        self.value = value
    }
}

// MARK: - Parsing through jansson

/// Why bytes could not be turned into a ``JSONValue``.
public struct JSONValueError: Error, Hashable, Sendable, CustomStringConvertible {
    /// The QEMU-grammar error, or jansson's message.
    public var message: String
    public var description: String { "JSON value error: \(message)" }
}

extension JSONValue {
    /// Parses one QMP JSON value (QEMU's grammar: single quotes, `\'`, big integers).
    ///
    /// The bytes are validated with QEMU's grammar, normalized (single-quoted strings rewritten as
    /// standard JSON strings) and decoded by jansson; every `json_t` is released before returning.
    /// Integers jansson cannot hold (above `INT64_MAX`) and object keys holding NUL are decoded
    /// without jansson.
    public init(parsing bytes: some Collection<UInt8>) throws(JSONValueError) {
        let input = Array(bytes)
        let normalized: [UInt8]
        let needsOwnDecoder: Bool
        do {
            (normalized, needsOwnDecoder) = try JSONNormalizer.normalize(input)
        } catch {
            throw JSONValueError(message: error.desc)
        }
        if needsOwnDecoder {
            do {
                self = try QMPGrammar.parseTree(input)
            } catch {
                throw JSONValueError(message: error.desc)
            }
            return
        }
        var error = json_error_t()
        let flags = Int(JSON_DECODE_ANY) | Int(JSON_ALLOW_NUL)
        let root = normalized.withUnsafeBufferPointer { buffer in
            buffer.withMemoryRebound(to: CChar.self) { json_loadb($0.baseAddress, $0.count, flags, &error) }
        }
        guard let root else {
            // jansson never takes a NUL in an object key (`{"\u0000": 1}`), which QEMU's grammar
            // accepts: the grammar, which already validated the bytes, decodes them itself.
            if let tree = try? QMPGrammar.parseTree(input) {
                self = tree
                return
            }
            let text = withUnsafeBytes(of: error.text) { raw in
                String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
            }
            throw JSONValueError(message: "jansson: \(text)")
        }
        defer { json_decref(root) }
        self = JSONValue(jansson: root)
    }

    /// Converts a jansson tree; does not take ownership of `value`.
    init(jansson value: UnsafeMutablePointer<json_t>) {
        switch value.pointee.type {
        case JSON_NULL: self = .null
        case JSON_TRUE: self = .bool(true)
        case JSON_FALSE: self = .bool(false)
        case JSON_INTEGER: self = .integer(Int64(json_integer_value(value)))
        case JSON_REAL: self = .double(json_real_value(value))
        case JSON_STRING:
            let length = json_string_length(value)
            let pointer = json_string_value(value)!
            self = .string(
                pointer.withMemoryRebound(to: UInt8.self, capacity: length) {
                    String(decoding: UnsafeBufferPointer(start: $0, count: length), as: UTF8.self)
                })
        case JSON_ARRAY:
            var elements: [JSONValue] = []
            let count = json_array_size(value)
            elements.reserveCapacity(count)
            for index in 0..<count {
                elements.append(JSONValue(jansson: json_array_get(value, index)!))
            }
            self = .array(elements)
        default:  // JSON_OBJECT: jansson keeps insertion order
            var members: [JSONMember] = []
            var iterator = json_object_iter(value)
            while let it = iterator {
                let key = String(cString: json_object_iter_key(it))
                members.append(JSONMember(key, JSONValue(jansson: json_object_iter_value(it)!)))
                iterator = json_object_iter_next(value, it)
            }
            self = .object(members)
        }
    }
}

/// Rewrites QMP JSON (QEMU's grammar) as standard JSON for jansson.
enum JSONNormalizer {
    /// Returns the normalized bytes and whether the value holds integers jansson rejects.
    static func normalize(_ bytes: [UInt8]) throws(QMPInputError) -> ([UInt8], Bool) {
        // Validate first: QEMU's grammar decides what is acceptable.
        _ = try bytes.withUnsafeBufferPointer { (buffer) throws(QMPInputError) in try QMPGrammar.scanAny(buffer) }
        var out: [UInt8] = []
        out.reserveCapacity(bytes.count)
        var bigInteger = false
        var i = 0
        let n = bytes.count
        while i < n {
            let b = bytes[i]
            if b == 0x27 {
                // A single-quoted string: decode and write it as a double-quoted one.
                var j = i + 1
                while bytes[j] != 0x27 { j += bytes[j] == 0x5C ? 2 : 1 }
                var decoded: [UInt8] = []
                try bytes.withUnsafeBufferPointer { (buffer) throws(QMPInputError) in
                    try QMPGrammar.decodeString(buffer, start: i, end: j + 1, into: &decoded, keep: true)
                }
                QMPJSON.writeQuoted(ModifiedUTF8.string(decoded), into: &out)
                i = j + 1
            } else if b == 0x22 {
                var j = i + 1
                while bytes[j] != 0x22 { j += bytes[j] == 0x5C ? 2 : 1 }
                let body = bytes[i...j]
                if body.contains(0x5C) && body.contains(UInt8(ascii: "'")) {
                    // `\'` is QEMU-only: re-encode.
                    var decoded: [UInt8] = []
                    try bytes.withUnsafeBufferPointer { (buffer) throws(QMPInputError) in
                        try QMPGrammar.decodeString(buffer, start: i, end: j + 1, into: &decoded, keep: true)
                    }
                    QMPJSON.writeQuoted(ModifiedUTF8.string(decoded), into: &out)
                } else if body.contains(0xC0) {
                    // C0 80 (modified UTF-8 NUL) is invalid UTF-8 for jansson: re-encode.
                    var decoded: [UInt8] = []
                    try bytes.withUnsafeBufferPointer { (buffer) throws(QMPInputError) in
                        try QMPGrammar.decodeString(buffer, start: i, end: j + 1, into: &decoded, keep: true)
                    }
                    QMPJSON.writeQuoted(ModifiedUTF8.string(decoded), into: &out)
                } else {
                    out.append(contentsOf: body)
                }
                i = j + 1
            } else if b == UInt8(ascii: "-") || (b >= 0x30 && b <= 0x39) {
                var j = i + 1
                var isInteger = true
                while j < n,
                    (bytes[j] >= 0x30 && bytes[j] <= 0x39) || bytes[j] == UInt8(ascii: ".")
                        || bytes[j] == UInt8(ascii: "e") || bytes[j] == UInt8(ascii: "E")
                        || bytes[j] == UInt8(ascii: "+") || bytes[j] == UInt8(ascii: "-")
                {
                    if !(bytes[j] >= 0x30 && bytes[j] <= 0x39) { isInteger = false }
                    j += 1
                }
                let text = String(decoding: bytes[i..<j], as: UTF8.self)
                if isInteger ? Int64(text) == nil : !QMPGrammar.strtod(text).isFinite {
                    // jansson rejects integers beyond Int64 and reals that overflow; QEMU does not.
                    bigInteger = true
                }
                out.append(contentsOf: bytes[i..<j])
                i = j
            } else {
                out.append(b)
                i += 1
            }
        }
        return (out, bigInteger)
    }
}

extension QMPGrammar {
    /// Validates `bytes` as one value of any type.
    static func scanAny(_ bytes: UnsafeBufferPointer<UInt8>) throws(QMPInputError) {
        _ = try scan(bytes)
    }
}

// MARK: - Writing as QEMU does

extension JSONValue {
    /// The value serialized as QEMU 7.2's JSON writer would write it (object members in QDict
    /// order, QEMU's escaping and number formatting), on one line.
    public var qemuBytes: [UInt8] {
        var out: [UInt8] = []
        writeQEMU(into: &out)
        return out
    }

    /// ``qemuBytes`` followed by CR LF: one QMP output line.
    public var qemuLine: [UInt8] {
        var out: [UInt8] = []
        writeQEMU(into: &out)
        out.append(0x0D)
        out.append(0x0A)
        return out
    }

    func writeQEMU(into out: inout [UInt8]) {
        switch self {
        case .null: out.append(contentsOf: "null".utf8)
        case .bool(let b): out.append(contentsOf: (b ? "true" : "false").utf8)
        case .integer(let v): out.append(contentsOf: String(v).utf8)
        case .unsigned(let v): out.append(contentsOf: String(v).utf8)
        case .double(let v): out.append(contentsOf: QMPJSON.formatDouble(v))
        case .string(let s): QMPJSON.writeQuoted(s, into: &out)
        case .raw(let bytes): out.append(contentsOf: bytes)
        case .array(let elements):
            out.append(UInt8(ascii: "["))
            for (index, element) in elements.enumerated() {
                if index > 0 { out.append(contentsOf: ", ".utf8) }
                element.writeQEMU(into: &out)
            }
            out.append(UInt8(ascii: "]"))
        case .object(let members):
            out.append(UInt8(ascii: "{"))
            for (n, member) in QMPJSON.qdictOrdered(members).enumerated() {
                if n > 0 { out.append(contentsOf: ", ".utf8) }
                QMPJSON.writeQuoted(member.key, into: &out)
                out.append(contentsOf: ": ".utf8)
                member.value.writeQEMU(into: &out)
            }
            out.append(UInt8(ascii: "}"))
        }
    }
}
