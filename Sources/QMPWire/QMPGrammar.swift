#if canImport(Glibc)
import Glibc
#endif

/// QEMU 7.2's `json-parser.c` grammar over the bytes of one unit, in one pass.
///
/// Mirrors QEMU's recursive descent, so the first error it reports is the one QEMU reports. In scan
/// mode it builds nothing but the top-level member table; in tree mode it builds a ``JSONValue``.
struct QMPGrammar {
    enum Kind: UInt8 {
        case lcurly, rcurly, lsquare, rsquare, colon, comma, integer, float, keyword, string
    }

    struct Token {
        var kind: Kind
        var start: Int
        var end: Int
        /// A string of printable ASCII without escapes: valid as it is, and its own decoding.
        var plain = false
    }

    /// What the scan learned about the top-level object.
    struct TopLevel {
        var offsets = MessageOffsets()
        var isObject = false
    }

    let bytes: UnsafeBufferPointer<UInt8>
    let build: Bool
    let maxDepth: Int
    /// Accept `inf`, `-inf`, `nan`, `-nan`: QEMU's writer prints non-finite doubles that way
    /// (`%.17g`), so its output can hold them although its parser rejects them.
    var acceptNonFinite = false
    var position = 0
    var peeked: Token?
    var top = TopLevel()
    /// The longest whitespace run between two tokens (``QMPFramer`` shortens runs above its limit).
    var longestWhitespaceRun = 0

    init(bytes: UnsafeBufferPointer<UInt8>, build: Bool, maxDepth: Int = QMPFramer.Limits.qemu.nesting) {
        self.bytes = bytes
        self.build = build
        self.maxDepth = maxDepth
    }

    // MARK: - Entry points

    /// Validates `bytes` as one QMP JSON value; returns what the top-level object holds.
    static func scan(_ bytes: UnsafeBufferPointer<UInt8>, acceptNonFinite: Bool = false) throws(QMPInputError)
        -> TopLevel
    {
        // Offsets are 32-bit (``MessageOffsets``); QEMU's own input limits are far below this.
        guard bytes.count <= MessageOffsets.maxBytes else { throw .tokenSize }
        var parser = QMPGrammar(bytes: bytes, build: false)
        parser.acceptNonFinite = acceptNonFinite
        _ = try parser.parseWhole()
        return parser.top
    }

    /// Validates the value at the start of `bytes`, which may go on past it; returns what its top-level
    /// object holds, the index just past its last token and the longest whitespace run between its
    /// tokens.
    static func scanLeading(_ bytes: UnsafeBufferPointer<UInt8>) throws(QMPInputError) -> (
        TopLevel, end: Int, longestWhitespaceRun: Int
    ) {
        guard bytes.count <= MessageOffsets.maxBytes else { throw .tokenSize }
        var parser = QMPGrammar(bytes: bytes, build: false)
        _ = try parser.parseValue(depth: 0)
        // An object or array ends with its closing token popped: nothing is peeked past it.
        guard parser.peeked == nil else { throw .parse("unexpected input after the value") }
        return (parser.top, parser.position, parser.longestWhitespaceRun)
    }

    /// Parses `bytes` as one QMP JSON value into a tree.
    static func parseTree(_ bytes: [UInt8]) throws(QMPInputError) -> JSONValue {
        try bytes.withUnsafeBufferPointer { (buffer) throws(QMPInputError) -> JSONValue in
            var parser = QMPGrammar(bytes: buffer, build: true)
            return try parser.parseWhole() ?? .null
        }
    }

    private mutating func parseWhole() throws(QMPInputError) -> JSONValue? {
        let value = try parseValue(depth: 0)
        if try peek() != nil {
            // Never happens for a unit from QMPFramer: QEMU's streamer ends a unit with its value.
            throw .parse("unexpected input after the value")
        }
        return value
    }

    // MARK: - Values

    private mutating func parseValue(depth: Int) throws(QMPInputError) -> JSONValue? {
        guard let token = try peek() else { throw .parse("premature EOI") }
        switch token.kind {
        case .lcurly: return try parseObject(depth: depth + 1)
        case .lsquare: return try parseArray(depth: depth + 1)
        case .integer, .float, .string:
            _ = try pop()
            return try literal(token)
        case .keyword:
            _ = try pop()
            let word = UnsafeBufferPointer(rebasing: bytes[token.start..<token.end])
            if acceptNonFinite && (word.equals("inf") || word.equals("nan")) {
                return try literal(Token(kind: .float, start: token.start, end: token.end))
            }
            if word.equals("true") { return build ? .bool(true) : nil }
            if word.equals("false") { return build ? .bool(false) : nil }
            if word.equals("null") { return build ? .null : nil }
            throw .parse(Array("invalid keyword '".utf8) + word + [0x27])
        default:
            throw .parse("expecting value")
        }
    }

