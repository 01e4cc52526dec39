import QMPWire

extension JSONValue {
    /// Semantic equality: object members compared as sets (QEMU does not care about member order),
    /// raw bytes compared after parsing.
    func matches(_ other: JSONValue) -> Bool {
        switch (self.parsedIfRaw, other.parsedIfRaw) {
        case (.object(let a), .object(let b)):
            guard a.count == b.count else { return false }
            return a.allSatisfy { member in b.contains { $0.key == member.key && $0.value.matches(member.value) } }
        case (.array(let a), .array(let b)):
            return a.count == b.count && zip(a, b).allSatisfy { $0.matches($1) }
        case (let a, let b):
            return a == b
        }
    }

    private var parsedIfRaw: JSONValue {
        if case .raw(let bytes) = self, let value = try? JSONValue(parsing: bytes) { return value }
        return self
    }

    /// Compact text for messages.
    var text: String { String(decoding: qemuBytes, as: UTF8.self) }
}

/// Arguments of a command for matching: absent and `{}` are the same to QEMU.
func normalizedArguments(_ arguments: JSONValue?) -> JSONValue {
    arguments ?? .object([])
}
