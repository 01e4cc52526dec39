import Testing

@testable import QMPProxy

/// The express lane (`expressCommand`, `expressReply`) is header prediction: on a read it takes, the
/// router must end in the state the general path leaves and return the bytes of the general path's
/// only action; on any other read it must change nothing. Checked by running two routers side by
/// side, one with the lane in front of the general path, over random traffic: commands plain, local,
/// observed, OOB, malformed, split or batched, with all kinds of ids; replies in order, batched with
/// events, batched with each other, split; round trips as a lone client makes them; clients coming and going. Every step's
/// actions must be equal.
@Suite struct ExpressLaneTests {
    private static let configurations: [ProxyRouter.Configuration] = [
        .init(),
        .init(localCommands: ["query-sidecar"], observedCommands: ["device_del"], maxClientInFlight: 1),
        .init(maxClientQueue: 2, maxClientInFlight: 2, maxLoneClientInFlight: 4),
        .init(tracing: true),
        .init(reportsRoundTrips: true),
    ]

    /// Client input: the express lane may take only the first few shapes.
    private static let commands: [String] = [
        #"{"execute": "query-status", "id": "libvirt-ID"}"# + "\r\n",
        #"{"execute":"query-status","id":ID}"# + "\n",
        #"{"execute": "qom-get", "arguments": {"path": "/machine", "property": "type"}, "id": "__qmp#ID"}"#,
        #"{"execute": "query-name"}"# + "\n",
        #"{"id": "x\u0041ID", "execute": "query-kvm"}"#,
        #"{"execute": "query-status", "id": ID.50}"#,
        #"{'execute': 'query-status', 'id': 'sqID'}"#,
        #"{"execute": "query-sidecar", "id": ID}"#,
        #"{"execute": "device_del", "arguments": {"id": "hostdev0"}, "id": ID}"#,
        #"{"exec-oob": "migrate-pause", "id": ID}"#,
        #"{"execute": "query-status", "execute": "stop"}"#,
        #"{"execute": "query-status", "id": ID"#,
        #"{"execute": "query-status", "id": ID}{"execute": "query-name", "id": 2ID}"#,
        #"  {"execute": "query-status", "id": ID}"#,
        #"{"execute": "query-status", "id": ID} x"#,
        #"{"id": ID}"#,
        "[1, 2]\n",
        "}",
    ]

    /// QEMU's replies: mostly the shape the lane predicts, some it must refuse (an error, an id in the
    /// value or in a string, a line end of LF alone, a leading zero).
    private static let replies: [String] = [
        #"{"return": {"status": "running"}, "id": ID}"# + "\r\n",
        #"{"return": {"status": "running"}, "id": ID}"# + "\r\n",
        #"{"return": {}, "id": ID}"# + "\r\n",
        #"{"return": {"id": ID}, "id": ID}"# + "\r\n",
        #"{"return": "x, \"id\": ID}", "id": ID}"# + "\r\n",
        #"{"return": [1, 2], "id": ID}"# + "\n",
        #"{"id": ID, "error": {"class": "GenericError", "desc": "no"}}"# + "\r\n",
        #"{"return": 1, "id": 0ID}"# + "\r\n",
    ]

    private static func reply(to id: String, using random: inout Xorshift) -> String {
        replies[Int.random(in: 0..<replies.count, using: &random)].replacing("ID", with: id)
    }

    private static func event(_ name: String) -> String {
        #"{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "\#(name)"}"# + "\r\n"
    }

