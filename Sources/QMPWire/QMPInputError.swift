/// Why QEMU would reject one unit of QMP input, with the text QEMU puts in its error reply.
///
/// QEMU answers such a unit with `{"error": {"class": "GenericError", "desc": <desc>}}` and no id
/// (see ``QMPBuilder/error(_:)``).
public struct QMPInputError: Error, Hashable, Sendable, CustomStringConvertible {
    /// What went wrong, coarsely.
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        private enum Value: Hashable, Sendable {
            case strayInput, tokenSizeLimit, tokenCountLimit, nestingLimit, parse, notAnObject
        }
        private let value: Value

        /// A lexer error: a byte that cannot start or continue a token (`JSON parse error, stray '...'`).
        public static let strayInput = Code(value: .strayInput)
        /// The message's tokens exceed 64 MiB (`JSON token size limit exceeded`).
        public static let tokenSizeLimit = Code(value: .tokenSizeLimit)
        /// The message has more than 2 Mi tokens (`JSON token count limit exceeded`).
        public static let tokenCountLimit = Code(value: .tokenCountLimit)
        /// Brackets and braces nest deeper than 1024 (`JSON nesting depth limit exceeded`).
        public static let nestingLimit = Code(value: .nestingLimit)
        /// The tokens do not form a valid value (`JSON parse error, ...`).
        public static let parse = Code(value: .parse)
        /// A valid value that is not an object (`QMP input must be a JSON object`).
        public static let notAnObject = Code(value: .notAnObject)

        public var description: String { "\(value)" }
    }

    /// The kind of error.
    public var code: Code
    /// QEMU's error text exactly as QEMU builds it: may hold arbitrary bytes (the stray input).
    public var descBytes: [UInt8]

    /// QEMU's error text (invalid UTF-8 replaced by U+FFFD).
    public var desc: String { String(decoding: descBytes, as: UTF8.self) }

    public var description: String { "QMPInputError(\(code)): \(desc)" }

    /// Creates an error with QEMU's text for it.
    public init(code: Code, descBytes: [UInt8]) {
        self.code = code
        self.descBytes = descBytes
    }

    init(code: Code, _ desc: String) {
        self.init(code: code, descBytes: Array(desc.utf8))
    }

    /// `"JSON parse error, stray '%s'"`: `%s` stops at the token's first NUL byte.
    static func stray(_ token: some Collection<UInt8>) -> QMPInputError {
        let text = token.prefix { $0 != 0 }
        return QMPInputError(code: .strayInput, descBytes: Array("JSON parse error, stray '".utf8) + text + [0x27])
    }

    static let tokenSize = QMPInputError(code: .tokenSizeLimit, "JSON token size limit exceeded")
    static let tokenCount = QMPInputError(code: .tokenCountLimit, "JSON token count limit exceeded")
    static let nesting = QMPInputError(code: .nestingLimit, "JSON nesting depth limit exceeded")
    static let notAnObject = QMPInputError(code: .notAnObject, "QMP input must be a JSON object")

    /// `parse_error()`: the message is formatted into a 1024-byte buffer first.
    static func parse(_ message: [UInt8]) -> QMPInputError {
        QMPInputError(code: .parse, descBytes: Array("JSON parse error, ".utf8) + message.prefix(1023))
    }

    static func parse(_ message: String) -> QMPInputError { parse(Array(message.utf8)) }
}
