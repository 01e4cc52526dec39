/// One unit of QMP input as QEMU's JSON streamer delimits it.
public enum QMPFrame: Hashable, Sendable {
    /// A complete token sequence whose brace and bracket depth returned to zero. It may still fail
    /// to parse: pass `bytes` to ``QMPMessage/parse(_:)``.
    ///
    /// `bytes` runs from the first byte of the unit's first token to the last byte of its last
    /// token; `end` is the stream offset just past that last byte.
    case message(bytes: [UInt8], end: Int)
    /// Input QEMU rejects before parsing (a lexer error or a size, count or nesting limit). QEMU
    /// answers it with an error reply without id. `end` is the stream offset just past the byte
    /// that made the unit fail.
    case invalid(QMPInputError, end: Int)

    /// The stream offset just past the unit's last byte.
    public var end: Int {
        switch self {
        case .message(_, let end), .invalid(_, let end): end
        }
    }
}

/// Splits a QMP input byte stream into units exactly as QEMU 7.2's `json-lexer.c` and
/// `json-streamer.c` do.
///
/// A unit ends when, after a token, the brace and bracket depth is back to zero (so a lone scalar
/// is a unit of its own and a stray `}` is one too). Strings may be double- or single-quoted.
/// After a lexer error QEMU skips input until a structural character, a control character other
/// than tab, or the bytes `0xFE`/`0xFF`; so does the framer. Limits as QEMU's: 64 MiB per token
/// and per message, 2 Mi tokens, nesting 1024; past a limit the unit is reported as
/// ``QMPFrame/invalid(_:end:)`` and the framer carries on where QEMU does.
///
/// Whitespace runs longer than 64 bytes between tokens of one unit are shortened in
/// ``QMPFrame/message(bytes:end:)`` (QEMU ignores them; this bounds memory). Every other byte
/// of a unit is kept.
///
/// - Important: a value type with no I/O; feed it every byte of one connection in order.
public struct QMPFramer: Sendable {
    /// QEMU's limits; tests use smaller ones to exercise the overflow paths.
    public struct Limits: Hashable, Sendable {
        /// Bytes per token and total token bytes per message (`MAX_TOKEN_SIZE`, 64 MiB).
        public var tokenSize: Int
        /// Tokens per message (`MAX_TOKEN_COUNT`, 2 Mi).
        public var tokenCount: Int
        /// Brace plus bracket depth (`MAX_NESTING`, 1024).
        public var nesting: Int

        /// QEMU 7.2's values.
        public static let qemu = Limits(tokenSize: 64 << 20, tokenCount: 2 << 20, nesting: 1 << 10)

        public init(tokenSize: Int, tokenCount: Int, nesting: Int) {
            self.tokenSize = tokenSize
            self.tokenCount = tokenCount
            self.nesting = nesting
        }
    }

    /// Lexer states of `json-lexer.c` (interpolation disabled, as for QMP).
    private enum Lex: UInt8 {
        case start, recovery
        case dq, dqEscape, sq, sqEscape
        case zero, expDigits, expSign, expE, mantissa, mantissaDigits, digits, sign, keyword
    }

    private enum TokenKind {
        case lcurly, rcurly, lsquare, rsquare, other
    }

    private let limits: Limits
    private var lex: Lex = .start
    /// Stream offset of the next byte.
    private var offset = 0
    /// Stream offset of the first byte of the token being lexed.
    private var tokenStart = 0
    private var braces = 0
    private var brackets = 0
    private var tokenCount = 0
    private var tokenSize = 0
    /// Bytes of the unit in progress, up to the end of the previous chunk.
    private var pending: [UInt8] = []
    private var inUnit = false
    private var whitespaceRun = 0
    static let maxWhitespaceRun = 64

    /// Creates a framer at the start of a stream.
    public init(limits: Limits = .qemu) {
        self.limits = limits
    }

    /// Bytes consumed so far (the stream offset of the next byte).
    public var streamOffset: Int { offset }

