import Testing

@testable import QMPWire

/// The fuzz target's invariants (fuzz/FramerFuzz.swift) on seeded random inputs, so they run in
/// every `swift test`.
@Suite("QMPWire seeded random inputs")
struct SeededRandomTests {
    @Test("framing is split-independent; parsed messages splice, echo and decode", arguments: [1, 2, 3, 4])
    func invariants(_ seed: UInt64) throws {
        var rng = SplitMix64(seed: seed)
        for _ in 0..<500 {
            let input = randomQMPInput(&rng, length: Int(rng.next() % 60) + 1)
            var whole = QMPFramer()
            let frames = whole.append(input)
            let cut = Int(rng.next() % UInt64(input.count + 1))
            var split = QMPFramer()
            let pieces = split.append(input[..<cut]) + split.append(input[cut...])
            #expect(pieces == frames, "split at \(cut) of \(input)")
            for case .message(let bytes, _) in frames {
                guard case .success(let message) = QMPMessage.parse(bytes) else { continue }
                if !bytes.contains(UInt8(ascii: "'")) {
                    // Double quotes only, as QEMU's writer prints: the structural scan agrees, or (an
                    // escaped key) leaves the message to the grammar.
                    if let scanned = QMPMessage.scanOutput(bytes) {
                        #expect(scanned == message, "scan of \(text(bytes))")
                    } else {
                        #expect(bytes.contains(UInt8(ascii: "\\")), "scan refused \(text(bytes))")
                    }
                }
                let without = try QMPMessage.parse(message.replacingID(with: nil)).get()
                #expect(without.id == nil)
                let with = try QMPMessage.parse(message.replacingID(with: Array("\"s\"".utf8))).get()
                #expect(with.string(.id) == "s")
                if let id = message[.id] {
                    let echoed = try #require(QMPJSON.echoed(id))
                    #expect(QMPMessage.parseOutput(Array("{\"id\": ".utf8) + echoed + [0x7D]).isSuccess)
                }
                #expect((try? JSONValue(parsing: bytes)) != nil, "jansson path rejected \(text(bytes))")
            }
        }
    }
}
