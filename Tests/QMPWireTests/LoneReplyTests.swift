import Testing

@testable import QMPWire

/// `QMPOutputFramer.loneReply` predicts QEMU's successful reply to a known id without scanning its
/// value. Its input is QEMU's output, valid JSON: whenever it accepts such a line, the structural
/// scan must find the same top-level id; it must refuse every other id and every other shape.
struct LoneReplyTests {
    private func loneReply(_ text: String, id: UInt64) -> LoneReply? {
        Array(text.utf8).withUnsafeBytes { QMPOutputFramer().loneReply($0, id: id) }
    }

    private func scannedID(_ text: String) -> Range<Int>? {
        Array(text.utf8).withUnsafeBufferPointer { QMPOutputScan.leadingObject(of: $0)?.0[.id] }
    }

    @Test func acceptsTheReplyQEMUWrites() throws {
        let text = #"{"return": {"status": "running", "singlestep": false, "running": true}, "id": 1234}"# + "\r\n"
        let reply = try #require(loneReply(text, id: 1234))
        #expect(reply.value == scannedID(text))
        #expect(Array(text.utf8)[reply.member].elementsEqual(#", "id": 1234"#.utf8))
        #expect(reply.end == text.utf8.count - 2)
        #expect(loneReply(#"{"return": {}, "id": 0}"# + "\r\n", id: 0) != nil)
    }

    @Test(arguments: [
        #"{"return": {}, "id": 1235}"# + "\r\n",  // another id
        #"{"return": {}, "id": 11234}"# + "\r\n",  // a longer one ending the same
        #"{"return": {}, "id": 01234}"# + "\r\n",  // a leading zero
        #"{"id": 1234, "error": {"class": "GenericError", "desc": "x"}}"# + "\r\n",  // an error
        #"{"return": {"id": 1234}}"# + "\r\n",  // the id in the value only
        #"{"return": "a, \"id\": 1234}"}"# + "\r\n",  // the id member's text in a string
        #"{"return": {},"id":1234}"# + "\r\n",  // not QEMU's spacing
        #"{"return": , "id": 1234}"# + "\r\n",  // no value
        #"{"return": {}, "id": 1234} x"# + "\r\n",  // something after the object
        #"{"event": "STOP", "id": 1234}"# + "\r\n",  // not a reply
        #"{"return": {}, "id": 1234"#,  // cut short
        #"{"return": {}, "id": 1233}"# + "\r\n" + #"{"return": {}, "id": 1234}"# + "\r\n",  // two replies
        "{\n    \"return\": {\n    },\n    \"id\": 1234\n}\r\n",  // pretty-printed
    ])
    func refusesEverythingElse(text: String) {
        #expect(loneReply(text, id: 1234) == nil)
    }

    @Test func refusesInsideAMessage() {
        var framer = QMPOutputFramer()
        #expect(framer.append(Array(#"{"return": {"#.utf8)).isEmpty)
        let text = #"{"return": {}, "id": 7}"# + "\r\n"
        #expect(Array(text.utf8).withUnsafeBytes { framer.loneReply($0, id: 7) } == nil)
    }

    /// Replies whose values hold keys named `id`, strings with quotes, backslashes and the text of an
    /// id member: whenever the prediction accepts, the scan finds the same id.
    @Test(arguments: [1, 2, 3] as [UInt64])
    func agreesWithTheScanOnRandomValues(seed: UInt64) throws {
        var rng = SplitMix64(seed: seed)
        let strings = [#"a"#, #"x", "id": 5}"#, #"\"#, #"""#, #", "id": "#, "é", "5}"]
        func value(_ depth: Int) -> JSONValue {
            switch rng.next() % (depth > 2 ? 3 : 5) {
            case 0: return .integer(Int64(rng.next() % 100))
            case 1: return .string(strings[Int(rng.next() % UInt64(strings.count))])
            case 2: return .bool(rng.next() % 2 == 0)
            case 3: return .array((0..<rng.next() % 3).map { _ in value(depth + 1) })
            default:
                return .object(
                    (0..<rng.next() % 3).map { k in JSONMember(k == 0 ? "id" : "k\(k)", value(depth + 1)) })
            }
        }
        var accepted = 0
        for _ in 0..<2_000 {
            let id = rng.next() % 100_000
            let text =
                #"{"return": "# + String(decoding: value(0).qemuBytes, as: UTF8.self) + #", "id": \#(id)}"#
                + "\r\n"
            let reply = try #require(loneReply(text, id: id))
            #expect(reply.value == scannedID(text), "\(text)")
            #expect(loneReply(text, id: id + 1) == nil, "\(text)")
            accepted += 1
        }
        #expect(accepted == 2_000)
    }
}
