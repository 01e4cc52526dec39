import QMPTestKit
import Testing

@testable import QMPWire

#if canImport(Glibc)
import Glibc
#endif

/// What the framer and parser predict QEMU replies for each unit of `input`.
enum Prediction: Equatable, CustomStringConvertible {
    /// QEMU rejects the unit before dispatch with exactly this reply line.
    case rejected([UInt8])
    /// QEMU dispatches the unit; if it had an id, the reply echoes these bytes.
    case dispatched(echoedID: [UInt8]?)

    var description: String {
        switch self {
        case .rejected(let line): "rejected \(String(decoding: line, as: UTF8.self))"
        case .dispatched(let id): "dispatched id=\(id.map { String(decoding: $0, as: UTF8.self) } ?? "none")"
        }
    }
}

func predict(_ input: [UInt8]) -> [Prediction] {
    var framer = QMPFramer()
    return framer.append(input).map { frame in
        switch frame {
        case .invalid(let error, _):
            return .rejected(Array(QMPBuilder.error(error).dropLast(2)))
        case .message(let bytes, _):
            switch QMPMessage.parse(bytes) {
            case .failure(let error): return .rejected(Array(QMPBuilder.error(error).dropLast(2)))
            case .success(let message): return .dispatched(echoedID: message[.id].flatMap { QMPJSON.echoed($0) })
            }
        }
    }
}

/// The ids the differential test sends; QEMU's echo of each must equal `QMPJSON.echoed`.
let idCorpus: [String] = [
    "1", "-1", "0", "-0", "9223372036854775807", "9223372036854775808", "18446744073709551615",
    "18446744073709551616", "-9223372036854775808", "-9223372036854775809", "123456789012345678901234567890",
    "0.1", "1.5", "-0.0", "1e400", "-1e400", "5e-324", "1.7976931348623157e308", "1E2", "1e-7", "2.5e+10",
    "true", "false", "null", "\"\"", "''", "'single'", "'it\\'s'", "\"dq \\\"x\\\"\"", "'mixed \"q\"'",
    "\"\\u00e9\\u4e2d\"", "\"é中\"", "\"\\ud83d\\ude00\"", "\"😀\"", "\"\\u0000\"", "\"\\u0001\\u001f\\u007f\"",
    "\"\\/\\\\\\b\\f\\n\\r\\t\"", "\"/\"", "\"\u{7F}\"", "\"\\u0080\\u07ff\\u0800\\uffFD\"",
    "[]", "{}", "[1, [2, [3]], {}]", #"{"b":1,"a":2}"#, #"{"a":{"y":[1,{"z":null}],"x":"s"}}"#,
    #"{"id":1,"execute":2,"return":3,"error":4,"event":5,"data":6,"timestamp":7,"seconds":8,"microseconds":9}"#,
    #"{"k0":0,"k1":1,"k2":2,"k3":3,"k4":4,"k5":5,"k6":6,"k7":7,"k8":8,"k9":9,"k10":10,"k11":11,"k12":12}"#,
    #"{"major":7,"minor":2,"micro":22}"#, #"{"micro":22,"minor":2,"major":7}"#, "{'\\u00e9':1,'\\u0000':2}",
]

/// Tricky inputs: each is sent on a fresh connection after negotiation.
let differentialCorpus: [String] =
    framerCorpus + [
        #"{"execute":"query-status"}{"execute":"query-status"}"#,
        "{'execute':'query-status','id':'sq'}",
        #"{"execute":"query-status","id":{"nested":[1,{"x":"}"}]}}"#,
        "garbage{\"execute\":\"query-status\",\"id\":1}",
        "@@@\n{\"execute\":\"query-status\"}",
        "{\"execute\":\"query-status\",\"id\":\"a\\u0000b\"}",
        "{\"execute\":\"query-status\",\"id\":\"\\uDBFF\\uDFFF\"}",
        "{\"execute\":\"query-status\",\"id\":\"\\uDBFF\"}",
        "{\"execute\":\"query-status\",\"id\":\"\\uFDD0\"}",
        "{\"execute\":\"query-status\",\"id\":1,\"id\":2}",
        "[{\"execute\":\"query-status\"}]",
        "{\"execute\":\"query-status\" \"id\":1}",
        "{\"execute\":\"query-status\",\"id\":tru}",
        "{\"execute\":\"query-status\",\"id\":[1,2,]}",
        "{\"execute\":\"query-status\",\"id\":{\"a\" 1}}",
        "{\"execute\":\"query-status\",\"id\":{2:1}}",
        "\"x\\u12\"",
        "{]{\"execute\":\"query-status\"}",
        "[}]{\"execute\":\"query-status\"}",
        "[}{]",
        "}}}]]]:::,,,",
        "'\\'' \"\\\"\" '\\\"'",
        "{\"execute\":\"query-status\",\"arguments\":{},\"id\":\"\u{7F}\u{80}\"}",
        "{\"execute\":\"query-status\",\"id\":\"\u{C0}\u{80}\"}",
        "1.5e+3 -0.25E-2 7e 8",
    ]

