import QMPWire

/// Plays the QEMU side of a recording made with `qmp-sidecar --trace FILE`.
///
/// The trace is JSON lines `{"t": µs, "dir": ..., "client": n, "fds": k, "msg": "..."}` (see
/// docs/ARCHITECTURE.md, "Trace format"). Commands are the messages going to QEMU (`client-to-qemu`,
/// `sidecar-to-qemu`); each is paired with the next reply coming back on the same channel
/// (`qemu-to-client` with the same client number, `qemu-to-sidecar`), in order, as QEMU answers
/// in-band commands in order. Events coming from QEMU are deduplicated (one QEMU event is recorded
/// once per client it was forwarded to) and anchored to the last command recorded before them.
///
/// On replay a command is answered with the reply of the first unplayed recorded command with the
/// same name and equal arguments (member order ignored), whoever sends it; the reply value is
/// QEMU's recorded bytes, the id is the new client's. Events anchored to that command follow at
/// their recorded offset from its reply. Events recorded before any command follow negotiation at
/// their offset from the recorded greeting.
public struct ReplayScript: MockScript {
    struct Recorded: Sendable {
        var name: String
        var arguments: JSONValue
        var t: Int64
        var reply: MockReply?
        var replyT: Int64?
        var events: [(t: Int64, name: String, data: JSONValue?)] = []
        var used = false
    }

    var commands: [Recorded] = []
    var startEvents: [(t: Int64, name: String, data: JSONValue?)] = []
    var greetingT: Int64 = 0
    var fallbackToModel: Bool
    /// The QEMU version of the recorded greeting, if the trace has one.
    public private(set) var greetingVersion: MockQEMUVersion?
    public private(set) var misses: [String] = []

    /// Reads a trace.
    ///
    /// - Parameters:
    ///   - fallbackToModel: answer unrecorded commands with the built-in model instead of an error.
    /// - Throws: ``MockError`` `.scenario` naming the line and what is wrong with it.
    public init(parsing bytes: [UInt8], name: String = "trace", fallbackToModel: Bool = false) throws(MockError) {
        self.fallbackToModel = fallbackToModel
        var pendingByChannel: [String: [Int]] = [:]
        var lastCommand: Int?
        var seenEvents: Set<[UInt8]> = []
        var lineNumber = 0
        for line in bytes.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: true) {
            lineNumber += 1
            let context = "\(name):\(lineNumber)"
            let trimmed = Array(line.drop { $0 == 32 || $0 == 9 || $0 == 13 })
            if trimmed.isEmpty { continue }
            let record: JSONValue
            do {
                record = try JSONValue(parsing: line)
            } catch {
                throw .scenario("\(context): not a JSON object (\(error.message)); each trace line is one record")
            }
            guard let dir = record["dir"]?.stringValue, let text = record["msg"]?.stringValue,
                let t = record["t"]?.int64Value
            else { throw .scenario("\(context): a record needs \"t\" (µs), \"dir\" and \"msg\"") }
            let client = record["client"]?.int64Value ?? 0
            let msgBytes = Array(text.utf8)
            // Output grammar: QEMU's replies may hold `inf`/`nan` (client input parses the same).
            guard case .success(let message) = QMPMessage.parseOutput(msgBytes) else {
                throw .scenario("\(context): \"msg\" is not a QMP message")
            }
            switch dir {
            case "client-to-qemu", "sidecar-to-qemu":
                guard let commandName = message.string(.execute) ?? message.string(.execOOB) else { continue }
                let args = message.jsonValue(.arguments) ?? .object([])
                // Negotiation is the model's: kept in the pairing (its reply is on the channel) but never played.
                commands.append(
                    Recorded(name: commandName, arguments: args, t: t, used: commandName == "qmp_capabilities"))
                let channel = dir == "client-to-qemu" ? "client \(client)" : "sidecar"
                pendingByChannel[channel, default: []].append(commands.count - 1)
                if commandName != "qmp_capabilities" { lastCommand = commands.count - 1 }
            case "qemu-to-client", "qemu-to-sidecar":
                if message.range(of: .qmp) != nil {
                    greetingT = t
                    if let version = message.jsonValue(.qmp)?["version"], let qemu = version["qemu"],
                        let major = qemu["major"]?.int64Value, let minor = qemu["minor"]?.int64Value,
                        let micro = qemu["micro"]?.int64Value
                    {
                        greetingVersion = MockQEMUVersion(
                            major: Int(major), minor: Int(minor), micro: Int(micro),
                            package: version["package"]?.stringValue ?? "")
                    }
                } else if let eventName = message.string(.event) {
                    // One QEMU event reaches every client: keep it once (same bytes, timestamp included).
                    guard seenEvents.insert(msgBytes).inserted else { continue }
                    let data = message[.data].map { JSONValue.raw(Array($0)) }
                    if let lastCommand {
                        commands[lastCommand].events.append((t, eventName, data))
                    } else {
                        startEvents.append((t, eventName, data))
                    }
                } else if message.returnValue != nil || message.range(of: .error) != nil {
                    let channel = dir == "qemu-to-client" ? "client \(client)" : "sidecar"
                    guard var queue = pendingByChannel[channel], !queue.isEmpty else { continue }
                    let index = queue.removeFirst()
                    pendingByChannel[channel] = queue
                    if let value = message[.returnValue] {
                        commands[index].reply = .success(.raw(Array(value)))
                    } else if let error = message[.error] {
                        commands[index].reply = .failure(.raw(Array(error)))
                    }
                    commands[index].replyT = t
                }
            default:
                continue
            }
        }
    }

    public mutating func decide(command: String, arguments: JSONValue?, fdCount: Int) -> MockScriptDecision? {
        let args = normalizedArguments(arguments)
        guard
            let index = commands.firstIndex(where: {
                !$0.used && $0.reply != nil && $0.name == command && $0.arguments.matches(args)
            })
        else {
            misses.append("no recorded reply for \(command) \(args.text)")
            if fallbackToModel { return nil }
            return MockScriptDecision(
                reply: .error("GenericError", "qmp-mock replay: no recorded reply for \(command) \(args.text)"))
        }
        commands[index].used = true
        let recorded = commands[index]
        let anchor = recorded.replyT ?? recorded.t
        let events = recorded.events.map {
            MockScriptEvent(delayNanoseconds: max(0, $0.t - anchor) * 1000, name: $0.name, data: $0.data)
        }
        return MockScriptDecision(reply: recorded.reply!, events: events)
    }

    public mutating func eventsAfterNegotiation() -> [MockScriptEvent] {
        startEvents.map {
            MockScriptEvent(delayNanoseconds: max(0, $0.t - greetingT) * 1000, name: $0.name, data: $0.data)
        }
    }

    public var unmetExpectations: [String] {
        misses
            + commands.filter { !$0.used && $0.reply != nil }.map {
                "recorded \($0.name) \($0.arguments.text) was not replayed"
            }
    }
}
