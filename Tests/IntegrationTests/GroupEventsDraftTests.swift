import Foundation
import QMPTestKit
import QMPWire
import Testing

/// The upstream path: contrib/qapi/vfio-group-events.json, `qmp-mock --native-group-events` (a QEMU
/// that has the events) and the sidecar's own events agree on members and types, and the sidecar
/// steps aside for a QEMU that emits them.
@Suite struct GroupEventsDraftTests {
    /// The JSON type of a value or a QAPI type: what a client sees.
    indirect enum Shape: Equatable, CustomStringConvertible {
        case integer, string, boolean
        case array(Shape)
        case object([String: Shape])

        var description: String {
            switch self {
            case .integer: "int"
            case .string: "str"
            case .boolean: "bool"
            case .array(let element): "[\(element)]"
            case .object(let members):
                "{" + members.keys.sorted().map { "\($0): \(members[$0]!)" }.joined(separator: ", ") + "}"
            }
        }

        /// The shape of an emitted value.
        init?(value: JSONValue) {
            switch value {
            case .integer, .unsigned: self = .integer
            case .string: self = .string
            case .bool: self = .boolean
            case .array(let elements):
                guard let first = elements.first, let shape = Shape(value: first) else { return nil }
                self = .array(shape)
            case .object(let members):
                var shapes: [String: Shape] = [:]
                for member in members {
                    guard let shape = Shape(value: member.value) else { return nil }
                    shapes[member.key] = shape
                }
                self = .object(shapes)
            default: return nil
            }
        }
    }

