import Testing

@testable import QMPWire

@Suite("QMPOutputFramer")
struct OutputFramerTests {
    @Test("splits QEMU output: CRLF lines, pretty=on, inf, braces in strings, any split")
    func output() throws {
        let stream = Array(
            ("{\"QMP\": {\"version\": {}, \"capabilities\": [\"oob\"]}}\r\n"
                + "{\"return\": {\"x\": -inf, \"y\": nan, \"s\": \"}\\\"{\"}, \"id\": 1}\r\n"
                + "{\n    \"return\": {\n    }\n}\r\n").utf8)
        var whole = QMPOutputFramer()
        let messages = whole.append(stream)
        #expect(messages.count == 3)
        #expect(messages.allSatisfy { $0.first == UInt8(ascii: "{") && $0.last == UInt8(ascii: "}") })
        let reply = try QMPMessage.parseOutput(messages[1]).get()
        #expect(text(reply[.id]!) == "1")
        #expect(QMPMessage.parseOutput(messages[2]).isSuccess)
        for cut in 0...stream.count {
            var framer = QMPOutputFramer()
            #expect(framer.append(stream[..<cut]) + framer.append(stream[cut...]) == messages, "cut \(cut)")
        }
    }

    @Test("framing with the scan splits as the byte-wise framer, and scans what the grammar parses")
    func scannedFraming() throws {
        let stream = Array(
            ("\r\n{\"return\": {\"s\": \"}]\\\"{[\"}, \"id\": 1}\r\n[1, {\"a\": 2}]\r\n"
                + "{\"i\\u0064\": 5}\r\n{\"event\": \"X\", \"data\": {\"b\": [[], {}]}, \"timestamp\": {}}\r\n"
                + "{\"a\": [1}, \"b\": 2]}\r\n{\n    \"return\": {\n    }\n}\r\n").utf8)
        var reference = QMPOutputFramer()
        let messages = reference.append(stream)
        #expect(messages.count == 6)
        for cut in 0...stream.count {
            var framer = QMPOutputFramer()
            var units: [(bytes: [UInt8], scanned: QMPMessage?)] = []
            for piece in [stream[..<cut], stream[cut...]] {
                piece.withUnsafeBytes { raw in
                    framer.append(
                        raw, scanned: { units.append(($0.bytes, $0)) }, unscanned: { units.append(($0, nil)) })
                }
            }
            #expect(units.map(\.bytes) == messages, "cut \(cut)")
            for unit in units {
                if let message = unit.scanned {
                    #expect(message == (try QMPMessage.parseOutput(message.bytes).get()), "cut \(cut)")
                } else {
                    #expect(QMPMessage.scanOutput(unit.bytes) == nil, "cut \(cut): \(text(unit.bytes))")
                }
            }
            // The top-level array, the escaped key and the mismatched brackets are left to the grammar.
            #expect(units.filter { $0.scanned != nil }.count == 3, "cut \(cut)")
        }
    }

    @Test("the structural scan finds the members the output grammar finds")
    func scanMatchesGrammar() throws {
        let lines = [
            #"{"return": {"status": "running", "singlestep": false, "running": true}, "id": 1}"#,
            #"{"id": "libvirt-7", "return": {}}"#,
            #"{"return": [], "id": {"a": ["}", "\"{"]}, "x": -inf}"#,
            #"{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "DEVICE_DELETED", "data": {"device": "h"}}"#,
            #"{"error": {"class": "GenericError", "desc": "x \u00e9"}}"#,
            "{\n    \"return\": {\n    },\n    \"id\": 3\n}",
            #"{"QMP": {"version": {"qemu": {"micro": 0}}, "capabilities": ["oob"]}}"#,
            #"{"return": nan, "id": -1.5e+3}"#,
            "{}",
        ]
        for line in lines {
            let bytes = Array(line.utf8)
            let scanned = try #require(QMPMessage.scanOutput(bytes), "scan of \(line)")
            #expect(scanned == (try QMPMessage.parseOutput(bytes).get()), "\(line)")
            #expect(scanned.replacingID(with: 9) == (try QMPMessage.parseOutput(bytes).get()).replacingID(with: 9))
        }
        // What QEMU's writer never prints falls back to the grammar.
        for line in [
            #"{"i\u0064": 1}"#, #"{"id": 1, "id": 2}"#, "[1]", #"{"return" 1}"#, #"{"return": }"#, #"{"a": 1,}"#,
        ] {
            #expect(QMPMessage.scanOutput(Array(line.utf8)) == nil, "\(line)")
        }
    }
}