    @Test(arguments: 0..<5, [21, 22, 23] as [UInt64])
    func expressLaneLeavesTheRouterAsTheGeneralPathDoes(configuration index: Int, seed: UInt64) {
        let configuration = Self.configurations[index]
        var random = Xorshift(seed: seed)
        var general = ProxyRouter(configuration: configuration)
        var express = ProxyRouter(configuration: configuration)
        /// Sidecar ids at QEMU, in the order QEMU answers them (in-band first come, first served).
        var atQEMU: [String] = []
        var expressCommands = 0
        var expressReplies = 0

        func compare(_ a: [ProxyRouter.Action], _ b: [ProxyRouter.Action], _ step: Int) {
            #expect(a == b, "step \(step)")
            // Every sidecar id of every command sent: an action may carry several lines, the id keeps
            // the client's spacing, and a `device_del`'s arguments hold an "id" that is no number.
            for case .sendUpstream(let bytes, _) in a {
                let text = String(decoding: bytes, as: UTF8.self)
                for range in text.ranges(of: #""id":"#) {
                    let digits = text[range.upperBound...].drop { $0 == " " }.prefix { $0.isNumber }
                    if !digits.isEmpty { atQEMU.append(String(digits)) }
                }
            }
            // Local commands are answered alike on both sides.
            for case .localCommand(_, let token, _, _) in a {
                let reply = ProxyRouter.LocalReply.success(Array("{}".utf8))
                compare(
                    general.completeLocalCommand(token: token, reply: reply),
                    express.completeLocalCommand(token: token, reply: reply), step)
            }
        }
        func fromQEMU(_ text: String, _ step: Int) {
            let bytes = Array(text.utf8)
            let a = general.upstreamReceived(bytes)
            let b: [ProxyRouter.Action]
            var line: [UInt8] = Array("stale".utf8)
            if let (client, sidecarID) = bytes.withUnsafeBytes({ express.expressReply($0, line: &line) }) {
                // With round-trip reports (metrics) the general path also reports the command's id.
                b =
                    (configuration.reportsRoundTrips ? [.replyRouted(sidecarID: sidecarID)] : []) + [
                        .sendToClient(client, line)
                    ]
                expressReplies += 1
            } else {
                b = express.upstreamReceived(bytes)
            }
            compare(a, b, step)
        }
        func fromClient(_ client: Int, _ text: String, _ step: Int) {
            let bytes = Array(text.utf8)
            let a = general.clientReceived(client, bytes)
            let b: [ProxyRouter.Action]
            var line: [UInt8] = Array("stale".utf8)
            if let sidecarID = bytes.withUnsafeBytes({ express.expressCommand(client, $0, line: &line) }) {
                b =
                    (configuration.reportsRoundTrips ? [.commandForwarded(sidecarID: sidecarID)] : []) + [
                        .sendUpstream(line, fds: [])
                    ]
                expressCommands += 1
            } else {
                b = express.clientReceived(client, bytes)
            }
            compare(a, b, step)
        }

        fromQEMU(qemuGreeting, -1)
        fromQEMU(#"{"return": {}, "id": \#(atQEMU.removeFirst())}"# + "\r\n", -1)
        var connected: Set<Int> = []
        for step in 0..<4_000 {
            // Busy stretches (three clients, replies lagging) alternate with quiet ones, where QEMU
            // catches up and then one client at a time makes round trips as a lone client does.
            let quiet = step / 250 % 2 == 1
            let client = quiet ? step / 500 % 3 + 1 : Int.random(in: 1...3, using: &random)
            switch quiet && connected.contains(client)
                ? (atQEMU.isEmpty ? 20 : 16) : Int.random(in: 0..<24, using: &random)
            {
            case 20..<24:
                // A round trip as a lone client makes it: a plain command, then QEMU's oldest reply.
                guard connected.contains(client) else { continue }
                let shape = Self.commands[Int.random(in: 0..<4, using: &random)]
                fromClient(client, shape.replacing("ID", with: "\(step)"), step)
                guard !atQEMU.isEmpty else { continue }
                fromQEMU(Self.reply(to: atQEMU.removeFirst(), using: &random), step)
            case 0..<9:
                guard connected.contains(client) else {
                    compare(general.clientConnected(client), express.clientConnected(client), step)
                    fromClient(client, #"{"execute": "qmp_capabilities"}"#, step)
                    connected.insert(client)
                    continue
                }
                // Half the commands have a shape the lane may take (the first four).
                let shapes = Bool.random(using: &random) ? 4 : Self.commands.count
                let shape = Self.commands[Int.random(in: 0..<shapes, using: &random)]
                fromClient(client, shape.replacing("ID", with: "\(step)"), step)
            case 9..<17:
                guard !atQEMU.isEmpty else { continue }
                let reply = Self.reply(to: atQEMU.removeFirst(), using: &random)
                switch Int.random(in: 0..<6, using: &random) {
                case 0:
                    fromQEMU(reply + Self.event("STOP"), step)
                case 5 where !atQEMU.isEmpty:
                    // Two replies in one read.
                    fromQEMU(reply + Self.reply(to: atQEMU.removeFirst(), using: &random), step)
                case 1:
                    let cut = reply.index(reply.startIndex, offsetBy: 9)
                    fromQEMU(String(reply[..<cut]), step)
                    fromQEMU(String(reply[cut...]), step)
                default:
                    fromQEMU(reply, step)
                }
            case 17:
                fromQEMU(Self.event("RESUME"), step)
            default:
                guard connected.remove(client) != nil else { continue }
                compare(general.clientClosed(client), express.clientClosed(client), step)
            }
            #expect(general.traffic == express.traffic, "step \(step)")
            #expect(general.commandsInFlight == express.commandsInFlight, "step \(step)")
            #expect(general.clientLoads == express.clientLoads, "step \(step)")
        }
        // The lane must have carried traffic, or this compared nothing; with tracing it stays shut.
        if configuration.tracing {
            #expect(expressCommands == 0 && expressReplies == 0)
        } else {
            #expect(expressCommands > 500 && expressReplies > 500, "\(expressCommands) \(expressReplies)")
        }
    }
}
