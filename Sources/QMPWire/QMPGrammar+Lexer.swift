// QEMU's lexer (`json-lexer.c`) for the grammar: tokens one at a time, with one token of lookahead.
extension QMPGrammar {
    mutating func peek() throws(QMPInputError) -> Token? {
        if let peeked { return peeked }
        peeked = try lexToken()
        return peeked
    }

    mutating func pop() throws(QMPInputError) -> Token? {
        if let token = peeked {
            peeked = nil
            return token
        }
        return try lexToken()
    }

    @inline(__always) static func isDigit(_ b: UInt8) -> Bool { b >= 0x30 && b <= 0x39 }

    /// The lexer of `json-lexer.c` over the unit's bytes.
    mutating func lexToken() throws(QMPInputError) -> Token? {
        let n = bytes.count
        var i = position
        while i < n, bytes[i].isJSONWhitespace {
            i += 1
        }
        longestWhitespaceRun = max(longestWhitespaceRun, i - position)
        guard i < n else {
            position = i
            return nil
        }
        let start = i
        func stray(_ end: Int) -> QMPInputError { .stray(UnsafeBufferPointer(rebasing: bytes[start..<min(end, n)])) }
        let kind: Kind
        switch bytes[i] {
        case UInt8(ascii: "{"): kind = .lcurly; i += 1
        case UInt8(ascii: "}"): kind = .rcurly; i += 1
        case UInt8(ascii: "["): kind = .lsquare; i += 1
        case UInt8(ascii: "]"): kind = .rsquare; i += 1
        case UInt8(ascii: ":"): kind = .colon; i += 1
        case UInt8(ascii: ","): kind = .comma; i += 1
        case UInt8(ascii: "\""), UInt8(ascii: "'"):
            let quote = bytes[i]
            i += 1
            // Most strings are printable ASCII without escapes: a tight loop finds their end.
            while i < n, bytes[i] != quote, bytes[i] != 0x5C, bytes[i] &- 0x20 < 0x60 {
                i += 1
            }
            if i < n, bytes[i] == quote {
                position = i + 1
                return Token(kind: .string, start: start, end: i + 1, plain: true)
            }
            while true {
                guard i < n else { throw stray(n) }
                let b = bytes[i]
                if b < 0x20 || b >= 0xFE { throw stray(i + 1) }
                i += 1
                if b == quote { break }
                if b == 0x5C {
                    guard i < n else { throw stray(n) }
                    if bytes[i] < 0x20 || bytes[i] >= 0xFE { throw stray(i + 1) }
                    i += 1
                }
            }
            kind = .string
        case UInt8(ascii: "a")...UInt8(ascii: "z"):
            while i < n, bytes[i] >= UInt8(ascii: "a"), bytes[i] <= UInt8(ascii: "z") { i += 1 }
            kind = .keyword
        case UInt8(ascii: "-"), UInt8(ascii: "0")...UInt8(ascii: "9"):
            if bytes[i] == UInt8(ascii: "-") {
                i += 1
                if acceptNonFinite, i < n, bytes[i] == UInt8(ascii: "i") || bytes[i] == UInt8(ascii: "n") {
                    var j = i
                    while j < n, bytes[j] >= UInt8(ascii: "a"), bytes[j] <= UInt8(ascii: "z") { j += 1 }
                    let word = UnsafeBufferPointer(rebasing: bytes[i..<j])
                    if word.equals("inf") || word.equals("nan") {
                        position = j
                        return Token(kind: .float, start: start, end: j)
                    }
                }
                guard i < n, Self.isDigit(bytes[i]) else { throw stray(i + 1) }
            }
            var isFloat = false
            if bytes[i] == UInt8(ascii: "0") {
                i += 1
                if i < n, Self.isDigit(bytes[i]) { throw stray(i + 1) }
            } else {
                while i < n, Self.isDigit(bytes[i]) { i += 1 }
            }
            if i < n, bytes[i] == UInt8(ascii: ".") {
                isFloat = true
                i += 1
                guard i < n, Self.isDigit(bytes[i]) else { throw stray(i + 1) }
                while i < n, Self.isDigit(bytes[i]) { i += 1 }
            }
            // `0e5` is not a number for QEMU's lexer: only non-zero integers and mantissas take
            // an exponent.
            let zeroInteger =
                !isFloat && bytes[start..<i].last == UInt8(ascii: "0") && i - start <= 2
                && (i - start == 1 || bytes[start] == UInt8(ascii: "-"))
            if i < n, bytes[i] == UInt8(ascii: "e") || bytes[i] == UInt8(ascii: "E"), !zeroInteger {
                isFloat = true
                i += 1
                if i < n, bytes[i] == UInt8(ascii: "+") || bytes[i] == UInt8(ascii: "-") {
                    i += 1
                    guard i < n, Self.isDigit(bytes[i]) else { throw stray(i + 1) }
                } else {
                    guard i < n, Self.isDigit(bytes[i]) else { throw stray(i + 1) }
                }
                while i < n, Self.isDigit(bytes[i]) { i += 1 }
            }
            kind = isFloat ? .float : .integer
        default:
            throw stray(i + 1)
        }
        position = i
        return Token(kind: kind, start: start, end: i)
    }
}
