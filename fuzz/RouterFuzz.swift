// libFuzzer target for QMPProxy's ProxyRouter: two well-behaved clients, one client sending the fuzzer's
// bytes (with fds), and a fake QEMU, their byte streams cut and interleaved as the input says.
// Checked: every well-behaved client gets exactly its replies, in order, with its ids restored as QEMU
// echoes them, and every event; every line any client gets is one QEMU-shaped message; every fd handed
// to the router leaves it exactly once; the sidecar's own replies never reach a client; no crash.
// Built by fuzz/run.sh with Sources/QMPProxy/*.swift in this module and QMPWire as a module.
import QMPWire

func fuzzFail(_ message: String) -> Never {
    fatalError("fuzz invariant broken: \(message)")
}

/// Client ids as sent, and as QEMU 7.2 echoes them (nil: no id member).
private let ids: [(sent: String?, echoed: String?)] = [
    ("1", "1"), ("\"a\"", "\"a\""), ("'q'", "\"q\""), ("{\"x\": 'y'}", "{\"x\": \"y\"}"),
    ("[1, \"two\"]", "[1, \"two\"]"), (nil, nil), ("-5", "-5"), ("\"\\u00e9\"", "\"\\u00E9\""),  // QEMU writes \\u in upper case
]

/// The fuzzer's bytes, read as a script.
private struct Script {
    let bytes: UnsafeBufferPointer<UInt8>
    var at = 0
    var done: Bool { at >= bytes.count }
    mutating func next() -> Int {
        guard at < bytes.count else { return 0 }
        defer { at += 1 }
        return Int(bytes[at])
    }
    mutating func take(_ count: Int) -> [UInt8] {
        let end = min(bytes.count, at + count)
        defer { at = end }
        return Array(bytes[at..<end])
    }
}

/// QEMU as the router sees it: answers every command with its arguments, in order.
private struct FakeQEMU {
    var framer = QMPFramer()
    var output: [UInt8] = Array(
        #"{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}, "package": ""}, "capabilities": ["oob"]}}"#
            .utf8) + [13, 10]
    var negotiated = false
    var events = 0

    mutating func receive(_ bytes: [UInt8]) {
        for case .message(let message, _) in framer.append(bytes) {
            guard case .success(let command) = QMPMessage.parse(message) else {
                fuzzFail("the router sent QEMU an invalid message")
            }
            if command.string(.execute) == "qmp_capabilities" { negotiated = true }
            var reply = Array("{\"return\": ".utf8) + (command[.arguments].map(Array.init) ?? Array("{}".utf8))
            if let id = command[.id] {
                guard let echoed = QMPJSON.echoed(id) else { fuzzFail("the router sent an id QEMU cannot echo") }
                reply += Array(", \"id\": ".utf8) + echoed
            }
            output += reply + Array("}\r\n".utf8)
        }
    }

    mutating func event() {
        events += 1
        output += Array(
            "{\"timestamp\": {\"seconds\": 1, \"microseconds\": 2}, \"event\": \"EV\", \"data\": {\"n\": \(events)}}\r\n"
                .utf8)
    }
}

private struct Harness {
    var router: ProxyRouter
    var qemu = FakeQEMU()
    /// Bytes each client has written and the router not yet read.
    var outbox: [Int: [UInt8]] = [:]
    var reading: Set<Int> = []
    var received: [Int: [UInt8]] = [:]
    var sentCommands: [Int: Int] = [1: 0, 2: 0]
    var localTokens: [(UInt64, [UInt8])] = []
    var internalTokens: Set<UInt64> = []
    var fdsIn: [Int32] = []
    var fdsOut: [Int32] = []
    var nextFD: Int32 = 1000
    var bad = 3
    /// Bytes handed to the router so far, from clients and QEMU: only ever grows, so a drain round
    /// that moved anything is told from one that did not (buffer sizes alone can come out equal).
    var moved = 0

