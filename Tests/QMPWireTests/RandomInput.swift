/// A small deterministic generator (SplitMix64) so random tests are reproducible.
struct SplitMix64: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

/// Random input built from QMP-ish pieces and junk, biased towards the lexer's edge cases.
func randomQMPInput(_ rng: inout SplitMix64, length: Int) -> [UInt8] {
    let pieces: [[UInt8]] = [
        "{", "}", "[", "]", ":", ",", " ", "\n", "\r\n", "\t", "\"", "'", "\\", "\\'", "\\\"", "\\u00e9", "\\uD83D",
        "\\uDE00", "\\u0000", "\\x", "a", "id", "\"id\"", "'execute'", "\"query-status\"", "0", "1", "-", ".", "e",
        "+", "12", "1.5", "true", "null", "nul", "@", "%", "é", "{\"execute\":\"query-status\"}",
        "{\"execute\":\"query-status\",\"id\":", "}}", "]]",
    ].map { Array($0.utf8) }
    let raw: [[UInt8]] = [[0x00], [0x01], [0x1F], [0x7F], [0x80], [0xC0, 0x80], [0xC3], [0xFE], [0xFF], [0xF0, 0x9F]]
    var out: [UInt8] = []
    for _ in 0..<length {
        if rng.next() % 8 == 0 {
            out += raw[Int(rng.next() % UInt64(raw.count))]
        } else {
            out += pieces[Int(rng.next() % UInt64(pieces.count))]
        }
    }
    return out
}
