import Testing

@testable import QMPWire

/// `LonePrediction` recognises a client's next command by comparison with its last one. Whatever it
/// accepts must be what the framer's scan finds, with the same member ranges and length.
struct LonePredictionTests {
    /// The framer's own view of a lone command: offsets and length.
    private func scanned(_ text: String) -> (MessageOffsets, Int)? {
        Array(text.utf8).withUnsafeBytes { QMPFramer().loneObject($0).map { ($0.top, $0.bytes.count) } }
    }

    private func predicted(_ text: String, after last: String) -> (MessageOffsets, Int)? {
        var prediction = LonePrediction()
        Array(last.utf8).withUnsafeBytes { read in
            if let message = QMPFramer().loneObject(read) { prediction.remember(message, read: read) }
        }
        return Array(text.utf8).withUnsafeBytes { prediction.view(of: $0).map { ($0.top, $0.bytes.count) } }
    }

    @Test(arguments: [
        (#"{"execute":"query-status","id":"libvirt-9"}"#, #"{"execute":"query-status","id":"libvirt-10"}"#),
        (
            #"{"execute": "query-status", "id": "__qmp#00012"}"# + "\n",
            #"{"execute": "query-status", "id": "__qmp#00013"}"# + "\n"
        ),
        (#"{"execute":"query-status","id":9}"# + "\r\n", #"{"execute":"query-status","id":10}"# + "\r\n"),
        (#"{"execute":"query-status","id":9}"#, #"{"execute":"query-status","id":"nine"}"#),
        (
            #"{"execute":"qom-get","arguments":{"path":"/machine","property":"type"},"id":"a"}"#,
            #"{"execute":"qom-get","arguments":{"path":"/machine","property":"type"},"id":"b-2"}"#
        ),
        (#"{"execute": "query-status", "id": 1 }"#, #"{"execute": "query-status", "id": -5 }"#),
    ])
    func predictsWhatTheScanFinds(last: String, next: String) throws {
        let prediction = try #require(predicted(next, after: last))
        let scan = try #require(scanned(next))
        #expect(prediction.0 == scan.0)
        #expect(prediction.1 == scan.1)
    }

    @Test(arguments: [
        (#"{"execute":"query-status","id":"a"}"#, #"{"execute":"query-name","id":"b"}"#),  // another command
        (#"{"execute":"query-status","id":"a"}"#, #"{"execute":"query-status","id":"b\u0041"}"#),  // an escape
        (#"{"execute":"query-status","id":"a"}"#, #"{"execute":"query-status","id":"b"}"# + "\n"),  // another end
        (#"{"execute":"query-status","id":"a"}"#, #"{"execute":"query-status","id":"b","x":1}"#),  // more members
        (#"{"execute":"query-status","id":"a"}"#, #"{"execute":"query-status","id":"b"},{"id":"c"}"#),
        (#"{"execute":"query-status","id":1}"#, #"{"execute":"query-status","id":01}"#),  // a leading zero
        (#"{"execute":"query-status","id":1}"#, #"{"execute":"query-status","id":1.5}"#),  // a fraction
        (#"{"execute":"query-status","id":1}"#, #"{"execute":"query-status","id":}"#),  // no id
        (#"{"id":"a","execute":"query-status"}"#, #"{"id":"b","execute":"query-status"}"#),  // id not last
        (#"{"execute":"query-status"}"#, #"{"execute":"query-status"}"#),  // no id at all
    ])
    func refusesWhatItCannotVouchFor(last: String, next: String) {
        #expect(predicted(next, after: last) == nil)
    }

    /// Random ids after random remembered ones: every prediction is the scan's reading.
    @Test(arguments: [7, 8] as [UInt64])
    func agreesWithTheScanOnRandomIDs(seed: UInt64) {
        var rng = SplitMix64(seed: seed)
        let pieces = ["a", "1", "0", "-", "\"", "\\", " ", "é", "#", "x9"]
        func id() -> String {
            let body = (0..<(1 + rng.next() % 4)).map { _ in pieces[Int(rng.next() % UInt64(pieces.count))] }.joined()
            return rng.next() % 2 == 0 ? "\"" + body + "\"" : body
        }
        var predictedCount = 0
        for _ in 0..<3_000 {
            let last = #"{"execute": "query-status", "id": "# + id() + "}\n"
            let next = #"{"execute": "query-status", "id": "# + id() + "}\n"
            guard let prediction = predicted(next, after: last) else { continue }
            predictedCount += 1
            let scan = scanned(next)
            #expect(scan?.0 == prediction.0 && scan?.1 == prediction.1, "\(last) then \(next)")
        }
        #expect(predictedCount > 200, "\(predictedCount)")
    }
}

/// `ShortBytes` against the obvious loops, at every length and position up to a few words.
struct ShortBytesTests {
    @Test func equalAndContainsAgreeWithLoops() {
        var rng = SplitMix64(seed: 5)
        for _ in 0..<5_000 {
            let count = Int(rng.next() % 40)
            let a = (0..<count).map { _ in UInt8(truncatingIfNeeded: rng.next() % 4 + 0x09) }
            var b = a
            if count > 0, rng.next() % 2 == 0 { b[Int(rng.next() % UInt64(count))] ^= 1 }
            a.withUnsafeBytes { pa in
                b.withUnsafeBytes { pb in
                    #expect(ShortBytes.equal(pa.baseAddress!, pb.baseAddress!, count: count) == (a == b))
                }
                #expect(ShortBytes.contains(0x0A, pa.baseAddress!, count: count) == a.contains(0x0A))
            }
        }
    }
}