    init(configuration: ProxyRouter.Configuration) {
        router = ProxyRouter(configuration: configuration)
        for id in [1, 2, bad] { connect(id) }
        // The well-behaved clients negotiate at once (before any event), so they must see every event.
        for id in [1, 2] { perform(router.clientReceived(id, Array(#"{"execute": "qmp_capabilities"}"#.utf8))) }
    }

    mutating func connect(_ id: Int) {
        reading.insert(id)
        outbox[id] = []
        perform(router.clientConnected(id))
    }

    mutating func perform(_ actions: [ProxyRouter.Action]) {
        for action in actions {
            switch action {
            case .sendToClient(let id, let bytes): received[id, default: []] += bytes
            case .sendUpstream(let bytes, let fds):
                fdsOut += fds
                qemu.receive(bytes)
            case .closeFDs(let fds): fdsOut += fds
            case .disconnectClient: break
            case .setClientReading(let id, let enabled):
                if enabled { reading.insert(id) } else { reading.remove(id) }
            // As the sidecar does: the parsed message without its line end, broadcast as one line.
            case .event(_, let message): perform(router.broadcastEvent(message.bytes + [0x0D, 0x0A]))
            case .localCommand(_, let token, _, let arguments):
                localTokens.append((token, arguments ?? Array("{}".utf8)))
            case .internalReply(let token, _):
                guard internalTokens.remove(token) != nil else { fuzzFail("internal reply for an unknown token") }
            case .upstreamReady, .upstreamFailed, .commandObserved, .observedReply, .warning, .trace,
                .commandForwarded, .replyRouted, .clientNegotiated:
                break
            }
        }
    }

    /// A well-behaved client's next command: a local one now and then, its arguments name it.
    mutating func command(_ client: Int, local: Bool) {
        let k = sentCommands[client]!
        sentCommands[client] = k + 1
        let name = local ? "__local" : "query-\(k)"
        var text = "{\"execute\": \"\(name)\", \"arguments\": {\"c\": \(client), \"k\": \(k)}"
        if let id = ids[k % ids.count].sent { text += ", \"id\": \(id)" }
        outbox[client]! += Array((text + "}").utf8)
    }

    mutating func deliver(_ client: Int, _ count: Int) {
        guard reading.contains(client), let pending = outbox[client], !pending.isEmpty else { return }
        let chunk = Array(pending.prefix(count))
        outbox[client] = Array(pending.dropFirst(chunk.count))
        moved += chunk.count
        perform(router.clientReceived(client, chunk))
    }

    mutating func deliverQEMU(_ count: Int) {
        let chunk = Array(qemu.output.prefix(count))
        qemu.output.removeFirst(chunk.count)
        moved += chunk.count
        if !chunk.isEmpty { perform(router.upstreamReceived(chunk)) }
    }

    mutating func completeLocals() {
        let tokens = localTokens
        localTokens = []
        for (token, arguments) in tokens { perform(router.completeLocalCommand(token: token, reply: .success(arguments))) }
    }

    /// Until nothing moves: clients' bytes in, the gate open (the sidecar opens it after each upstream
    /// negotiation), local commands answered, QEMU's output in.
    mutating func drain() {
        for _ in 0..<100_000 {
            let before = progress
            for id in outbox.keys.sorted() { deliver(id, .max) }
            perform(router.openClientGate())
            completeLocals()
            deliverQEMU(.max)
            if before == progress { return }
        }
        fuzzFail("no progress while draining")
    }

    private var progress: [Int] {
        var waiting = 0
        for bytes in outbox.values { waiting += bytes.count }
        var got = 0
        for bytes in received.values { got += bytes.count }
        return [moved, waiting, qemu.output.count, localTokens.count, router.gatedCommands, got]
    }

    /// Every line a client got is one QEMU-shaped message ending in CRLF.
    func lines(of client: Int) -> [QMPMessage] {
        let bytes = received[client] ?? []
        var messages: [QMPMessage] = []
        var start = 0
        for (index, byte) in bytes.enumerated() where byte == 0x0A {
            guard index > start, bytes[index - 1] == 0x0D else { fuzzFail("client \(client): a line without CRLF") }
            guard case .success(let message) = QMPMessage.parseOutput(Array(bytes[start..<index - 1])) else {
                fuzzFail("client \(client): a line that is not one message")
            }
            messages.append(message)
            start = index + 1
        }
        if start != bytes.count { fuzzFail("client \(client): output does not end with a whole line") }
        return messages
    }

    func check() {
        for client in [1, 2] {
            let messages = lines(of: client)
            guard messages.count >= 2, messages[1].returnValue != nil, messages[1].id == nil else {
                fuzzFail("client \(client): no greeting and negotiation reply")
            }
            var k = 0
            var events = 0
            for message in messages.dropFirst(2) {
                if message.event != nil {
                    events += 1
                    guard message.jsonValue(.data)?["n"]?.int64Value == Int64(events) else {
                        fuzzFail("client \(client): event out of order or missing")
                    }
                    continue
                }
                let expected = "{\"c\": \(client), \"k\": \(k)}"
                guard let value = message[.returnValue], String(decoding: value, as: UTF8.self) == expected else {
                    fuzzFail("client \(client): reply \(k) is not its own: \(String(decoding: message.bytes, as: UTF8.self))")
                }
                let id = message[.id].map { String(decoding: $0, as: UTF8.self) }
                if id != ids[k % ids.count].echoed { fuzzFail("client \(client): id \(id ?? "none") not restored") }
                k += 1
            }
            if k != sentCommands[client]! { fuzzFail("client \(client): \(sentCommands[client]! - k) replies lost") }
            if events != qemu.events { fuzzFail("client \(client): \(qemu.events - events) events lost") }
        }
        _ = lines(of: bad)
        if !internalTokens.isEmpty { fuzzFail("the sidecar's own command got no reply") }
    }
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    var script = Script(bytes: UnsafeBufferPointer(start: data, count: size))
    let flags = script.next()
    var harness = Harness(
        configuration: .init(
            localCommands: ["__local"], gateClientCommands: flags & 1 != 0, maxClientQueue: 1 + (flags >> 1) % 8,
            maxClientInFlight: 1 + (flags >> 4) % 2, maxLoneClientInFlight: 1 + (flags >> 5) % 3))
    while !script.done {
        switch script.next() % 12 {
        case 0: harness.command(1, local: false)
        case 1: harness.command(2, local: script.next() % 4 == 0)
        case 2: harness.deliver(1, 1 + script.next())
        case 3: harness.deliver(2, 1 + script.next())
        case 4: harness.deliverQEMU(1 + script.next() * 4)
        case 5: if harness.qemu.negotiated { harness.qemu.event() }
        case 6:
            // The fuzzer's own client: raw bytes, sometimes with fds attached.
            let bytes = script.take(1 + script.next() % 64)
            var fds: [Int32] = []
            for _ in 0..<(script.next() % 3 == 0 ? 1 + script.next() % 3 : 0) {
                fds.append(harness.nextFD)
                harness.nextFD += 1
            }
            harness.fdsIn += fds
            if harness.reading.contains(harness.bad) {
                harness.perform(harness.router.clientReceived(harness.bad, bytes, fds: fds))
            } else {
                harness.fdsOut += fds  // not read: the kernel keeps them; the test closes them
            }
        case 7:
            harness.perform(harness.router.clientClosed(harness.bad))
            harness.bad += 1
            harness.connect(harness.bad)
        case 8: harness.perform(harness.router.openClientGate())
        case 9: harness.completeLocals()
        case 10:
            let (token, actions) = harness.router.sendInternalCommand("qom-list", arguments: Array("{\"path\": \"/\"}".utf8))
            harness.internalTokens.insert(token)
            harness.perform(actions)
        default: harness.deliver(harness.bad, 1 + script.next())
        }
    }
    harness.drain()
    harness.check()
    // QEMU goes away: every fd the router still holds leaves it now, and each fd left exactly once.
    harness.perform(harness.router.upstreamClosed())
    if harness.fdsOut.sorted() != harness.fdsIn.sorted() {
        fuzzFail("fds in \(harness.fdsIn.count), out \(harness.fdsOut.count): leaked or closed twice")
    }
    return 0
}