    /// The draft's events: QAPI's schema syntax (comments, single quotes) read as JSON.
    static func draftEvents() throws -> [String: Shape] {
        let path = (#filePath as NSString).deletingLastPathComponent + "/../../contrib/qapi/vfio-group-events.json"
        let text = try String(contentsOfFile: path, encoding: .utf8).split(separator: "\n")
            .filter { !$0.hasPrefix("#") }.joined(separator: "\n").replacingOccurrences(of: "'", with: "\"")
        var framer = QMPOutputFramer()
        let definitions = try framer.append(Array(text.utf8)).map { try JSONValue(parsing: $0) }
        var structs: [String: JSONValue] = [:]
        for definition in definitions {
            if let name = definition["struct"]?.stringValue { structs[name] = definition["data"] }
        }
        func shape(_ type: JSONValue) throws -> Shape {
            if let element = type.arrayValue?.first { return .array(try shape(element)) }
            let name = try #require(type.stringValue)
            switch name {
            case "int", "uint32", "uint64", "int64": return .integer
            case "str": return .string
            case "bool": return .boolean
            default: return try members(#require(structs[name], "unknown type \(name)"))
            }
        }
        func members(_ data: JSONValue) throws -> Shape {
            var shapes: [String: Shape] = [:]
            for member in data.objectValue ?? [] { shapes[member.key] = try shape(member.value) }
            return .object(shapes)
        }
        var events: [String: Shape] = [:]
        for definition in definitions {
            if let name = definition["event"]?.stringValue {
                events[name] = try members(definition["data"] ?? .object([]))
            }
        }
        return events
    }

    /// The events as `query-qmp-schema` introspects them (QEMU's rules: masked object names, `[T]` arrays).
    static func introspectedEvents(_ schema: JSONValue) throws -> [String: Shape] {
        var entries: [String: JSONValue] = [:]
        for entry in schema.arrayValue ?? [] { entries[entry["name"]?.stringValue ?? ""] = entry }
        func shape(_ name: String) throws -> Shape {
            let entry = try #require(entries[name], "no schema entry \(name)")
            switch entry["meta-type"]?.stringValue {
            case "builtin":
                switch entry["json-type"]?.stringValue {
                case "int": return .integer
                case "string": return .string
                case "boolean": return .boolean
                default: throw TestFailure("builtin \(name) is not a JSON scalar")
                }
            case "array": return .array(try shape(try #require(entry["element-type"]?.stringValue)))
            case "object":
                var shapes: [String: Shape] = [:]
                for member in entry["members"]?.arrayValue ?? [] {
                    shapes[try #require(member["name"]?.stringValue)] = try shape(
                        try #require(member["type"]?.stringValue))
                }
                return .object(shapes)
            default: throw TestFailure("unexpected schema entry \(entry)")
            }
        }
        var events: [String: Shape] = [:]
        for entry in schema.arrayValue ?? [] where entry["meta-type"]?.stringValue == "event" {
            let name = try #require(entry["name"]?.stringValue)
            events[name] = try shape(try #require(entry["arg-type"]?.stringValue))
        }
        return events
    }

    /// Unplugs group 7 (released) and group 8 (leaked: timeout) through the sidecar and returns the
    /// group events the client got, by name.
    static func groupEvents(_ session: OperatorViewTests.Session) throws -> [String: [JSONValue]] {
        let client = try TestClient.connecting(to: session.socket)
        _ = try client.negotiate()
        for device in ["hostdev0", "hostdev1", "hostdev2"] {
            _ = try client.command(#"{"execute": "device_del", "arguments": {"id": "\#(device)"}}"#)
        }
        var events: [String: [JSONValue]] = [:]
        if let timeout = client.event(named: "GROUP_RELEASE_TIMEOUT") { client.events.append(timeout) }
        // Anything doubled would follow at once; a second later nothing more may come.
        while let line = client.readLine(timeout: 1) { client.events.append(line) }
        for line in client.events {
            let event = try JSONValue(parsing: Array(line.utf8))
            if let name = event["event"]?.stringValue, name.hasPrefix("GROUP_") {
                events[name, default: []].append(event)
            }
        }
        return events
    }

    @Test func mockSchemaMatchesTheDraft() throws {
        let draft = try Self.draftEvents()
        #expect(Set(draft.keys) == ["GROUP_RELEASED", "GROUP_RELEASE_TIMEOUT"])
        let session = try OperatorViewTests.Session(mockOptions: ["--native-group-events"])
        let mock = try TestClient.connecting(to: "\(session.dir)/vm.qmp")
        _ = try mock.negotiate()
        let reply = try JSONValue(parsing: Array(try mock.command(#"{"execute": "query-qmp-schema"}"#).utf8))
        let introspected = try Self.introspectedEvents(try #require(reply["return"]))
        for (name, shape) in draft {
            #expect(
                introspected[name] == shape,
                "\(name): schema \(introspected[name].map(String.init(describing:)) ?? "missing"), draft \(shape)")
        }
        #expect(introspected["DEVICE_DELETED"] == .object(["device": .string, "path": .string]))
    }

    @Test(arguments: [false, true])
    func emittedEventsMatchTheDraft(native: Bool) throws {
        let draft = try Self.draftEvents()
        let session = try OperatorViewTests.Session(
            mockOptions: native ? ["--native-group-events", "--native-release-timeout", "0.3"] : [])
        let events = try Self.groupEvents(session)
        for name in draft.keys.sorted() {
            let emitted = try #require(events[name], "no \(name) (native: \(native)): \(events)")
            #expect(emitted.count == 1, "\(name) once, not doubled (native: \(native)): \(emitted)")
            #expect(Shape(value: try #require(emitted.first?["data"])) == draft[name], "\(name) (native: \(native))")
        }
        let released = try #require(events["GROUP_RELEASED"]?.first?["data"])
        #expect(released["group"]?.int64Value == 7)
        #expect(released["devices"] == .array([.string("hostdev0"), .string("hostdev1")]))
    }

    @Test func sidecarStepsAsideForAQEMUWithTheEvents() throws {
        let session = try OperatorViewTests.Session(mockOptions: ["--native-group-events"])
        #expect(
            waitFor { session.log.contains("QEMU emits GROUP_RELEASED and GROUP_RELEASE_TIMEOUT itself") },
            "\(session.log)")
        let header = try session.statusWithHeader().split(separator: "\n").first.map(String.init)
        #expect(
            header
                == "group events: emitted by QEMU itself (GROUP_RELEASED, GROUP_RELEASE_TIMEOUT); the sidecar synthesizes none"
        )
        let client = try TestClient.connecting(to: session.socket)
        _ = try client.negotiate()
        #expect(
            try client.command(#"{"execute": "__org.qmp-sidecar_query-group-events"}"#)
                == #"{"return": {"emitted-by": "qemu", "released-event": "GROUP_RELEASED", "timeout-event": "GROUP_RELEASE_TIMEOUT"}}"#
        )
        #expect(waitFor { session.samples.contains("qmp_sidecar_native_group_events 1.0") }, "\(session.metrics)")
    }

    @Test func sidecarEmitsForAQEMUWithout() throws {
        let session = try OperatorViewTests.Session()
        let header = try session.statusWithHeader().split(separator: "\n").first.map(String.init)
        #expect(header == "group events: emitted by qmp-sidecar (GROUP_RELEASED, GROUP_RELEASE_TIMEOUT)")
        #expect(!session.log.contains("QEMU emits"))
    }
}
