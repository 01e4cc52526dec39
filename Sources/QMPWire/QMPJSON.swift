#if canImport(Glibc)
import Glibc
#endif

/// QEMU's JSON conventions: how it decodes strings, how it writes values back, in which order it
/// writes object members.
///
/// QEMU 7.2 keeps every object it parsed as a `QDict` (a 512-bucket hash table) and writes it back
/// with its JSON writer: `": "` and `", "` separators, `\uXXXX` (upper-case hex) for control and
/// non-ASCII characters, surrogate pairs beyond the BMP, `%.17g` for doubles, members in bucket order.
public enum QMPJSON {
    /// The bytes QEMU 7.2 echoes as `"id"` in its reply to a command whose id member was `value`.
    ///
    /// QEMU keeps the parsed id object and serializes it again: single-quoted strings become
    /// double-quoted, non-ASCII characters become `\uXXXX`, numbers are reformatted, object members
    /// come in QDict bucket order. Returns `nil` when `value` is not one valid QMP JSON value.
    public static func echoed(_ value: some Collection<UInt8>) -> [UInt8]? {
        let bytes = Array(value)
        guard let tree = try? QMPGrammar.parseTree(bytes) else { return nil }
        var out: [UInt8] = []
        out.reserveCapacity(bytes.count + 8)
        tree.writeQEMU(into: &out)
        return out
    }

    /// QEMU's `tdb_hash` of a QDict key (its modified UTF-8 bytes).
    static func tdbHash(_ key: [UInt8]) -> UInt32 {
        var value: UInt32 = 0x238F_13AF &* UInt32(truncatingIfNeeded: key.count)
        for (i, byte) in key.enumerated() {
            value = value &+ (UInt32(byte) << UInt32(i * 5 % 24))
        }
        return 1_103_515_243 &* value &+ 12345
    }

    /// The order in which QEMU iterates a QDict built by inserting `keys` in this order.
    ///
    /// Buckets 0...511 in turn; inside a bucket the most recently inserted key comes first.
    static func qdictOrder(_ keys: [[UInt8]]) -> [Int] {
        let buckets = keys.map { Int(tdbHash($0) % 512) }
        return keys.indices.sorted { a, b in
            if buckets[a] != buckets[b] { return buckets[a] < buckets[b] }
            return a > b
        }
    }

    /// The keys' indices in QEMU's QDict iteration order, for keys inserted in this order (Swift
    /// strings; U+0000 hashes as QEMU's `C0 80`).
    public static func qdictOrder(_ keys: [String]) -> [Int] {
        qdictOrder(keys.map(ModifiedUTF8.bytes))
    }

    /// The members of an object as QEMU holds and iterates them after inserting them in this order:
    /// one entry per key (a later duplicate replaces the earlier value in place), in QDict order.
    public static func qdictOrdered(_ members: [JSONMember]) -> [JSONMember] {
        var unique: [JSONMember] = []
        unique.reserveCapacity(members.count)
        // Keyed by scalars, not by Swift's canonical string equality: QEMU compares bytes.
        var seen: [[UInt8]: Int] = [:]
        for member in members {
            let key = Array(member.key.utf8)
            if let at = seen[key] {
                unique[at].value = member.value
            } else {
                seen[key] = unique.count
                unique.append(member)
            }
        }
        return qdictOrder(unique.map(\.key)).map { unique[$0] }
    }

    /// `string` as QEMU's JSON writer quotes it (`"` included).
    public static func quoted(_ string: String) -> [UInt8] {
        var out: [UInt8] = []
        writeQuoted(string, into: &out)
        return out
    }

    /// Appends `string` as QEMU's JSON writer quotes a string.
    public static func writeQuoted(_ string: String, into out: inout [UInt8]) {
        out.append(UInt8(ascii: "\""))
        for scalar in string.unicodeScalars {
            let cp = Int(scalar.value)
            // QEMU's writer decodes its own modified UTF-8 again: noncharacters come out as U+FFFD.
            writeCodepoint(cp == 0 || ModifiedUTF8.isValidCodepoint(cp) ? cp : 0xFFFD, into: &out)
        }
        out.append(UInt8(ascii: "\""))
    }

    /// Appends raw (possibly invalid) modified UTF-8 bytes as QEMU's writer quotes a C string:
    /// each invalid sequence becomes U+FFFD, the string ends at the first NUL byte.
    static func writeQuoted(rawBytes bytes: [UInt8], into out: inout [UInt8]) {
        out.append(UInt8(ascii: "\""))
        var i = 0
        while i < bytes.count, bytes[i] != 0 {
            let (cp, next) = ModifiedUTF8.codepoint(bytes, at: i, limit: bytes.count)
            writeCodepoint(cp < 0 ? 0xFFFD : cp, into: &out)
            i = next
        }
        out.append(UInt8(ascii: "\""))
    }

    private static let hex: [UInt8] = Array("0123456789ABCDEF".utf8)

    private static func writeU4(_ v: Int, into out: inout [UInt8]) {
        out.append(UInt8(ascii: "\\"))
        out.append(UInt8(ascii: "u"))
        out.append(hex[(v >> 12) & 0xF])
        out.append(hex[(v >> 8) & 0xF])
        out.append(hex[(v >> 4) & 0xF])
        out.append(hex[v & 0xF])
    }

