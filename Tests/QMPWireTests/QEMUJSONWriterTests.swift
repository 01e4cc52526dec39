import QMPWire
import Testing

@Suite("QEMU JSON writer")
struct QEMUJSONWriterTests {
    /// Member orders observed on QEMU 7.2 (the differential test compares live); keys in QAPI insertion
    /// order, which decides the order of keys sharing a bucket (status/singlestep, micro/minor).
    @Test(arguments: [
        (["return", "id"], "{\"return\": 1, \"id\": 1}"),
        (["error", "id"], "{\"id\": 1, \"error\": 1}"),
        (["timestamp", "event", "data"], "{\"timestamp\": 1, \"event\": 1, \"data\": 1}"),
        (["running", "singlestep", "status"], "{\"status\": 1, \"singlestep\": 1, \"running\": 1}"),
        (["fdset-id", "fd"], "{\"fd\": 1, \"fdset-id\": 1}"),
        (["major", "minor", "micro"], "{\"micro\": 1, \"minor\": 1, \"major\": 1}"),
        (["singlestep", "status"], "{\"status\": 1, \"singlestep\": 1}"),
        (["device", "path"], "{\"device\": 1, \"path\": 1}"),
        (["class", "desc"], "{\"class\": 1, \"desc\": 1}"),
        (["seconds", "microseconds"], "{\"seconds\": 1, \"microseconds\": 1}"),
        (["guest", "reason"], "{\"guest\": 1, \"reason\": 1}"),
        (["version", "capabilities"], "{\"version\": 1, \"capabilities\": 1}"),
        (["qemu", "package"], "{\"qemu\": 1, \"package\": 1}"),
        (["name", "type"], "{\"name\": 1, \"type\": 1}"),
    ])
    func qdictOrder(keys: [String], expected: String) {
        let value = JSONValue.object(keys.map { JSONMember($0, .integer(1)) })
        #expect(String(decoding: value.qemuBytes, as: UTF8.self) == expected)
    }

    @Test func escapesLikeQEMU() {
        let text = JSONValue.string("a\"b\\c\n\u{01}é😀/'").qemuBytes
        #expect(String(decoding: text, as: UTF8.self) == #""a\"b\\c\n\u0001\u00E9\uD83D\uDE00/'""#)
    }

    @Test func linesEndInCRLF() {
        #expect(JSONValue.array([.integer(1), .null, .bool(true)]).qemuLine == Array("[1, null, true]\r\n".utf8))
        #expect(JSONValue.object([]).qemuLine == Array("{}\r\n".utf8))
    }
}
