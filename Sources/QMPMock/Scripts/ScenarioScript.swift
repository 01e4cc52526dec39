import QMPWire

/// A scripted session read from a scenario file: expected commands with canned replies, timed events.
///
/// File format (JSON; every member but `steps` optional):
/// ```json
/// {
///   "description": "two-device group, slow finalize",
///   "ordered": true,
///   "fallback": "model",
///   "events": [{"after-ms": 100, "event": "RESUME"}],
///   "steps": [
///     {"execute": "query-status", "return": {"status": "running", "singlestep": false, "running": true}},
///     {"execute": "device_del", "arguments": {"id": "hostdev0"}},
///     {"execute": "qom-get", "error": {"class": "GenericError", "desc": "boom"}},
///     {"execute": "cont", "return": {}, "events": [{"after-ms": 5, "event": "RESUME"}]}
///   ]
/// }
/// ```
/// A step matches a command by name and, when given, by `arguments` (member order ignored) and by
/// `fds`, the number of descriptors that came with it over SCM_RIGHTS. With
/// `return` or `error` the step answers; without, the built-in model answers (the step only checks
/// that the command came, in order) — so VFIO semantics stay real while the order is asserted.
/// `events` of a step are sent `after-ms` after its reply; top-level `events` after the first
/// negotiation. `ordered` (default true): only the next step may match. A command no step matches is
/// answered by the model (`"fallback": "model"`, the default) or refused with a GenericError
/// naming the expected step (`"fallback": "error"`), and reported.
public struct ScenarioScript: MockScript {
    struct Step: Sendable {
        var execute: String
        var arguments: JSONValue?
        /// Descriptors that must come with the command (SCM_RIGHTS), when given.
        var fds: Int?
        var reply: MockReply?
        var events: [MockScriptEvent]
    }

    var steps: [Step]
    var used: [Bool]
    var ordered: Bool
    var fallbackToModel: Bool
    var startEvents: [MockScriptEvent]
    /// Commands that arrived out of script, as text.
    public private(set) var violations: [String] = []

    /// Parses a scenario file's contents.
    ///
    /// - Throws: ``MockError`` with code `.scenario`, naming the step and what to fix.
    public init(parsing bytes: [UInt8], name: String = "scenario") throws(MockError) {
        let root: JSONValue
        do {
            root = try JSONValue(parsing: bytes)
        } catch {
            throw .scenario("\(name): not valid JSON (\(error.message)); a scenario is one JSON object with \"steps\"")
        }
        guard case .object = root else { throw .scenario("\(name): expected a JSON object with \"steps\"") }
        ordered = root["ordered"]?.boolValue ?? true
        switch root["fallback"]?.stringValue ?? "model" {
        case "model": fallbackToModel = true
        case "error": fallbackToModel = false
        case let other: throw .scenario("\(name): \"fallback\" is \"\(other)\"; use \"model\" or \"error\"")
        }
        startEvents = try Self.events(root["events"], context: "\(name): events")
        guard let stepValues = root["steps"]?.arrayValue else {
            throw .scenario("\(name): missing \"steps\" (an array of {\"execute\": ..., \"return\": ...})")
        }
        var steps: [Step] = []
        for (index, value) in stepValues.enumerated() {
            let context = "\(name): step \(index + 1)"
            guard let execute = value["execute"]?.stringValue else {
                throw .scenario("\(context): missing \"execute\" (the command name the step expects)")
            }
            var reply: MockReply?
            if let ret = value["return"] { reply = .success(ret) }
            if let error = value["error"] {
                guard error["class"]?.stringValue != nil, error["desc"]?.stringValue != nil else {
                    throw .scenario("\(context): \"error\" needs \"class\" and \"desc\" strings")
                }
                guard reply == nil else { throw .scenario("\(context): give \"return\" or \"error\", not both") }
                reply = .failure(
                    .object([JSONMember("class", error["class"]!), JSONMember("desc", error["desc"]!)]))
            }
            steps.append(
                Step(
                    execute: execute, arguments: value["arguments"],
                    fds: value["fds"]?.int64Value.map { Int($0) }, reply: reply,
                    events: try Self.events(value["events"], context: "\(context) events")))
        }
        self.steps = steps
        self.used = Array(repeating: false, count: steps.count)
    }

    static func events(_ value: JSONValue?, context: String) throws(MockError) -> [MockScriptEvent] {
        guard let value else { return [] }
        guard let items = value.arrayValue else { throw .scenario("\(context): expected an array") }
        var events: [MockScriptEvent] = []
        for (index, item) in items.enumerated() {
            guard let name = item["event"]?.stringValue else {
                throw .scenario("\(context) \(index + 1): missing \"event\" (the event name)")
            }
            var ms = 0.0
            switch item["after-ms"] {
            case .integer(let i)?: ms = Double(i)
            case .double(let d)?: ms = d
            case nil: ms = 0
            default: throw .scenario("\(context) \(index + 1): \"after-ms\" must be a number")
            }
            events.append(
                MockScriptEvent(
                    delayNanoseconds: Int64(ms * 1e6), name: name, data: item["data"]))
        }
        return events
    }

    public mutating func decide(command: String, arguments: JSONValue?, fdCount: Int) -> MockScriptDecision? {
        let candidates = ordered ? Array(used.firstIndex(of: false).map { [$0] } ?? []) : Array(steps.indices)
        for index in candidates where !used[index] {
            let step = steps[index]
            guard step.execute == command else { continue }
            if let expected = step.arguments, !expected.matches(normalizedArguments(arguments)) { continue }
            if let fds = step.fds, fds != fdCount { continue }
            used[index] = true
            guard let reply = step.reply else {
                // Expectation only: the model answers; the step's events still follow.
                pendingEvents += step.events
                return nil
            }
            return MockScriptDecision(reply: reply, events: step.events)
        }
        let next = used.firstIndex(of: false).map { "step \($0 + 1) (\(steps[$0].execute))" } ?? "no more steps"
        let got = (arguments.map { "\(command) \($0.text)" } ?? command) + (fdCount > 0 ? " with \(fdCount) fd(s)" : "")
        violations.append("unexpected \(got), expected \(next)")
        if fallbackToModel { return nil }
        return MockScriptDecision(
            reply: .error("GenericError", "qmp-mock scenario: unexpected \(got), expected \(next)"))
    }

    /// Events of expectation-only steps, handed to the machine after the model's reply.
    public var pendingEvents: [MockScriptEvent] = []

    public mutating func takePendingEvents() -> [MockScriptEvent] {
        defer { pendingEvents = [] }
        return pendingEvents
    }

    public mutating func eventsAfterNegotiation() -> [MockScriptEvent] { startEvents }

    public var unmetExpectations: [String] {
        let missing = steps.indices.filter { !used[$0] }.map { "step \($0 + 1) (\(steps[$0].execute)) never came" }
        return violations + missing
    }
}
