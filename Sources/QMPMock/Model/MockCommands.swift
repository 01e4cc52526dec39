import QMPWire

/// The command table: names, argument schemas and QAPI-style argument checking.
enum MockCommands {
    enum Kind: Sendable {
        case string, integer, boolean, array

        var name: String {
            switch self {
            case .string: "string"
            case .integer: "integer"
            case .boolean: "boolean"
            case .array: "array"
            }
        }

        func accepts(_ value: JSONValue) -> Bool {
            switch (self, value) {
            case (.string, .string), (.integer, .integer), (.boolean, .bool), (.array, .array): true
            default: false
            }
        }
    }

    struct Parameter: Sendable {
        var name: String
        var kind: Kind
        var optional: Bool

        init(_ name: String, _ kind: Kind, optional: Bool = false) {
            self.name = name
            self.kind = kind
            self.optional = optional
        }
    }

    /// Commands the mock implements (the rest get CommandNotFound, as an unknown command on QEMU).
    static let known: Set<String> = Set(schema.keys).union(["device_add"])

    /// Argument schemas in QAPI member order (the order QEMU's visitor reports missing members).
    static let schema: [String: [Parameter]] = [
        "qmp_capabilities": [Parameter("enable", .array, optional: true)],
        "query-status": [],
        "query-version": [],
        "query-commands": [],
        "query-qmp-schema": [],
        "stop": [],
        "cont": [],
        "quit": [],
        "qom-list": [Parameter("path", .string)],
        "qom-get": [Parameter("path", .string), Parameter("property", .string)],
        "device_del": [Parameter("id", .string)],
        "getfd": [Parameter("fdname", .string)],
        "closefd": [Parameter("fdname", .string)],
        "add-fd": [Parameter("fdset-id", .integer, optional: true), Parameter("opaque", .string, optional: true)],
        "remove-fd": [Parameter("fdset-id", .integer), Parameter("fd", .integer, optional: true)],
    ]

    /// Device models `device_add` accepts.
    static let drivers: Set<String> = ["vfio-pci", "usb-kbd", "usb-mouse", "usb-tablet"]

    /// Checks `arguments` against `parameters` as QEMU's input visitor does: members in schema order
    /// (missing, wrong type), then the first member left over is unexpected.
    static func check(_ arguments: [JSONMember], _ parameters: [Parameter]) -> Result<
        [String: JSONValue], MockReply
    > {
        var values: [String: JSONValue] = [:]
        for member in arguments { values[member.key] = member.value }
        for parameter in parameters {
            guard let value = values[parameter.name] else {
                if parameter.optional { continue }
                return .failure(.error("GenericError", "Parameter '\(parameter.name)' is missing"))
            }
            guard parameter.kind.accepts(value) else {
                return .failure(
                    .error(
                        "GenericError",
                        "Invalid parameter type for '\(parameter.name)', expected: \(parameter.kind.name)")
                )
            }
        }
        let allowed = Set(parameters.map(\.name))
        if let extra = QMPJSON.qdictOrdered(arguments).first(where: { !allowed.contains($0.key) }) {
            return .failure(.error("GenericError", "Parameter '\(extra.key)' is unexpected"))
        }
        return .success(values)
    }
}
