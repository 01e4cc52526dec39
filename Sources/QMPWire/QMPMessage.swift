/// One valid QMP message (a JSON object) with the byte ranges of its top-level members' values.
///
/// No tree is built: parsing is one pass over the bytes, so it works on 64 MiB replies and on
/// integers above `INT64_MAX`. The bytes themselves are kept unchanged, to be forwarded as they are.
public struct QMPMessage: Hashable, Sendable {
    /// The top-level members whose value ranges are recorded.
    public enum Member: String, CaseIterable, Hashable, Sendable {
        case execute
        case execOOB = "exec-oob"
        case arguments
        case id
        case event
        case data
        case returnValue = "return"
        case error
        case qmp = "QMP"

        init?(key: UnsafeBufferPointer<UInt8>) {
            switch key.count {
            case 2 where key.equals("id"): self = .id
            case 3 where key.equals("QMP"): self = .qmp
            case 4 where key.equals("data"): self = .data
            case 5 where key.equals("event"): self = .event
            case 5 where key.equals("error"): self = .error
            case 6 where key.equals("return"): self = .returnValue
            case 7 where key.equals("execute"): self = .execute
            case 8 where key.equals("exec-oob"): self = .execOOB
            case 9 where key.equals("arguments"): self = .arguments
            default: return nil
            }
        }
    }

    /// The message's bytes, unchanged.
    public let bytes: [UInt8]
    private let top: MessageOffsets

    /// Validates `bytes` with QEMU 7.2's JSON grammar and requires a JSON object.
    ///
    /// Accepts what QEMU accepts (single-quoted strings, `\'`, integers of any size) and rejects
    /// what it rejects (invalid UTF-8, invalid `\u` escapes, noncharacters, duplicate keys, ...),
    /// with QEMU's error text. `bytes` is one unit as ``QMPFramer`` delivers it.
    public static func parse(_ bytes: [UInt8]) -> Result<QMPMessage, QMPInputError> {
        parse(bytes, acceptNonFinite: false)
    }

    /// Parses one line of QEMU *output* (without its CRLF): QEMU's grammar plus the `inf`, `-inf`,
    /// `nan` and `-nan` its writer prints for non-finite doubles.
    ///
    /// - Important: split QEMU's output on `\n`, not with ``QMPFramer``: `-inf` is a lexer error
    ///   for QEMU's own parser, so a framer would cut such a reply in pieces.
    public static func parseOutput(_ line: [UInt8]) -> Result<QMPMessage, QMPInputError> {
        parse(line, acceptNonFinite: true)
    }

    /// One message of QEMU's output (as ``QMPOutputFramer`` delivers it) with its members found by
    /// structure alone, for routing: the same ranges as ``parseOutput(_:)`` for anything QEMU's writer
    /// prints, without validating the values. Nil for what the writer never prints; then
    /// ``parseOutput(_:)`` says what is wrong.
    public static func scanOutput(_ line: [UInt8]) -> QMPMessage? {
        line.withUnsafeBufferPointer { QMPOutputScan.members(of: $0) }.map { QMPMessage(bytes: line, top: $0) }
    }

    private static func parse(_ bytes: [UInt8], acceptNonFinite: Bool) -> Result<QMPMessage, QMPInputError> {
        let scanned = bytes.withUnsafeBufferPointer { buffer in
            Result { () throws(QMPInputError) -> QMPGrammar.TopLevel in
                try QMPGrammar.scan(buffer, acceptNonFinite: acceptNonFinite)
            }
        }
        switch scanned {
        case .failure(let error):
            return .failure(error)
        case .success(let top):
            guard top.isObject else { return .failure(.notAnObject) }
            return .success(QMPMessage(bytes: bytes, top: top.offsets))
        }
    }

    init(bytes: [UInt8], top: MessageOffsets) {
        self.bytes = bytes
        self.top = top
    }

    /// The byte range in ``bytes`` of the value of a top-level member, if present.
    public func range(of member: Member) -> Range<Int>? { top[member] }

    /// The bytes of the value of a top-level member, if present.
    public subscript(member: Member) -> ArraySlice<UInt8>? {
        range(of: member).map { bytes[$0] }
    }

