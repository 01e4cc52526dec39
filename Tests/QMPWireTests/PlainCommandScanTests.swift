import Testing

@testable import QMPWire

/// The plain-command scan answers for the grammar on the commands clients send most: whatever it
/// accepts, the grammar must accept with the same member ranges and length.
@Suite("Plain command scan")
struct PlainCommandScanTests {
    private func plain(_ bytes: [UInt8]) -> (MessageOffsets, end: Int)? {
        bytes.withUnsafeBufferPointer { QMPOutputScan.leadingObject(of: $0, rules: .plainCommand) }
    }

    private func grammar(_ bytes: [UInt8]) -> (MessageOffsets, end: Int)? {
        bytes.withUnsafeBufferPointer { buffer in
            guard let (top, end, run) = try? QMPGrammar.scanLeading(buffer), top.isObject,
                run <= QMPFramer.maxWhitespaceRun
            else { return nil }
            return (top.offsets, end)
        }
    }

    @Test("accepts the commands libvirt, qemu.qmp and scripts send, with the grammar's ranges")
    func commonCommands() throws {
        let commands = [
            #"{"execute":"query-status","id":1}"#, #"{"execute": "query-status", "id": "libvirt-12"}"#,
            #"{"execute":"qmp_capabilities"}"#, #"{ "id" : -7 , "execute" : "query-name" }"#,
            "{\"execute\":\"query-cpus-fast\",\r\n\t\"id\":null}", #"{"execute":"stop","id":true}  "#,
            #"{"execute":"cont","id":0} {"execute":"next"}"#,
        ]
        for command in commands {
            let bytes = Array(command.utf8)
            let scanned = try #require(plain(bytes), "\(command)")
            let parsed = try #require(grammar(bytes), "\(command)")
            #expect(scanned.0 == parsed.0 && scanned.end == parsed.end, "\(command)")
        }
    }

    @Test("leaves everything else to the grammar")
    func refusals() {
        let others = [
            #"{"execute":"x","arguments":{}}"#, #"{'execute':'x'}"#, #"{"execute":"q\u0075it"}"#,
            #"{"execute":"é"}"#, #"{"execute":"x","id":1.5}"#, #"{"execute":"x","id":01}"#,
            #"{"execute":"x","id":truex}"#, #"{"execute":"x","foo":1}"#, #"{"execute":"x","execute":"y"}"#,
            #"{"execute":"x","id":[1]}"#, #"{"execute":"x",}"#, #"{"execute":"x""#, #"{"execute":-}"#,
            "{\"execute\":\"x\",\"id\":" + String(repeating: " ", count: 17) + "1}", "{\"execute\":\"\u{7F}\"}",
        ]
        for other in others {
            #expect(plain(Array(other.utf8)) == nil, "\(other)")
        }
    }

    @Test("whatever it accepts on random input, the grammar accepts with the same ranges", arguments: [1, 2, 3])
    func differential(seed: UInt64) {
        var rng = SplitMix64(seed: seed)
        let keys = [
            #""execute""#, #""id""#, #""arguments""#, #""exec-oob""#, #""event""#, #""return""#, #""QMP""#,
            #""control""#, #""ex\u0065cute""#, #"'id'"#, #""""#, #""i d""#,
        ]
        let values = [
            #""query-status""#, #""""#, #""a b""#, #""libvirt-1""#, #""\n""#, #""\\""#, #"'x'"#, "\"\u{1}\"",
            "\"é\"", "0", "-0", "7", "-12", "123456789012345678901234567890", "01", "-", "1.0", "1e3", "true",
            "false", "null", "nul", "truex", "{}", "[]", "{\"a\":1}", "[1,2]", "inf", "\"\u{7F}\"",
        ]
        let spaces = [
            "", " ", "\n", "\r\n", "\t", "  ", String(repeating: " ", count: 16), String(repeating: " ", count: 17),
        ]
        var accepted = 0
        for _ in 0..<20_000 {
            func space() -> String { spaces[Int(rng.next() % UInt64(spaces.count))] }
            var text = "{" + space()
            let count = Int(rng.next() % 4)
            for index in 0..<count {
                if index > 0 { text += space() + "," + space() }
                text += keys[Int(rng.next() % UInt64(keys.count))] + space() + ":" + space()
                text += values[Int(rng.next() % UInt64(values.count))]
            }
            text += space() + "}"
            if rng.next() % 4 == 0 { text += space() + ["{", "x", "}", "\"id\":1}"][Int(rng.next() % 4)] }
            let bytes = Array(text.utf8)
            guard let scanned = plain(bytes) else { continue }
            accepted += 1
            let parsed = grammar(bytes)
            #expect(parsed?.0 == scanned.0 && parsed?.end == scanned.end, "\(text)")
        }
        // Not vacuous: a good share of the random objects are plain.
        #expect(accepted > 1_000)
    }
}