    private mutating func literal(_ token: Token) throws(QMPInputError) -> JSONValue? {
        switch token.kind {
        case .string:
            if build {
                var out: [UInt8] = []
                try decodeString(token, into: &out, keep: true)
                return .string(ModifiedUTF8.string(out))
            }
            if !token.plain {
                var unused: [UInt8] = []
                try decodeString(token, into: &unused, keep: false)
            }
            return nil
        case .integer:
            guard build else { return nil }
            let text = String(decoding: UnsafeBufferPointer(rebasing: bytes[token.start..<token.end]), as: UTF8.self)
            if let v = Int64(text) { return .integer(v) }
            if bytes[token.start] != UInt8(ascii: "-"), let v = UInt64(text) { return .unsigned(v) }
            return .double(Self.strtod(text))
        default:
            guard build else { return nil }
            let text = String(decoding: UnsafeBufferPointer(rebasing: bytes[token.start..<token.end]), as: UTF8.self)
            return .double(Self.strtod(text))
        }
    }

    static func strtod(_ text: String) -> Double {
        text.withCString { Glibc.strtod($0, nil) }
    }

    private mutating func parseObject(depth: Int) throws(QMPInputError) -> JSONValue? {
        if depth > maxDepth { throw .nesting }
        _ = try pop()
        var members: [JSONMember] = []
        var keys = ObjectKeys()
        let isTop = depth == 1
        if isTop { top.isObject = true }
        guard let first = try peek() else { throw .parse("premature EOI") }
        var previousValueEnd: Int? = nil
        var idJustSeen = false
        if first.kind != .rcurly {
            while true {
                // parse_pair
                guard let keyToken = try peek() else { throw .parse("premature EOI") }
                if isTop && idJustSeen {
                    top.offsets.keyStartAfterID = keyToken.start
                    idJustSeen = false
                }
                let key: KeyBytes
                if keyToken.kind == .string {
                    _ = try pop()
                    key = try decodeKey(keyToken)
                } else {
                    _ = try parseValue(depth: depth)
                    throw .parse("key is not a string in object")
                }
                guard let colon = try pop() else { throw .parse("premature EOI") }
                if colon.kind != .colon { throw .parse("missing : in object pair") }
                let valueStart = try peek()?.start ?? bytes.count
                let value = try parseValue(depth: depth)
                let valueEnd = position
                if !keys.insert(key, in: bytes) { throw .parse("duplicate key") }
                if build {
                    let keyString = key.withBytes(in: bytes) { ModifiedUTF8.string(Array($0)) }
                    members.append(JSONMember(keyString, value ?? .null))
                }
                if isTop {
                    if let member = key.withBytes(in: bytes, { QMPMessage.Member(key: $0) }) {
                        top.offsets[member] = valueStart..<valueEnd
                        if member == .id {
                            top.offsets.idKeyStart = keyToken.start
                            top.offsets.valueEndBeforeID = previousValueEnd
                            idJustSeen = true
                        }
                    }
                    top.offsets.lastValueEnd = valueEnd
                }
                previousValueEnd = valueEnd
                // separator or end
                guard let next = try pop() else { throw .parse("premature EOI") }
                if next.kind == .rcurly {
                    if isTop { top.offsets.closingBrace = next.start }
                    break
                }
                if next.kind != .comma { throw .parse("expected separator in dict") }
            }
        } else {
            let close = try pop()!
            if isTop { top.offsets.closingBrace = close.start }
        }
        return build ? .object(members) : nil
    }

    private mutating func parseArray(depth: Int) throws(QMPInputError) -> JSONValue? {
        if depth > maxDepth { throw .nesting }
        _ = try pop()
        var elements: [JSONValue] = []
        guard let first = try peek() else { throw .parse("premature EOI") }
        if first.kind != .rsquare {
            while true {
                let value = try parseValue(depth: depth)
                if build { elements.append(value ?? .null) }
                guard let next = try pop() else { throw .parse("premature EOI") }
                if next.kind == .rsquare { break }
                if next.kind != .comma { throw .parse("expected separator in list") }
            }
        } else {
            _ = try pop()
        }
        return build ? .array(elements) : nil
    }

    // MARK: - Strings

