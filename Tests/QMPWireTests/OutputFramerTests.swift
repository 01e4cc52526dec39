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

    @Test("no input limits: a reply with more than 2 Mi tokens is one message")
    func manyTokens() {
        let reply = Array(("{\"return\": [" + String(repeating: "1, ", count: 1_100_000) + "1], \"id\": 2}\r\n").utf8)
        var framer = QMPOutputFramer()
        let messages = framer.append(reply)
        #expect(messages.count == 1)
        #expect(messages.first.map { QMPMessage.parseOutput($0).isSuccess } == true)
    }
}