    /// Whether the next byte starts a new unit (nothing of one pending, the lexer in its start state).
    var isBetweenUnits: Bool { lex == .start && !inUnit }

    /// Whether the limits are QEMU's own (the grammar applies the same ones).
    var hasQEMULimits: Bool { limits == .qemu }

    /// Moves past `count` bytes that formed whole units, framed by the caller exactly as ``feed`` would.
    mutating func skipUnits(byteCount count: Int) {
        offset += count
    }

    /// Feeds the next bytes of the stream and returns the units they complete, in order.
    public mutating func append(_ bytes: UnsafeRawBufferPointer) -> [QMPFrame] {
        var frames: [QMPFrame] = []
        feed(bytes, into: &frames)
        return frames
    }

    /// Feeds the next bytes of the stream and appends the units they complete to `frames`, in order
    /// (a caller that reuses one array saves an allocation per read).
    public mutating func append(_ bytes: UnsafeRawBufferPointer, into frames: inout [QMPFrame]) {
        feed(bytes, into: &frames)
    }

    /// Feeds the next bytes of the stream and returns the units they complete, in order.
    public mutating func append(_ bytes: some Collection<UInt8>) -> [QMPFrame] {
        var frames: [QMPFrame] = []
        let handled: Void? = bytes.withContiguousStorageIfAvailable { buffer in
            feed(UnsafeRawBufferPointer(buffer), into: &frames)
        }
        if handled == nil {
            Array(bytes).withUnsafeBytes { feed($0, into: &frames) }
        }
        return frames
    }

    // MARK: - Streamer

    /// Resets the streamer after a unit was emitted (`out_emit`).
    private mutating func resetUnit() {
        braces = 0
        brackets = 0
        tokenCount = 0
        tokenSize = 0
        pending.removeAll(keepingCapacity: pending.capacity <= 1 << 16)
        inUnit = false
        whitespaceRun = 0
    }

    /// `json_message_process_token` for a complete token of `length` bytes ending at stream offset
    /// `end`. Returns a frame when the token completes a unit (the caller supplies the bytes).
    @inline(__always)
    private mutating func processToken(_ kind: TokenKind, length: Int, end: Int) -> UnitResult {
        switch kind {
        case .lcurly: braces += 1
        case .rcurly: braces -= 1
        case .lsquare: brackets += 1
        case .rsquare: brackets -= 1
        case .other: break
        }
        if tokenSize + length + 1 > limits.tokenSize { return .failed(.tokenSize) }
        if tokenCount + 1 > limits.tokenCount { return .failed(.tokenCount) }
        if brackets + braces > limits.nesting { return .failed(.nesting) }
        tokenCount += 1
        tokenSize += length
        // A unit goes on while some depth is positive and neither is negative.
        if (braces > 0 || brackets > 0) && braces >= 0 && brackets >= 0 { return .continuing }
        return .complete
    }

    private enum UnitResult {
        case continuing, complete
        case failed(QMPInputError)
    }

    // MARK: - Lexer

