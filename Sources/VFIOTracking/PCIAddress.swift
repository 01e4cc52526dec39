/// PCI addresses as QEMU's `host` property takes them: `[domain:]bus:slot.function`.
public enum PCIAddress {
    /// QEMU's value for an unset `host` property (no address parses to it: slot 0xff is out of range).
    public static let unset = "ffff:ff:ff.f"

    /// The canonical `dddd:bb:ss.f` (lowercase) of `text`, or nil when QEMU would refuse the value.
    ///
    /// QEMU reads each field with `strtoul`: leading blanks, a sign and (for the hex fields) a `0x`
    /// prefix are accepted, any number of digits; domain, bus and slot are hex, the function decimal;
    /// domain ≤ 0xffff, bus ≤ 0xff, slot ≤ 0x1f, function ≤ 7, and nothing may follow.
    public static func normalized(_ text: some StringProtocol) -> String? {
        var scanner = Scanner(Array(text.utf8))
        guard let first = scanner.number(radix: 16), scanner.skip(":"), var value = scanner.number(radix: 16)
        else { return nil }
        var domain: UInt64 = 0
        var bus = first
        if scanner.skip(":") {
            domain = bus
            bus = value
            guard let slot = scanner.number(radix: 16) else { return nil }
            value = slot
        }
        let slot = value
        guard scanner.skip("."), let function = scanner.number(radix: 10), scanner.atEnd,
            domain <= 0xffff, bus <= 0xff, slot <= 0x1f, function <= 7
        else { return nil }
        return hex(domain, 4) + ":" + hex(bus, 2) + ":" + hex(slot, 2) + "." + String(function)
    }

    private static func hex(_ value: UInt64, _ width: Int) -> String {
        let digits = String(value, radix: 16)
        return String(repeating: "0", count: max(0, width - digits.count)) + digits
    }

    /// Reads numbers the way `strtoul` does.
    private struct Scanner {
        let bytes: [UInt8]
        var index = 0

        init(_ bytes: [UInt8]) { self.bytes = bytes }

        var atEnd: Bool { index == bytes.count }

        mutating func skip(_ character: Unicode.Scalar) -> Bool {
            guard index < bytes.count, bytes[index] == UInt8(ascii: character) else { return false }
            index += 1
            return true
        }

        /// Blanks, an optional sign, an optional `0x` (radix 16), digits; nil when no digit was read
        /// (the position is then left unchanged, as `strtoul` leaves its end pointer). Overflow
        /// saturates and a minus sign negates modulo 2^64, as `strtoul` does: both then fail the range checks.
        mutating func number(radix: UInt64) -> UInt64? {
            var at = index
            while at < bytes.count, [0x20, 0x09, 0x0A, 0x0B, 0x0C, 0x0D].contains(bytes[at]) { at += 1 }
            var negative = false
            if at < bytes.count, bytes[at] == UInt8(ascii: "+") || bytes[at] == UInt8(ascii: "-") {
                negative = bytes[at] == UInt8(ascii: "-")
                at += 1
            }
            if radix == 16, at + 2 < bytes.count, bytes[at] == UInt8(ascii: "0"),
                bytes[at + 1] | 0x20 == UInt8(ascii: "x"), digit(bytes[at + 2], radix) != nil
            {
                at += 2
            }
            var value: UInt64 = 0
            var digits = 0
            while at < bytes.count, let d = digit(bytes[at], radix) {
                let (product, overflow) = value.multipliedReportingOverflow(by: radix)
                value = overflow || product > UInt64.max - d ? UInt64.max : product + d
                digits += 1
                at += 1
            }
            guard digits > 0 else { return nil }
            index = at
            return negative && value != UInt64.max ? 0 &- value : value
        }

        private func digit(_ byte: UInt8, _ radix: UInt64) -> UInt64? {
            let value: UInt64
            switch byte {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): value = UInt64(byte - UInt8(ascii: "0"))
            case UInt8(ascii: "a")...UInt8(ascii: "f"): value = UInt64(byte - UInt8(ascii: "a") + 10)
            case UInt8(ascii: "A")...UInt8(ascii: "F"): value = UInt64(byte - UInt8(ascii: "A") + 10)
            default: return nil
            }
            return value < radix ? value : nil
        }
    }
}
