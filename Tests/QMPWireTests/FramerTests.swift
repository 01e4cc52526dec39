import Testing

@testable import QMPWire

/// Renders frames compactly: `M:<text>@end` for messages, `E:<desc>@end` for rejected units.
func render(_ frames: [QMPFrame]) -> [String] {
    frames.map { frame in
        switch frame {
        case .message(let bytes, let end): "M:\(String(decoding: bytes, as: UTF8.self))@\(end)"
        case .invalid(let error, let end): "E:\(error.desc)@\(end)"
        }
    }
}

func frameAll(_ input: [UInt8], limits: QMPFramer.Limits = .qemu) -> [QMPFrame] {
    var framer = QMPFramer(limits: limits)
    return framer.append(input)
}

/// Inputs whose splitting the tests pin down, and that the split and fuzz tests reuse.
let framerCorpus: [String] = [
    #"{"execute":"qmp_capabilities"}"#,
    "{'execute':'query-status','id':'a\\'b'}",
    #"{"execute":"x","id":{"a":[1,2,{"b":"}"}]}}"#,
    "  \r\n{\"a\":1}\r\n{\"b\":2}  [3] 4 \"five\" true",
    "}{\"a\":1}",
    "@{\"a\":1}",
    "x@y{\"a\":1}",
    "{\"a\": @ 1}{\"b\":2}",
    "\"abc\u{01}def\"{\"c\":3}",
    "\u{FF}{\"a\":1}",
    "{\"a\":\"\u{FF}\"}",
    "00 01 -0 -01 1.5 1. 1e5 1e 1e+ 0e5 -x 12abc",
    "[}]",
    "{]",
    "[1,}",
    "'unterminated\n{\"a\":1}",
    "{\"a\":'x\\\"y'}{\"b\":\"x\\'y\"}",
    "nul\u{0}l{\"a\":1}",
    "\t{\t\"a\"\t:\t1\t}\t",
    "%{\"a\":1}",
    "{\"a\":[[[[]]]]}",
    "123456789012345678901234567890",
    "-",
    "{\"é\":\"ü\u{1F600}\"}",
]