    private mutating func feed(_ buffer: UnsafeRawBufferPointer, into frames: inout [QMPFrame]) {
        let count = buffer.count
        guard count > 0 else { return }
        let base = offset
        let bytes = buffer.bindMemory(to: UInt8.self)
        // Index in `bytes` from which the unit in progress still has to be copied to `pending`.
        var copyFrom = 0
        var i = 0

        @inline(__always) func flushCopy(_ framer: inout QMPFramer, upTo end: Int) {
            if end > copyFrom {
                framer.pending.append(contentsOf: UnsafeBufferPointer(rebasing: bytes[copyFrom..<end]))
            }
            copyFrom = end
        }

        /// Emits the unit ending at chunk index `endIndex` (exclusive) after a token.
        @inline(__always) func finishToken(
            _ framer: inout QMPFramer, _ kind: TokenKind, endIndex: Int, frames: inout [QMPFrame]
        ) {
            let end = base + endIndex
            switch framer.processToken(kind, length: end - framer.tokenStart, end: end) {
            case .continuing:
                break
            case .complete:
                if framer.pending.isEmpty {
                    // The whole unit is in this chunk: one exact copy, the pending buffer stays.
                    frames.append(
                        .message(bytes: Array(UnsafeBufferPointer(rebasing: bytes[copyFrom..<endIndex])), end: end))
                    copyFrom = endIndex
                } else {
                    flushCopy(&framer, upTo: endIndex)
                    frames.append(.message(bytes: framer.pending, end: end))
                    framer.pending = []  // handed over: no copy-on-write of a shared buffer
                }
                framer.resetUnit()
            case .failed(let error):
                frames.append(.invalid(error, end: end))
                framer.resetUnit()
            }
        }

        /// A lexer error whose token ends with the byte at chunk index `index` (consumed).
        @inline(__always) func lexError(_ framer: inout QMPFramer, at index: Int, frames: inout [QMPFrame]) {
            flushCopy(&framer, upTo: index + 1)
            let length = base + index + 1 - framer.tokenStart
            let token = framer.pending.suffix(length)
            frames.append(.invalid(.stray(token), end: base + index + 1))
            framer.resetUnit()
            framer.lex = .recovery
        }

        while i < count {
            let byte = bytes[i]
            switch lex {
            case .start:
                switch byte {
                case 0x20, 0x09, 0x0D, 0x0A:
                    if inUnit {
                        whitespaceRun += 1
                        if whitespaceRun > Self.maxWhitespaceRun {
                            flushCopy(&self, upTo: i)
                            copyFrom = i + 1
                        }
                    }
                    i += 1
                    continue
                default:
                    break
                }
                if !inUnit {
                    inUnit = true
                    copyFrom = i
                }
                whitespaceRun = 0
                tokenStart = base + i
                switch byte {
                case UInt8(ascii: "\""): lex = .dq
                case UInt8(ascii: "'"): lex = .sq
                case UInt8(ascii: "0"): lex = .zero
                case UInt8(ascii: "1")...UInt8(ascii: "9"): lex = .digits
                case UInt8(ascii: "-"): lex = .sign
                case UInt8(ascii: "a")...UInt8(ascii: "z"): lex = .keyword
                case UInt8(ascii: "{"):
                    finishToken(&self, .lcurly, endIndex: i + 1, frames: &frames)
                case UInt8(ascii: "}"):
                    finishToken(&self, .rcurly, endIndex: i + 1, frames: &frames)
                case UInt8(ascii: "["):
                    finishToken(&self, .lsquare, endIndex: i + 1, frames: &frames)
                case UInt8(ascii: "]"):
                    finishToken(&self, .rsquare, endIndex: i + 1, frames: &frames)
                case UInt8(ascii: ","), UInt8(ascii: ":"):
                    finishToken(&self, .other, endIndex: i + 1, frames: &frames)
                default:
                    lexError(&self, at: i, frames: &frames)
                }
                i += 1
                continue

            case .recovery:
                switch byte {
                case 0x00...0x08, 0x0A...0x1F, 0xFE, 0xFF, UInt8(ascii: "["), UInt8(ascii: "]"),
                    UInt8(ascii: "{"), UInt8(ascii: "}"), UInt8(ascii: ":"), UInt8(ascii: ","):
                    lex = .start  // lookahead: the byte is lexed again from the start state
                default:
                    i += 1
                }
                continue

            case .dq, .sq:
                // Fast path through the body of a string, bounded so that the per-token size check
                // below still fires on the exact byte QEMU's does.
                let quote: UInt8 = lex == .dq ? 0x22 : 0x27
                let limitIndex = min(count, tokenStart + limits.tokenSize - base)
                var j = i
                while j < limitIndex {
                    let b = bytes[j]
                    if b < 0x20 || b >= 0xFE || b == quote || b == 0x5C { break }
                    j += 1
                }
                i = j
                if i >= count { continue }
                let b = bytes[i]
                if b == quote {
                    lex = .start
                    finishToken(&self, .other, endIndex: i + 1, frames: &frames)
                    i += 1
                    continue
                } else if b == 0x5C {
                    lex = lex == .dq ? .dqEscape : .sqEscape
                } else if b < 0x20 || b >= 0xFE {
                    lexError(&self, at: i, frames: &frames)
                    i += 1
                    continue
                }
            // else: an ordinary byte at the size limit, consumed below.

            case .dqEscape, .sqEscape:
                if byte < 0x20 || byte >= 0xFE {
                    lexError(&self, at: i, frames: &frames)
                    i += 1
                    continue
                }
                lex = lex == .dqEscape ? .dq : .sq

            case .zero:
                if byte >= UInt8(ascii: "0") && byte <= UInt8(ascii: "9") {
                    lexError(&self, at: i, frames: &frames)
                    i += 1
                    continue
                } else if byte == UInt8(ascii: ".") {
                    lex = .mantissa
                } else {
                    lex = .start
                    finishToken(&self, .other, endIndex: i, frames: &frames)
                    continue
                }

            case .digits:
                switch byte {
                case UInt8(ascii: "0")...UInt8(ascii: "9"):
                    // Consume the run of digits at once (bounded like the string fast path).
                    let limitIndex = min(count, tokenStart + limits.tokenSize - base)
                    var j = i + 1
                    while j < limitIndex, bytes[j] >= UInt8(ascii: "0"), bytes[j] <= UInt8(ascii: "9") { j += 1 }
                    i = j - 1
                case UInt8(ascii: "e"), UInt8(ascii: "E"): lex = .expE
                case UInt8(ascii: "."): lex = .mantissa
                default:
                    lex = .start
                    finishToken(&self, .other, endIndex: i, frames: &frames)
                    continue
                }

            case .mantissaDigits:
                switch byte {
                case UInt8(ascii: "0")...UInt8(ascii: "9"): break
                case UInt8(ascii: "e"), UInt8(ascii: "E"): lex = .expE
                default:
                    lex = .start
                    finishToken(&self, .other, endIndex: i, frames: &frames)
                    continue
                }

            case .expDigits:
                if !(byte >= UInt8(ascii: "0") && byte <= UInt8(ascii: "9")) {
                    lex = .start
                    finishToken(&self, .other, endIndex: i, frames: &frames)
                    continue
                }

            case .keyword:
                if !(byte >= UInt8(ascii: "a") && byte <= UInt8(ascii: "z")) {
                    lex = .start
                    finishToken(&self, .other, endIndex: i, frames: &frames)
                    continue
                }
                let limitIndex = min(count, tokenStart + limits.tokenSize - base)
                var j = i + 1
                while j < limitIndex, bytes[j] >= UInt8(ascii: "a"), bytes[j] <= UInt8(ascii: "z") { j += 1 }
                i = j - 1

            case .mantissa, .expSign:
                if byte >= UInt8(ascii: "0") && byte <= UInt8(ascii: "9") {
                    lex = lex == .mantissa ? .mantissaDigits : .expDigits
                } else {
                    lexError(&self, at: i, frames: &frames)
                    i += 1
                    continue
                }

            case .expE:
                switch byte {
                case UInt8(ascii: "-"), UInt8(ascii: "+"): lex = .expSign
                case UInt8(ascii: "0")...UInt8(ascii: "9"): lex = .expDigits
                default:
                    lexError(&self, at: i, frames: &frames)
                    i += 1
                    continue
                }

            case .sign:
                switch byte {
                case UInt8(ascii: "0"): lex = .zero
                case UInt8(ascii: "1")...UInt8(ascii: "9"): lex = .digits
                default:
                    lexError(&self, at: i, frames: &frames)
                    i += 1
                    continue
                }
            }
            // The byte was consumed into the token in progress: QEMU's per-token size check.
            if base + i + 1 - tokenStart > limits.tokenSize {
                frames.append(.invalid(.tokenSize, end: base + i + 1))
                resetUnit()
                lex = .start
            }
            i += 1
        }
        if inUnit {
            flushCopy(&self, upTo: count)
        }
        offset = base + count
    }
}
