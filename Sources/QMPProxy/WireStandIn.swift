// TEMPORARY: a minimal stand-in for the QMPWire contract (docs/ARCHITECTURE.md "QMPWire") so the proxy
// builds and its tests run before branch `wire` lands. Deleted at `git merge wire`.

struct QMPInputError: Error, Equatable, Sendable {
    var desc: String
}

enum QMPFrame: Equatable, Sendable {
    case message(bytes: [UInt8], end: Int)
    case invalid(QMPInputError, end: Int)
}

struct QMPFramer: Sendable {
    private var buffer: [UInt8] = []
    private var offset = 0
    private var depth = 0
    private var quote: UInt8 = 0
    private var escaped = false

    init() {}

    mutating func append(_ bytes: some Collection<UInt8>) -> [QMPFrame] {
        var frames: [QMPFrame] = []
        for byte in bytes {
            offset += 1
            if quote != 0 {
                buffer.append(byte)
                if escaped {
                    escaped = false
                } else if byte == 0x5C {
                    escaped = true
                } else if byte == quote {
                    quote = 0
                }
                continue
            }
            switch byte {
            case 0x20, 0x09, 0x0A, 0x0D:
                if !buffer.isEmpty { buffer.append(byte) }
            case 0x22, 0x27:
                buffer.append(byte)
                quote = byte
            case UInt8(ascii: "{"), UInt8(ascii: "["):
                buffer.append(byte)
                depth += 1
            case UInt8(ascii: "}"), UInt8(ascii: "]"):
                if depth == 0 {
                    frames.append(.invalid(QMPInputError(desc: "JSON parse error, expecting value"), end: offset))
                    buffer = []
                    continue
                }
                buffer.append(byte)
                depth -= 1
                if depth == 0 {
                    frames.append(.message(bytes: buffer, end: offset))
                    buffer = []
                }
            default:
                buffer.append(byte)
            }
        }
        return frames
    }
}

struct QMPMessage: Sendable {
    var bytes: [UInt8]
    var execute: Range<Int>?
    var execOOB: Range<Int>?
    var arguments: Range<Int>?
    var id: Range<Int>?
    var event: Range<Int>?
    var data: Range<Int>?
    var returnValue: Range<Int>?
    var error: Range<Int>?
    var greeting: Range<Int>?
    /// Whole member ranges (key through value), for removing the id.
    private var idMember: Range<Int>?

    static func parse(_ bytes: [UInt8]) -> Result<QMPMessage, QMPInputError> {
        guard let value = QEMUValue.read(bytes) else {
            return .failure(QMPInputError(desc: "JSON parse error, invalid input"))
        }
        guard let members = value.members else {
            return .failure(QMPInputError(desc: "QMP input must be a JSON object"))
        }
        var keys = Set<String>()
        for member in members where !keys.insert(member.key).inserted {
            return .failure(QMPInputError(desc: "JSON parse error, duplicate key"))
        }
        var message = QMPMessage(bytes: bytes)
        var i = bytes.firstIndex(of: UInt8(ascii: "{"))! + 1
        func skipSpace() { while i < bytes.count, [0x20, 0x09, 0x0A, 0x0D].contains(bytes[i]) { i += 1 } }
        func skipValue() {
            var depth = 0
            var quote: UInt8 = 0
            var escaped = false
            while i < bytes.count {
                let b = bytes[i]
                if quote != 0 {
                    if escaped { escaped = false } else if b == 0x5C { escaped = true } else if b == quote { quote = 0 }
                    i += 1
                    if quote == 0 && depth == 0 { return }
                    continue
                }
                switch b {
                case 0x22, 0x27: quote = b
                case UInt8(ascii: "{"), UInt8(ascii: "["): depth += 1
                case UInt8(ascii: "}"), UInt8(ascii: "]"):
                    if depth == 0 { return }
                    depth -= 1
                    if depth == 0 {
                        i += 1
                        return
                    }
                case UInt8(ascii: ","), 0x20, 0x09, 0x0A, 0x0D: if depth == 0 { return }
                default: break
                }
                i += 1
            }
        }
        for member in members {
            skipSpace()
            let memberStart = i
            skipValue()  // the key
            skipSpace()
            i += 1  // ':'
            skipSpace()
            let valueStart = i
            skipValue()
            let range = valueStart..<i
            skipSpace()
            if i < bytes.count, bytes[i] == UInt8(ascii: ",") { i += 1 }
            switch member.key {
            case "execute": message.execute = range
            case "exec-oob": message.execOOB = range
            case "arguments": message.arguments = range
            case "id":
                message.id = range
                message.idMember = memberStart..<i
            case "event": message.event = range
            case "data": message.data = range
            case "return": message.returnValue = range
            case "error": message.error = range
            case "QMP": message.greeting = range
            default: break
            }
        }
        return .success(message)
    }

    func replacingID(with newID: [UInt8]?) -> [UInt8] {
        if let id {
            if let newID { return Array(bytes[..<id.lowerBound]) + newID + Array(bytes[id.upperBound...]) }
            var lower = idMember!.lowerBound
            if bytes[idMember!.upperBound...].first(where: { ![0x20, 0x09, 0x0A, 0x0D].contains($0) })
                == UInt8(ascii: "}")
            {
                // The last member: drop the comma before it instead.
                var j = lower - 1
                while [0x20, 0x09, 0x0A, 0x0D].contains(bytes[j]) { j -= 1 }
                if bytes[j] == UInt8(ascii: ",") { lower = j }
            }
            return Array(bytes[..<lower]) + Array(bytes[idMember!.upperBound...])
        }
        guard let newID else { return bytes }
        let open = bytes.firstIndex(of: UInt8(ascii: "{"))!
        let empty = QEMUValue.read(bytes)?.members?.isEmpty ?? true
        return Array(bytes[...open]) + Array("\"id\": ".utf8) + newID + (empty ? [] : Array(", ".utf8))
            + Array(bytes[(open + 1)...])
    }
}

enum QMPJSON {
    static func echoed(_ value: some Collection<UInt8>) -> [UInt8] {
        guard let parsed = QEMUValue.read(value) else { return Array(value) }
        return Array(serialize(parsed).utf8)
    }

    private static func serialize(_ value: QEMUValue) -> String {
        switch value {
        case .object(let members):
            let ordered = QDictOrder.ordered(members.map(\.key))
            return "{"
                + ordered.map { key in
                    QEMUString.quoted(key) + ": " + serialize(members.first(where: { $0.key == key })!.value)
                }.joined(separator: ", ") + "}"
        case .array(let elements): return "[" + elements.map(serialize).joined(separator: ", ") + "]"
        case .string(let s): return QEMUString.quoted(s)
        case .number(let n): return n
        case .bool(let b): return b ? "true" : "false"
        case .null: return "null"
        }
    }
}
