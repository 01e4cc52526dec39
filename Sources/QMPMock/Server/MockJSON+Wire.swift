import QMPWire

extension MockJSON {
    /// The mock's view of a parsed value; integers above `INT64_MAX` keep their digits.
    public init(_ value: JSONValue) {
        switch value {
        case .null: self = .null
        case .bool(let b): self = .bool(b)
        case .integer(let i): self = .int(i)
        case .unsigned(let u): self = .raw(Array(String(u).utf8))
        case .double(let d): self = .double(d)
        case .string(let s): self = .string(s)
        case .array(let items): self = .array(items.map(MockJSON.init))
        case .object(let members): self = .object(members.map { ($0.key, MockJSON($0.value)) })
        }
    }
}

extension MockInputUnit {
    /// Decodes one framed unit as QEMU would: grammar errors as `.invalid`, otherwise the tree and the
    /// id exactly as QEMU echoes it.
    public init(frame: QMPFrame) {
        switch frame {
        case .invalid(let error, _):
            self = .invalid(desc: error.desc)
        case .message(let bytes, _):
            switch QMPMessage.parse(bytes) {
            case .failure(let error) where error.code == .notAnObject:
                self = .message(.array([]), id: nil)
            case .failure(let error):
                self = .invalid(desc: error.desc)
            case .success(let message):
                guard let tree = try? JSONValue(parsing: bytes) else {
                    self = .invalid(desc: "JSON parse error")
                    return
                }
                let id = message[.id].flatMap { QMPJSON.echoed($0) }.map { MockJSON.raw($0) }
                self = .message(MockJSON(tree), id: id)
            }
        }
    }
}
