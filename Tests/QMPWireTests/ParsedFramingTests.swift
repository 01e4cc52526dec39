import Testing

@testable import QMPWire

/// The units of parsed framing, rendered as the plain framer renders its frames (a parsed unit as the
/// message it was parsed from), and how many were parsed while framing.
func renderParsed(_ units: [QMPInputUnit]) -> (rendered: [String], parsed: Int) {
    var frames: [QMPFrame] = []
    var parsed = 0
    for unit in units {
        switch unit {
        case .parsed(let message, let end):
            #expect(QMPMessage.parse(message.bytes) == .success(message), "parsed while framing")
            frames.append(.message(bytes: message.bytes, end: end))
            parsed += 1
        case .frame(let frame):
            frames.append(frame)
        }
    }
    return (render(frames), parsed)
}

func frameParsed(_ input: [UInt8], cut: Int? = nil) -> [QMPInputUnit] {
    var framer = QMPFramer()
    var units: [QMPInputUnit] = []
    let cut = cut ?? input.count
    for piece in [input[..<cut], input[cut...]] {
        piece.withUnsafeBytes { raw in
            framer.append(raw, parsed: { units.append(.parsed($0, end: $1)) }, frame: { units.append(.frame($0)) })
        }
    }
    return units
}

@Suite("QMPFramer with parsing")
struct ParsedFramingTests {
    @Test("splits the corpus as the plain framer at every cut, parsing the objects whole in one read")
    func corpus() {
        var parsedSomewhere = 0
        for text in framerCorpus {
            let input = Array(text.utf8)
            let expected = render(frameAll(input))
            for cut in 0...input.count {
                let (rendered, parsed) = renderParsed(frameParsed(input, cut: cut))
                #expect(rendered == expected, "\(text.debugDescription) cut at \(cut)")
                parsedSomewhere += parsed
            }
        }
        #expect(parsedSomewhere > 50)
    }

    @Test("what the grammar refuses, long whitespace runs and objects across reads stay unparsed frames")
    func fallbacks() {
        let cases: [(String, Int)] = [
            (#"{"execute":"query-status","id":1}"#, 1),
            ("  \r\n" + #"{"a":1}{"b":2}"#, 2),
            (#"{"a":1,"a":2}"#, 0),  // duplicate key: the grammar's error, from the plain path
            (#"{"a":"\u00"}"#, 0),
            ("{\"a\":" + String(repeating: " ", count: 65) + "1}", 0),  // the framer shortens the run
            ("{\"a\":" + String(repeating: " ", count: 64) + "1}", 1),
            (String(repeating: "[", count: 1025) + String(repeating: "]", count: 1025), 0),
            ("{\"a\":" + String(repeating: "[", count: 1024) + String(repeating: "]", count: 1024) + "}", 0),
            ("{\"a\":" + String(repeating: "[", count: 1023) + String(repeating: "]", count: 1023) + "}", 1),
            ("{}", 1),
            (#"@{"a":1}"#, 0),  // after a lexer error the framer recovers on its own
        ]
        for (text, parsedCount) in cases {
            let input = Array(text.utf8)
            let (rendered, parsed) = renderParsed(frameParsed(input))
            #expect(rendered == render(frameAll(input)), "\(text.prefix(80))")
            #expect(parsed == parsedCount, "\(text.prefix(80))")
        }
        // An object completed by a later read is framed by the lexer, with its stream offset.
        let units = frameParsed(Array(#"{"id":12345}{"b":2}"#.utf8), cut: 8)
        #expect(renderParsed(units).rendered == [#"M:{"id":12345}@12"#, #"M:{"b":2}@19"#])
    }

    @Test("random input: parsed framing splits as the plain framer", arguments: [11, 12, 13])
    func random(_ seed: UInt64) {
        var rng = SplitMix64(seed: seed)
        var parsedSomewhere = 0
        for _ in 0..<500 {
            let input = randomQMPInput(&rng, length: Int(rng.next() % 60) + 1)
            let cut = Int(rng.next() % UInt64(input.count + 1))
            let (rendered, parsed) = renderParsed(frameParsed(input, cut: cut))
            #expect(rendered == render(frameAll(input)), "\(input) cut at \(cut)")
            parsedSomewhere += parsed
        }
        #expect(parsedSomewhere > 0)
    }
}
