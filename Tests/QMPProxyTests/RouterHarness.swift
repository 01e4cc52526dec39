import QMPWire

@testable import QMPProxy

/// QEMU 7.2's greeting as the real one sends it (Debian 12 build).
let qemuGreeting =
    #"{"QMP": {"version": {"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": "Debian 1:7.2+dfsg-7+deb12u18+b3"}, "capabilities": ["oob"]}}"#
    + "\r\n"

/// Drives a ``ProxyRouter`` like the I/O shell does and records what each side would receive.
struct RouterHarness {
    var router: ProxyRouter
    /// Bytes written to each client so far.
    var clientOutput: [Int: String] = [:]
    /// Messages (as text, CRLF trimmed) written upstream, with their fds.
    var upstream: [(text: String, fds: [Int32])] = []
    var closed: [Int32] = []
    var disconnected: [Int] = []
    var events: [(name: String, line: String)] = []
    var other: [ProxyRouter.Action] = []

    /// The default configuration lets one client have several commands at QEMU, so routing tests
    /// do not depend on the scheduler's bound (``FairSchedulingTests`` sets it explicitly).
    init(
        configuration: ProxyRouter.Configuration = .init(maxClientInFlight: 8), greeting: String? = qemuGreeting,
        ready: Bool = true
    ) {
        router = ProxyRouter(configuration: configuration)
        if let greeting {
            feedUpstream(greeting)
            if ready {
                // The sidecar's own negotiation is the first upstream message: answer it.
                let id = upstreamID(upstream.count - 1)
                upstream.removeAll()
                feedUpstream("{\"return\": {}, \"id\": \(id)}\r\n")
            }
        }
    }

    mutating func perform(_ actions: [ProxyRouter.Action]) {
        for action in actions {
            switch action {
            case .sendToClient(let id, let bytes):
                clientOutput[id, default: ""] += String(decoding: bytes, as: UTF8.self)
            case .sendUpstream(let bytes, let fds):
                upstream.append((String(decoding: bytes, as: UTF8.self).trimmingCRLF, fds))
            case .closeFDs(let fds): closed += fds
            case .disconnectClient(let id): disconnected.append(id)
            case .event(let name, let message):
                let line = message.bytes + [0x0D, 0x0A]
                events.append((name, String(decoding: line, as: UTF8.self)))
                perform(router.broadcastEvent(line))
            default: other.append(action)
            }
        }
    }

    mutating func feedUpstream(_ text: String) {
        perform(router.upstreamReceived(Array(text.utf8)))
    }

    mutating func connect(_ id: Int) {
        perform(router.clientConnected(id))
    }

    mutating func send(_ id: Int, _ text: String, fds: [Int32] = []) {
        perform(router.clientReceived(id, Array(text.utf8), fds: fds))
    }

    /// Connects and negotiates a client, clearing its output.
    mutating func negotiated(_ id: Int, oob: Bool = false) {
        connect(id)
        send(
            id,
            oob
                ? #"{"execute":"qmp_capabilities","arguments":{"enable":["oob"]}}"#
                : #"{"execute":"qmp_capabilities"}"#)
        clientOutput[id] = ""
    }

    /// Takes and clears what the client received.
    mutating func take(_ id: Int) -> String {
        defer { clientOutput[id] = "" }
        return clientOutput[id] ?? ""
    }

    /// QEMU answers the upstream message at `index` with `{"return": {}}`.
    mutating func replyUpstream(_ index: Int) {
        feedUpstream(#"{"return": {}, "id": \#(upstreamID(index))}"# + "\r\n")
    }

    /// The sidecar id of the upstream message at `index`.
    func upstreamID(_ index: Int) -> String {
        let bytes = Array(upstream[index].text.utf8)
        guard case .success(let message) = QMPMessage.parse(bytes), let id = message.id else { return "?" }
        return String(decoding: bytes[id], as: UTF8.self)
    }
}

extension String {
    var trimmingCRLF: String {
        var scalars = Substring(self).unicodeScalars
        while let last = scalars.last, last == "\n" || last == "\r" { scalars.removeLast() }
        return String(scalars)
    }
}