    /// The value of a top-level member decoded as a string, if present and a string.
    public func string(_ member: Member) -> String? {
        self[member].flatMap { Self.decodeString($0) }
    }

    /// The value of a top-level member as a ``JSONValue`` (through jansson), if present.
    public func jsonValue(_ member: Member) -> JSONValue? {
        self[member].flatMap { try? JSONValue(parsing: $0) }
    }

    /// `execute`'s value range.
    public var execute: Range<Int>? { range(of: .execute) }
    /// `exec-oob`'s value range.
    public var execOOB: Range<Int>? { range(of: .execOOB) }
    /// `arguments`' value range.
    public var arguments: Range<Int>? { range(of: .arguments) }
    /// `id`'s value range.
    public var id: Range<Int>? { range(of: .id) }
    /// `event`'s value range.
    public var event: Range<Int>? { range(of: .event) }
    /// `data`'s value range.
    public var data: Range<Int>? { range(of: .data) }
    /// `return`'s value range.
    public var returnValue: Range<Int>? { range(of: .returnValue) }
    /// `error`'s value range.
    public var error: Range<Int>? { range(of: .error) }
    /// `QMP`'s value range (the greeting).
    public var qmp: Range<Int>? { range(of: .qmp) }

    /// The command name (`execute` or `exec-oob`), when it is a string.
    public var commandName: String? { string(.execute) ?? string(.execOOB) }

    /// Decodes a single- or double-quoted QMP string token to a Swift string; `nil` when the bytes
    /// are not exactly one valid string.
    public static func decodeString(_ token: some Collection<UInt8>) -> String? {
        let bytes = Array(token)
        guard bytes.count >= 2, let quote = bytes.first, quote == 0x22 || quote == 0x27,
            bytes.last == quote
        else { return nil }
        guard
            case .success(let value) = Result(catching: { () throws(QMPInputError) in try QMPGrammar.parseTree(bytes) }),
            case .string(let string) = value
        else { return nil }
        return string
    }

    /// The message with its top-level `id` member replaced, added or (for `nil`) removed, at byte
    /// level: every other byte is unchanged.
    ///
    /// - Parameter newID: the bytes of the new id value (inserted verbatim), or `nil` to remove it.
    ///   - spare: extra capacity to reserve (e.g. for a CRLF the caller appends).
    public func replacingID(with newID: [UInt8]?, spare: Int = 0) -> [UInt8] {
        replacingID(withSlice: newID?[...], spare: spare)
    }

    /// ``replacingID(with:spare:)`` with the new id's bytes in a slice (e.g. of another message).
    public func replacingID(withSlice newID: ArraySlice<UInt8>?, spare: Int = 0) -> [UInt8] {
        withView { view in
            guard let newID else { return view.replacingID(withBytes: nil, spare: spare) }
            return newID.withUnsafeBufferPointer { view.replacingID(withBytes: $0, spare: spare) }
        }
    }

    /// ``replacingID(with:spare:)`` with the decimal digits of `number` as the new id, written without
    /// an array of their own.
    public func replacingID(with number: UInt64, spare: Int = 0) -> [UInt8] {
        withView { view in
            QMPMessageView.withDecimalDigits(of: number) { view.replacingID(withBytes: $0, spare: spare) }
        }
    }

    /// ``replacingID(withSlice:spare:)`` followed by CR LF, written over `line` (whose capacity a
    /// caller that reuses it keeps: no allocation once it is large enough).
    public func writeLine(replacingIDWith newID: ArraySlice<UInt8>?, into line: inout [UInt8]) {
        withView { $0.writeLine(replacingIDWith: newID, into: &line) }
    }

    /// ``replacingID(with:spare:)`` (a decimal id) followed by CR LF, written over `line`.
    public func writeLine(replacingIDWith number: UInt64, into line: inout [UInt8]) {
        withView { $0.writeLine(replacingIDWith: number, into: &line) }
    }

    /// The message as a view of its own bytes, for the duration of `body`.
    func withView<Result>(_ body: (QMPMessageView) -> Result) -> Result {
        bytes.withUnsafeBufferPointer { body(QMPMessageView(bytes: $0, top: top)) }
    }
}