    static func writeCodepoint(_ cp: Int, into out: inout [UInt8]) {
        switch cp {
        case 0x22: out.append(contentsOf: [0x5C, 0x22])
        case 0x5C: out.append(contentsOf: [0x5C, 0x5C])
        case 0x08: out.append(contentsOf: [0x5C, UInt8(ascii: "b")])
        case 0x0C: out.append(contentsOf: [0x5C, UInt8(ascii: "f")])
        case 0x0A: out.append(contentsOf: [0x5C, UInt8(ascii: "n")])
        case 0x0D: out.append(contentsOf: [0x5C, UInt8(ascii: "r")])
        case 0x09: out.append(contentsOf: [0x5C, UInt8(ascii: "t")])
        default:
            if cp > 0xFFFF {
                writeU4(0xD800 + ((cp - 0x10000) >> 10), into: &out)
                writeU4(0xDC00 + ((cp - 0x10000) & 0x3FF), into: &out)
            } else if cp < 0x20 || cp >= 0x7F {
                writeU4(cp, into: &out)
            } else {
                out.append(UInt8(cp))
            }
        }
    }

    /// `printf("%.17g", value)`, as QEMU writes doubles (including `inf`, `-inf`, `nan`).
    static func formatDouble(_ value: Double) -> [UInt8] {
        var buffer = [CChar](repeating: 0, count: 64)
        let n = withVaList([value]) { args in
            buffer.withUnsafeMutableBufferPointer { vsnprintf($0.baseAddress, 64, "%.17g", args) }
        }
        return buffer[0..<Int(max(0, min(n, 63)))].map { UInt8(bitPattern: $0) }
    }
}

/// QEMU's modified UTF-8 (`util/unicode.c`): UTF-8 where U+0000 is `C0 80`; noncharacters,
/// surrogates and overlong forms (other than `C0 80`) are invalid.
enum ModifiedUTF8 {
    static func isValidCodepoint(_ cp: Int) -> Bool {
        if cp < 0 || cp > 0x10FFFF { return false }
        if (cp >= 0xFDD0 && cp <= 0xFDEF) || (cp & 0xFFFE) == 0xFFFE { return false }
        if cp >= 0xD800 && cp <= 0xDFFF { return false }
        return true
    }

    /// `mod_utf8_codepoint(s, 6, &end)` on `bytes[start..<limit]` (missing bytes read as NUL).
    /// Returns the codepoint (or -1) and the index just past the sequence.
    @inline(__always)
    static func codepoint(_ bytes: UnsafeBufferPointer<UInt8>, at start: Int, limit: Int) -> (Int, Int) {
        if start >= limit || bytes[start] == 0 { return (-1, start) }
        var p = start
        let lead = Int(bytes[p])
        p += 1
        if lead < 0x80 { return (lead, p) }
        if lead >= 0xFE || lead & 0x40 == 0 { return (-1, p) }
        var len = 0
        var mask = 0x80
        while lead & mask != 0 {
            len += 1
            mask >>= 1
        }
        var cp = lead & (mask - 1)
        for i in 1..<len {
            let byte = (i < 6 && p < limit) ? Int(bytes[p]) : 0
            if byte & 0xC0 != 0x80 { return (-1, p) }
            p += 1
            cp = (cp << 6) | (byte & 0x3F)
        }
        let minimum = [0x80, 0x800, 0x10000, 0x200000, 0x4000000][len - 2]
        if !isValidCodepoint(cp) { return (-1, p) }
        if cp < minimum && !(cp == 0 && len == 2) { return (-1, p) }
        return (cp, p)
    }

    static func codepoint(_ bytes: [UInt8], at start: Int, limit: Int) -> (Int, Int) {
        bytes.withUnsafeBufferPointer { codepoint($0, at: start, limit: limit) }
    }

    /// `mod_utf8_encode`: false when `cp` is invalid.
    @inline(__always)
    static func encode(_ cp: Int, into out: inout [UInt8]) -> Bool {
        guard isValidCodepoint(cp) else { return false }
        if cp > 0 && cp <= 0x7F {
            out.append(UInt8(cp))
        } else if cp <= 0x7FF {
            out.append(UInt8(0xC0 | ((cp >> 6) & 0x1F)))
            out.append(UInt8(0x80 | (cp & 0x3F)))
        } else if cp <= 0xFFFF {
            out.append(UInt8(0xE0 | ((cp >> 12) & 0x0F)))
            out.append(UInt8(0x80 | ((cp >> 6) & 0x3F)))
            out.append(UInt8(0x80 | (cp & 0x3F)))
        } else {
            out.append(UInt8(0xF0 | ((cp >> 18) & 0x07)))
            out.append(UInt8(0x80 | ((cp >> 12) & 0x3F)))
            out.append(UInt8(0x80 | ((cp >> 6) & 0x3F)))
            out.append(UInt8(0x80 | (cp & 0x3F)))
        }
        return true
    }

    /// Decodes valid modified UTF-8 (as produced by `encode`) to a Swift string.
    static func string(_ bytes: [UInt8]) -> String {
        var scalars = String.UnicodeScalarView()
        var i = 0
        while i < bytes.count {
            let (cp, next) = codepoint(bytes, at: i, limit: bytes.count)
            scalars.append(Unicode.Scalar(UInt32(max(cp, 0))) ?? "\u{FFFD}")
            i = max(next, i + 1)
        }
        return String(scalars)
    }

    /// The modified UTF-8 bytes of a Swift string (U+0000 as `C0 80`).
    static func bytes(_ string: String) -> [UInt8] {
        var out: [UInt8] = []
        for scalar in string.unicodeScalars {
            if scalar.value == 0 {
                out.append(contentsOf: [0xC0, 0x80])
            } else {
                out.append(contentsOf: String(scalar).utf8)
            }
        }
        return out
    }
}
