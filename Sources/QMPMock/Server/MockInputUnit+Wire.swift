import QMPWire

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
                let id = message[.id].flatMap { QMPJSON.echoed($0) }.map { JSONValue.raw($0) }
                self = .message(tree, id: id)
            }
        }
    }
}
