import QMPWire

/// One unit of client input, as the framer and parser delivered it.
public enum MockInputUnit: Sendable, Equatable {
    /// Input QEMU's JSON parser rejects; `desc` is QEMU's text. Answered with an id-less GenericError.
    case invalid(desc: String)
    /// A complete JSON value; `id` is the value QEMU would echo (usually `.raw` bytes from the wire layer).
    case message(JSONValue, id: JSONValue?)
}

/// What the I/O shell must do after feeding the model an input; performed in order.
public enum MockAction: Sendable, Equatable {
    /// Write `bytes` (whole QMP lines) to the client.
    case send(client: Int, bytes: [UInt8])
    /// Call ``MockMachine/timerFired(_:now:)`` with `timer` after the delay.
    case schedule(timer: Int, afterNanoseconds: Int64)
    /// Close the client's connection (after the preceding sends).
    case disconnect(client: Int)
    /// Exit the whole process at once with `status` (fault injection: QEMU dying mid-command).
    case exit(status: Int32)
    /// Something a person watching the mock wants in the log (group fd opened/closed, fault fired).
    case note(String)
}

/// A reply the model or a script produced: a `return` value or an `error` object.
public enum MockReply: Sendable, Equatable {
    case success(JSONValue)
    case failure(JSONValue)

    static func error(_ errorClass: String, _ desc: String) -> MockReply {
        .failure(.object([JSONMember("class", .string(errorClass)), JSONMember("desc", .string(desc))]))
    }

    /// The reply as QEMU writes it: `{"return": ...}` or `{"error": ...}`, then the echoed `id`.
    func line(id: JSONValue?) -> [UInt8] {
        var members: [JSONMember]
        switch self {
        case .success(let value): members = [JSONMember("return", value)]
        case .failure(let error): members = [JSONMember("error", error)]
        }
        if let id { members.append(JSONMember("id", id)) }
        return JSONValue.object(members).qemuLine
    }
}

extension MockReply: Error {}

/// An event a script asks for, `delay` nanoseconds after its reply (or after negotiation).
public struct MockScriptEvent: Sendable, Equatable {
    public var delayNanoseconds: Int64
    public var name: String
    public var data: JSONValue?

    public init(delayNanoseconds: Int64, name: String, data: JSONValue?) {
        self.delayNanoseconds = delayNanoseconds
        self.name = name
        self.data = data
    }
}

/// A scripted answer to one command.
public struct MockScriptDecision: Sendable, Equatable {
    public var reply: MockReply
    public var events: [MockScriptEvent]

    public init(reply: MockReply, events: [MockScriptEvent] = []) {
        self.reply = reply
        self.events = events
    }
}

/// Scripted behaviour consulted before the built-in model: scenarios and replays.
public protocol MockScript: Sendable {
    /// Decides the reply to a negotiated command, or nil to let the built-in model answer it.
    ///
    /// - Parameter fdCount: how many descriptors arrived (SCM_RIGHTS) with the command's bytes.
    mutating func decide(command: String, arguments: JSONValue?, fdCount: Int) -> MockScriptDecision?
    /// Events to send once a client has negotiated (their delays count from then).
    mutating func eventsAfterNegotiation() -> [MockScriptEvent]
    /// What is left unplayed, for the final report (empty when the script ran completely).
    var unmetExpectations: [String] { get }
    /// Events to send after the model answered a command the script only expected (no canned reply).
    mutating func takePendingEvents() -> [MockScriptEvent]
}

extension MockScript {
    public mutating func takePendingEvents() -> [MockScriptEvent] { [] }
}
