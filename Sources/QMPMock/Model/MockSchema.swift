import QMPWire

/// The mock's `query-qmp-schema`: QEMU's introspection format (qapi/introspect.json), with QEMU's
/// conventions — object types masked as numbers, every integer type shown as `int`, arrays named
/// `[element]` — for the commands the mock implements and the events it emits. With native group
/// events it also lists `GROUP_RELEASED` and `GROUP_RELEASE_TIMEOUT` exactly as
/// contrib/qapi/vfio-group-events.json drafts them, as a QEMU with that patch would.
enum MockSchema {
    /// One object member: name, introspected type, optional.
    private typealias Member = (name: String, type: String, optional: Bool)

    static func introspection(nativeGroupEvents: Bool) -> JSONValue {
        var entries: [JSONValue] = []
        var objects: [[Member]] = []
        /// The masked name of an object type with these members (one entry per distinct shape).
        func object(_ members: [Member]) -> String {
            if let index = objects.firstIndex(where: { $0.elementsEqual(members, by: ==) }) { return "\(index)" }
            objects.append(members)
            return "\(objects.count - 1)"
        }
        for name in MockCommands.known.sorted() {
            let members = (MockCommands.schema[name] ?? []).map { ($0.name, typeName($0.kind), $0.optional) }
            entries.append(
                .object([
                    JSONMember("name", .string(name)), JSONMember("ret-type", .string("any")),
                    JSONMember("meta-type", .string("command")), JSONMember("arg-type", .string(object(members))),
                ]))
        }
        func event(_ name: String, _ members: [Member]) {
            entries.append(
                .object([
                    JSONMember("name", .string(name)), JSONMember("meta-type", .string("event")),
                    JSONMember("arg-type", .string(object(members))),
                ]))
        }
        event("DEVICE_DELETED", [("device", "str", true), ("path", "str", false)])
        var arrays = ["[str]": "str"]
        if nativeGroupEvents {
            let holder = object([("pid", "int", false), ("comm", "str", false)])
            arrays["[\(holder)]"] = holder
            let released: [Member] = [
                ("group", "int", false), ("devices", "[str]", false), ("waited-ms", "int", false),
            ]
            event("GROUP_RELEASED", released)
            event("GROUP_RELEASE_TIMEOUT", released + [("holders", "[\(holder)]", false)])
        }
        for (index, members) in objects.enumerated() {
            entries.append(
                .object([
                    JSONMember("name", .string("\(index)")),
                    JSONMember(
                        "members",
                        .array(
                            members.map { member in
                                var fields = [JSONMember("name", .string(member.name))]
                                if member.optional { fields.append(JSONMember("default", .null)) }
                                fields.append(JSONMember("type", .string(member.type)))
                                return .object(fields)
                            })),
                    JSONMember("meta-type", .string("object")),
                ]))
        }
        for (name, element) in arrays.sorted(by: { $0.key < $1.key }) {
            entries.append(
                .object([
                    JSONMember("name", .string(name)), JSONMember("element-type", .string(element)),
                    JSONMember("meta-type", .string("array")),
                ]))
        }
        for (name, json) in [("str", "string"), ("int", "int"), ("bool", "boolean"), ("any", "value")] {
            entries.append(
                .object([
                    JSONMember("name", .string(name)), JSONMember("json-type", .string(json)),
                    JSONMember("meta-type", .string("builtin")),
                ]))
        }
        return .array(entries)
    }

    private static func typeName(_ kind: MockCommands.Kind) -> String {
        switch kind {
        case .string: "str"
        case .integer: "int"
        case .boolean: "bool"
        case .array: "[str]"
        }
    }
}