@Suite("QMPFramer")
struct FramerTests {
    @Test("splits units where QEMU's streamer does")
    func units() {
        #expect(
            render(frameAll(Array(#"{"execute":"a"}{"execute":"b"}"#.utf8))) == [
                #"M:{"execute":"a"}@15"#, #"M:{"execute":"b"}@30"#,
            ])
        // A lone scalar is a unit; a number/keyword ends on lookahead.
        #expect(render(frameAll(Array(" 12 true\"s\" ".utf8))) == ["M:12@3", "M:true@8", "M:\"s\"@11"])
        // Whitespace between units is not part of them; inside a unit it is.
        #expect(render(frameAll(Array("\r\n{ \"a\" :\n1 }\r\n".utf8))) == ["M:{ \"a\" :\n1 }@13"])
        // A stray closing brace is its own unit.
        #expect(render(frameAll(Array("}{}".utf8))) == ["M:}@1", "M:{}@3"])
        // Braces and quotes inside strings do not count.
        #expect(render(frameAll(Array("{'a':\"}'\",\"b\":'\\'}'}".utf8))) == ["M:{'a':\"}'\",\"b\":'\\'}'}@20"])
    }

    @Test("a negative depth of either kind ends the unit (checked against QEMU 7.2)")
    func negativeDepth() {
        #expect(render(frameAll(Array("[}]".utf8))) == ["M:[}@2", "M:]@3"])
        #expect(render(frameAll(Array("{]".utf8))) == ["M:{]@2"])
        #expect(render(frameAll(Array("[1,}".utf8))) == ["M:[1,}@4"])
    }

    @Test("lexer errors report the token and skip like IN_RECOVERY")
    func lexerErrors() {
        // Stray byte; recovery skips to the next structural character.
        #expect(render(frameAll(Array("@abc{\"a\":1}".utf8))) == ["E:JSON parse error, stray '@'@1", "M:{\"a\":1}@11"])
        // Recovery skips quotes too: the string below is skipped up to ':'.
        #expect(
            render(frameAll(Array("@\"x\":1 2".utf8))) == ["E:JSON parse error, stray '@'@1", "M::@5", "M:1@6"])
        // A control character inside a string ends it with an error holding the partial token.
        #expect(render(frameAll(Array("{\"a\":\"x\ny\"}".utf8))).first == "E:JSON parse error, stray '\"x\n'@8")
        // Number errors consume the bad byte.
        #expect(render(frameAll(Array("01 ".utf8))) == ["E:JSON parse error, stray '01'@2"])
        #expect(render(frameAll(Array("-x ".utf8))) == ["E:JSON parse error, stray '-x'@2"])
        #expect(render(frameAll(Array("1.e".utf8))) == ["E:JSON parse error, stray '1.e'@3"])
        // 0e5 is "0" then the keyword "e5"... which is "e" then the number "5".
        #expect(render(frameAll(Array("0e5 ".utf8))) == ["M:0@1", "M:e@2", "M:5@3"])
        // NUL ends the C string in QEMU's message.
        let nul = frameAll([0x22, 0x61, 0x00])
        guard case .invalid(let error, 3) = nul.first else {
            Issue.record("expected an error, got \(nul)")
            return
        }
        #expect(error.desc == "JSON parse error, stray '\"a'")
        // A number at the very end waits for its lookahead byte.
        #expect(frameAll(Array("1 2".utf8)).count == 1)
        // 0xFE/0xFF are impossible bytes: errors, and resynchronisation points during recovery
        // (which then skips the "1").
        #expect(
            render(frameAll([0x40, 0x61, 0xFF, 0x31, 0x20, 0x7B, 0x7D])) == [
                "E:JSON parse error, stray '@'@1", "E:JSON parse error, stray '\u{FFFD}'@3", "M:{}@7",
            ])
    }

    @Test("limits: token count, nesting, message size, token size — then resynchronise")
    func limits() {
        let small = QMPFramer.Limits(tokenSize: 16, tokenCount: 5, nesting: 3)
        // Nesting: the 4th opening bracket fails; the rest is framed from scratch.
        #expect(
            render(frameAll(Array("[[[[1]]]]{}".utf8), limits: small)) == [
                "E:JSON nesting depth limit exceeded@4", "M:1@5", "M:]@6", "M:]@7", "M:]@8", "M:]@9", "M:{}@11",
            ])
        // Token count: the 6th token fails.
        #expect(
            render(frameAll(Array("[1,2,3]".utf8), limits: small)) == [
                "E:JSON token count limit exceeded@6", "M:]@7",
            ])
        // Message size: token bytes + 1 above the limit.
        #expect(
            render(frameAll(Array("[\"aaaaaa\",\"bbbbbbb\"]".utf8), limits: small)) == [
                "E:JSON token size limit exceeded@19", "M:]@20",
            ])
        // Single token above the limit: the lexer cuts it after limit+1 bytes and lexes the rest anew.
        #expect(
            render(frameAll(Array("\"0123456789abcdefgh\" {}".utf8), limits: small)) == [
                "E:JSON token size limit exceeded@17", "M:gh@19",
            ])
    }

    @Test("limits at QEMU's real values")
    func realLimits() {
        var framer = QMPFramer()
        var deep =
            [UInt8](repeating: UInt8(ascii: "["), count: 1024) + [UInt8](repeating: UInt8(ascii: "]"), count: 1024)
        #expect(render(framer.append(deep)) == ["M:\(String(decoding: deep, as: UTF8.self))@2048"])
        deep = [UInt8](repeating: UInt8(ascii: "{"), count: 1025)
        #expect(render(framer.append(deep)) == ["E:JSON nesting depth limit exceeded@3073"])
    }

    @Test("a 64 MiB string token is cut where QEMU cuts it")
    func hugeToken() {
        var framer = QMPFramer()
        var input: [UInt8] = [UInt8(ascii: "\"")]
        input += [UInt8](repeating: UInt8(ascii: "a"), count: (64 << 20) + 2)
        input += Array(" {}".utf8)
        let frames = framer.append(input)
        #expect(
            render(frames) == [
                "E:JSON token size limit exceeded@\((64 << 20) + 1)", "M:aa@\((64 << 20) + 3)", "M:{}@\(input.count)",
            ])
    }

    @Test("every split of the corpus frames exactly as one write", arguments: framerCorpus)
    func splits(_ text: String) {
        let input = Array(text.utf8)
        let whole = frameAll(input)
        for cut in 0...input.count {
            var framer = QMPFramer()
            let frames = framer.append(input[..<cut]) + framer.append(input[cut...])
            #expect(frames == whole, "cut at \(cut)")
        }
        var framer = QMPFramer()
        var frames: [QMPFrame] = []
        for byte in input { frames += framer.append([byte]) }
        #expect(frames == whole, "byte by byte")
    }

    @Test("three-way splits of a mixed stream")
    func threeWaySplits() {
        let input = Array(framerCorpus.joined(separator: "\n").utf8.prefix(160))
        let whole = frameAll(input)
        for a in stride(from: 0, through: input.count, by: 3) {
            for b in a...input.count {
                var framer = QMPFramer()
                let frames = framer.append(input[..<a]) + framer.append(input[a..<b]) + framer.append(input[b...])
                if frames != whole {
                    Issue.record("split at \(a), \(b)")
                    return
                }
            }
        }
    }

    @Test("long whitespace runs inside a unit are shortened, nothing else")
    func whitespace() {
        let input = Array(("{\"a\":" + String(repeating: " ", count: 1000) + "1}").utf8)
        let frames = frameAll(input)
        guard case .message(let bytes, let end) = frames.first else {
            Issue.record("no message")
            return
        }
        #expect(end == input.count)
        #expect(bytes.count == 5 + 64 + 2)
        #expect(QMPMessage.parse(bytes).isSuccess)
    }
}

extension Result {
    var isSuccess: Bool {
        if case .success = self { return true }
        return false
    }
}
