import QMPWire

#if canImport(Glibc)
import Glibc
#endif

/// The parts of a parsed message the router looks at. Keeps every use of the wire layer's member
/// ranges in one place.
struct Envelope {
    let message: QMPMessage

    init(_ message: QMPMessage) {
        self.message = message
    }

    var bytes: [UInt8] { message.bytes }

    private func slice(_ range: Range<Int>?) -> ArraySlice<UInt8>? {
        range.map { message.bytes[$0] }
    }

    private func string(_ range: Range<Int>?) -> String? {
        guard let range else { return nil }
        return message.bytes.withUnsafeBufferPointer { bytes in
            let token = UnsafeBufferPointer(rebasing: bytes[range])
            if let text = Self.plainText(of: token) { return String(decoding: text, as: UTF8.self) }
            return QMPMessage.decodeString(token)
        }
    }

    /// The bytes between the quotes of a double-quoted token of printable ASCII without escapes: a
    /// string that is its own text, and that QEMU echoes unchanged. Nil for any other token.
    static func plainText(of token: UnsafeBufferPointer<UInt8>) -> UnsafeBufferPointer<UInt8>? {
        guard token.count >= 2, token[0] == 0x22, token[token.count - 1] == 0x22 else { return nil }
        let text = UnsafeBufferPointer(rebasing: token[1..<(token.count - 1)])
        for b in text where b < 0x20 || b >= 0x7F || b == 0x22 || b == 0x5C { return nil }
        return text
    }

    /// The value of `execute` when it is a string.
    var executeName: String? { string(message.execute) }
    /// The value of `exec-oob` when it is a string.
    var execOOBName: String? { string(message.execOOB) }
    var hasExecOOB: Bool { message.execOOB != nil }
    /// QEMU's `qmp_is_oob`: `exec-oob` present and `execute` absent.
    var isOOBRequest: Bool { message.execOOB != nil && message.execute == nil }
    /// The command name QEMU would look up.
    var commandName: String? { message.execute != nil ? executeName : execOOBName }

    /// The name in `list` that is the command name QEMU would look up, if any. A plain token (double
    /// quotes, printable ASCII, no escapes) is compared byte for byte, without a string.
    func commandName(in list: CommandNames) -> String? {
        guard !list.names.isEmpty, let range = message.execute ?? message.execOOB else { return nil }
        // Outer nil: the token is not plain, decode it.
        let found: Int?? = message.bytes.withUnsafeBufferPointer { bytes in
            guard let text = Self.plainText(of: UnsafeBufferPointer(rebasing: bytes[range])) else { return nil }
            return .some(list.index(of: text))
        }
        if let found { return found.map { list.names[$0] } }
        let name = commandName
        return list.names.first { $0 == name }
    }

    var idBytes: [UInt8]? { slice(message.id).map(Array.init) }
    /// The id's bytes as a view of the message (no copy: it keeps the message's bytes alive).
    var idSlice: ArraySlice<UInt8>? { slice(message.id) }
    var argumentBytes: [UInt8]? { slice(message.arguments).map(Array.init) }
    var eventName: String? { string(message.event) }
    var isGreeting: Bool { message.qmp != nil }
    var isReply: Bool { message.returnValue != nil || message.error != nil }
    var isSuccess: Bool { message.returnValue != nil }

    /// The capabilities QEMU's greeting offers.
    var offeredCapabilities: [String] {
        guard let greeting = slice(message.qmp),
            case .array(let list)? = (try? JSONValue(parsing: greeting))?["capabilities"]
        else { return [] }
        return list.compactMap { if case .string(let s) = $0 { s } else { nil } }
    }

    /// The id as an id of the sidecar's namespace (a non-negative decimal integer), or nil.
    var sidecarID: UInt64? {
        guard let range = message.id else { return nil }
        return message.bytes.withUnsafeBufferPointer { Self.sidecarID(UnsafeBufferPointer(rebasing: $0[range])) }
    }

    /// An id token as an id of the sidecar's namespace (a non-negative decimal integer), or nil.
    static func sidecarID(_ id: UnsafeBufferPointer<UInt8>) -> UInt64? {
        guard !id.isEmpty, id.count <= 20 else { return nil }
        var value: UInt64 = 0
        for byte in id {
            guard byte >= 0x30, byte <= 0x39 else { return nil }
            let (times, overflow1) = value.multipliedReportingOverflow(by: 10)
            let (sum, overflow2) = times.addingReportingOverflow(UInt64(byte - 0x30))
            guard !overflow1, !overflow2 else { return nil }
            value = sum
        }
        return value
    }
}

/// Command names the router compares commands with, as text and as UTF-8.
struct CommandNames: Sendable {
    let names: [String]
    let utf8: [[UInt8]]

    init(_ names: some Sequence<String>) {
        self.names = names.sorted()
        utf8 = self.names.map { Array($0.utf8) }
    }

    /// The index of the name whose bytes are `text`, if any.
    func index(of text: UnsafeBufferPointer<UInt8>) -> Int? {
        utf8.firstIndex { name in
            name.count == text.count
                && name.withUnsafeBufferPointer {
                    text.isEmpty || memcmp($0.baseAddress!, text.baseAddress!, text.count) == 0
                }
        }
    }
}