@Suite("QEMU differential (real QEMU 7.2)")
struct QEMUDifferentialTests {
    /// Sends `input` (then a terminator that always yields one more error unit, and a sentinel
    /// command) on a fresh, negotiated connection; returns the reply lines before the sentinel's.
    static func qemuReplies(_ qemu: QEMULauncher, _ input: [UInt8], chunk: Int = Int.max) throws -> [[UInt8]] {
        let client = try QMPTestClient(path: qemu.socketPath)
        try client.negotiate()
        var offset = 0
        while offset < input.count {
            let end = min(input.count, offset + chunk)
            try client.send(Array(input[offset..<end]))
            offset = end
        }
        try client.send(Array("\u{01}\n{\"execute\":\"query-name\",\"id\":\"sentinel-3f9\"}".utf8))
        var replies: [[UInt8]] = []
        while true {
            let line = try client.readReply()
            if line == Array(#"{"return": {}, "id": "sentinel-3f9"}"#.utf8) { return replies }
            replies.append(line)
        }
    }

    static func compare(_ qemu: QEMULauncher, _ input: [UInt8], chunk: Int = Int.max) throws {
        let predicted = predict(input + [0x01])
        let replies = try qemuReplies(qemu, input, chunk: chunk)
        let shown = String(decoding: input, as: UTF8.self).debugDescription
        #expect(replies.count == predicted.count, "unit count for \(shown): QEMU \(replies.map { text($0) })")
        for (reply, prediction) in zip(replies, predicted) {
            switch prediction {
            case .rejected(let line):
                #expect(text(reply) == text(line), "for \(shown)")
            case .dispatched(let id):
                let message = try #require(try? QMPMessage.parseOutput(reply).get(), "QEMU reply \(text(reply))")
                #expect(QMPMessage.scanOutput(reply) == message, "scan of QEMU's reply \(text(reply))")
                #expect(!text(reply).contains("JSON parse error"), "for \(shown)")
                #expect(!text(reply).contains("must be a JSON object"), "for \(shown)")
                #expect(message[.id].map { Array($0) } == id, "id echo for \(shown): \(text(reply))")
            }
        }
    }

    @Test(.enabled(if: QEMULauncher.shouldRun, "QEMU 7.2 not installed (apt-get install qemu-system-x86)"))
    func corpus() throws {
        let qemu = try QEMULauncher()
        for input in differentialCorpus {
            try Self.compare(qemu, Array(input.utf8))
        }
        // Several messages in one write, and one write per byte.
        let joined = Array(differentialCorpus.prefix(8).joined(separator: "\n").utf8)
        try Self.compare(qemu, joined)
        try Self.compare(qemu, Array(differentialCorpus[1].utf8), chunk: 1)
        // Raw bytes QEMU's lexer treats specially.
        for raw: [UInt8] in [
            [0xFF], [0xFE, 0x7B, 0x7D], [0x22, 0xC3, 0x28, 0x22], [0x7B, 0x00, 0x7D],
            [0x27, 0xF4, 0x90, 0x80, 0x80, 0x27],
        ] {
            try Self.compare(qemu, raw)
        }
    }

    @Test(.enabled(if: QEMULauncher.shouldRun, "QEMU 7.2 not installed (apt-get install qemu-system-x86)"))
    func idEcho() throws {
        let qemu = try QEMULauncher()
        for id in idCorpus {
            try Self.compare(qemu, Array("{\"execute\":\"query-status\",\"id\":\(id)}".utf8))
        }
    }

    @Test(.enabled(if: QEMULauncher.shouldRun, "QEMU 7.2 not installed (apt-get install qemu-system-x86)"))
    func limits() throws {
        let qemu = try QEMULauncher()
        // Nesting depth 1024 is fine, 1025 is not; what follows the failure is framed anew.
        let ok = String(repeating: "[", count: 1024) + String(repeating: "]", count: 1024)
        try Self.compare(qemu, Array("{\"execute\":\"query-status\",\"id\":\(ok.dropFirst().dropLast())}".utf8))
        let deep = String(repeating: "[", count: 1025) + String(repeating: "]", count: 1025)
        try Self.compare(qemu, Array(deep.utf8))
        // Token count: 2 Mi tokens pass, one more fails. (The 64 MiB size limits are covered by
        // FramerTests only: QEMU's monitor reads one byte per recvmsg, 64 MiB would take minutes.)
        let manyOK = "[" + String(repeating: "1,", count: (1 << 20) - 1) + "1]"
        try Self.compare(qemu, Array(manyOK.utf8))
        let tooMany = "[" + String(repeating: "1,", count: 1 << 20) + "1]{\"execute\":\"query-status\"}"
        try Self.compare(qemu, Array(tooMany.utf8))
    }

    @Test(.enabled(if: QEMULauncher.shouldRun, "QEMU 7.2 not installed (apt-get install qemu-system-x86)"))
    func seededRandomInputs() throws {
        let qemu = try QEMULauncher()
        var rng = SplitMix64(seed: 0x51DE_CA12)
        for round in 0..<300 {
            let input = randomQMPInput(&rng, length: Int(rng.next() % 40) + 1)
            // Every third input goes out in random-sized writes.
            try Self.compare(qemu, input, chunk: round % 3 == 0 ? Int(rng.next() % 5) + 1 : Int.max)
        }
    }

    @Test(.enabled(if: QEMULauncher.shouldRun, "QEMU 7.2 not installed (apt-get install qemu-system-x86)"))
    func buildersMatchQEMU() throws {
        let qemu = try QEMULauncher()
        let client = try QMPTestClient(path: qemu.socketPath)
        try client.negotiate()
        // Error reply with id.
        try client.send("{\"execute\":\"nope\",\"id\":'x\\u00e9'}")
        #expect(
            text(try client.readReply())
                == text(
                    QMPBuilder.error(
                        class: "CommandNotFound", desc: "The command nope has not been found",
                        id: Array("'x\\u00e9'".utf8)
                    ).dropLast(2)))
        // Success reply with id.
        try client.send("{\"execute\":\"query-name\",\"id\":{\"b\":[1.5],\"a\":'q'}}")
        #expect(
            text(try client.readReply())
                == text(
                    QMPBuilder.reply(returnValue: .object([]), id: Array("{\"b\":[1.5],\"a\":'q'}".utf8)).dropLast(2)))
        // An event: rebuild DEVICE_DELETED from its parts and compare byte for byte.
        try client.send(#"{"execute":"device_add","arguments":{"driver":"usb-kbd","id":"k1"}}"#)
        _ = try client.readReply()
        try client.send(#"{"execute":"device_del","arguments":{"id":"k1"}}"#)
        var event: [UInt8] = []
        while event.isEmpty {
            let line = try client.readLine()
            if text(line).contains("DEVICE_DELETED") { event = line }
        }
        let message = try QMPMessage.parseOutput(event).get()
        let stamp = try JSONValue(parsing: message.bytes)["timestamp"]
        let timestamp = QMPTimestamp(
            seconds: try #require(stamp?["seconds"]?.int64Value),
            microseconds: try #require(stamp?["microseconds"]?.int64Value))
        let data: JSONValue = .object([
            JSONMember("device", .string("k1")), JSONMember("path", .string("/machine/peripheral/k1")),
        ])
        #expect(text(QMPBuilder.event(name: "DEVICE_DELETED", data: data, at: timestamp).dropLast(2)) == text(event))
    }

    /// QEMU's monitor reads one byte per recvmsg: 64 MiB takes minutes, so this runs on demand
    /// (`QMP_SIDECAR_SLOW_QEMU_TESTS=1 swift test --filter sizeLimits`).
    @Test(.slowQEMU)
    func sizeLimits() throws {
        let qemu = try QEMULauncher()
        // One token above 64 MiB: QEMU cuts it and lexes the rest of it as new input.
        var huge = Array("{\"execute\":\"query-status\",\"id\":\"".utf8)
        huge += [UInt8](repeating: UInt8(ascii: "a"), count: (64 << 20) + 5)
        huge += Array("\"}\n\"\n{\"execute\":\"query-status\"}".utf8)
        try Self.compare(qemu, huge)
    }

    /// See ``sizeLimits()``: on demand only.
    @Test(.slowQEMU)
    func messageSizeLimit() throws {
        let qemu = try QEMULauncher()
        // A message whose tokens add up to more than 64 MiB.
        let piece = "\"" + String(repeating: "b", count: 1 << 20) + "\","
        let big = "[" + String(repeating: piece, count: 64) + "1]"
        try Self.compare(qemu, Array(big.utf8))
    }
}

extension Trait where Self == ConditionTrait {
    /// Tests that feed QEMU tens of MiB (minutes each): only with QEMU and `QMP_SIDECAR_SLOW_QEMU_TESTS` set.
    static var slowQEMU: Self {
        .enabled(
            if: QEMULauncher.isAvailable && getenv("QMP_SIDECAR_SLOW_QEMU_TESTS") != nil,
            "slow: set QMP_SIDECAR_SLOW_QEMU_TESTS=1")
    }
}