    @inline(__always) private static func hexValue(_ b: UInt8) -> Int {
        switch b {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): Int(b) - 0x30
        case UInt8(ascii: "a")...UInt8(ascii: "f"): Int(b) - 0x61 + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): Int(b) - 0x41 + 10
        default: -1
        }
    }

    /// Decodes an object key; keys that decoding would not change stay a range of the input.
    private func decodeKey(_ token: Token) throws(QMPInputError) -> KeyBytes {
        if token.plain { return KeyBytes(start: token.start + 1, end: token.end - 1, decoded: nil) }
        var plain = true
        for p in (token.start + 1)..<(token.end - 1) where bytes[p] == 0x5C || bytes[p] >= 0x80 {
            plain = false
            break
        }
        if plain { return KeyBytes(start: token.start + 1, end: token.end - 1, decoded: nil) }
        var decoded: [UInt8] = []
        try decodeString(token, into: &decoded, keep: true)
        return KeyBytes(start: 0, end: 0, decoded: decoded)
    }

    /// `parse_string`: validates (and with `keep`, appends the modified UTF-8 of) a string token.
    private func decodeString(_ token: Token, into out: inout [UInt8], keep: Bool) throws(QMPInputError) {
        try Self.decodeString(bytes, start: token.start, end: token.end, into: &out, keep: keep)
    }

    static func decodeString(
        _ bytes: UnsafeBufferPointer<UInt8>, start: Int, end: Int, into out: inout [UInt8], keep: Bool
    ) throws(QMPInputError) {
        let quote = bytes[start]
        var p = start + 1
        while p < end, bytes[p] != quote {
            let b = bytes[p]
            if b == 0x5C {
                let begin = p
                p += 1
                let e = p < end ? bytes[p] : 0
                p += 1
                var simple: UInt8? = nil
                switch e {
                case UInt8(ascii: "\""): simple = 0x22
                case UInt8(ascii: "'"): simple = 0x27
                case UInt8(ascii: "\\"): simple = 0x5C
                case UInt8(ascii: "/"): simple = 0x2F
                case UInt8(ascii: "b"): simple = 0x08
                case UInt8(ascii: "f"): simple = 0x0C
                case UInt8(ascii: "n"): simple = 0x0A
                case UInt8(ascii: "r"): simple = 0x0D
                case UInt8(ascii: "t"): simple = 0x09
                case UInt8(ascii: "u"):
                    var cp = cvt4hexStatic(bytes, p, end: end)
                    p += 4
                    if cp >= 0xD800 && cp <= 0xDBFF && p + 1 < end && bytes[p] == 0x5C
                        && bytes[p + 1] == UInt8(ascii: "u")
                    {
                        cp = 0x10000 + ((cp & 0x3FF) << 10)
                        let trailing = cvt4hexStatic(bytes, p + 2, end: end)
                        if trailing >= 0xDC00 && trailing <= 0xDFFF {
                            cp |= trailing & 0x3FF
                            p += 6
                        } else {
                            cp = -1
                        }
                    }
                    var sink: [UInt8] = []
                    if !(keep ? ModifiedUTF8.encode(cp, into: &out) : ModifiedUTF8.encode(cp, into: &sink)) {
                        // "%.*s": the escape as written, cut at the token's end (its C string's NUL).
                        let shown = UnsafeBufferPointer(rebasing: bytes[begin..<min(p, end)])
                        throw .parse(Array(shown) + Array(" is not a valid Unicode character".utf8))
                    }
                default:
                    throw .parse("invalid escape sequence in string")
                }
                if let simple, keep { out.append(simple) }
            } else if b < 0x80 {
                if keep { out.append(b) }
                p += 1
            } else {
                let (cp, next) = ModifiedUTF8.codepoint(bytes, at: p, limit: end)
                if cp < 0 { throw .parse("invalid UTF-8 sequence in string") }
                if keep { out.append(contentsOf: UnsafeBufferPointer(rebasing: bytes[p..<next])) }
                p = next
            }
        }
    }

    private static func cvt4hexStatic(_ bytes: UnsafeBufferPointer<UInt8>, _ at: Int, end: Int) -> Int {
        var cp = 0
        for k in 0..<4 {
            let p = at + k
            let v = p < end ? hexValue(bytes[p]) : -1
            if v < 0 { return -1 }
            cp = (cp << 4) | v
        }
        return cp
    }
}

/// A decoded object key: a range of the input when decoding does not change it, else its bytes.
struct KeyBytes {
    var start: Int
    var end: Int
    var decoded: [UInt8]?

    func withBytes<R>(in input: UnsafeBufferPointer<UInt8>, _ body: (UnsafeBufferPointer<UInt8>) -> R) -> R {
        if let decoded { return decoded.withUnsafeBufferPointer(body) }
        return body(UnsafeBufferPointer(rebasing: input[start..<end]))
    }

    /// FNV-1a of the key's bytes.
    func hash(in input: UnsafeBufferPointer<UInt8>) -> UInt64 {
        withBytes(in: input) { bytes in
            var h: UInt64 = 0xCBF2_9CE4_8422_2325
            for b in bytes { h = (h ^ UInt64(b)) &* 0x100_0000_01B3 }
            return h
        }
    }
}

extension UnsafeBufferPointer<UInt8> {
    /// Whether the bytes are exactly `text` (memcmp: comparing with a `String.UTF8View` costs more
    /// than scanning the message).
    func equals(_ text: StaticString) -> Bool {
        count == text.utf8CodeUnitCount && (count == 0 || memcmp(baseAddress!, text.utf8Start, count) == 0)
    }
}
