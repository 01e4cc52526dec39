import QMPWire

extension MockJSON {
    /// Semantic equality: object members compared as sets (QEMU does not care about member order),
    /// raw bytes compared after parsing.
    func matches(_ other: MockJSON) -> Bool {
        switch (self.parsedIfRaw, other.parsedIfRaw) {
        case (.object(let a), .object(let b)):
            guard a.count == b.count else { return false }
            return a.allSatisfy { member in b.contains { $0.0 == member.0 && $0.1.matches(member.1) } }
        case (.array(let a), .array(let b)):
            return a.count == b.count && zip(a, b).allSatisfy { $0.matches($1) }
        case (let a, let b):
            return a == b
        }
    }

    private var parsedIfRaw: MockJSON {
        if case .raw(let bytes) = self, let value = try? JSONValue(parsing: bytes) { return MockJSON(value) }
        return self
    }

    /// Compact text for messages.
    var text: String { String(decoding: serialized(), as: UTF8.self) }
}

/// Arguments of a command for matching: absent and `{}` are the same to QEMU.
func normalizedArguments(_ arguments: MockJSON?) -> MockJSON {
    arguments ?? .object([])
}
