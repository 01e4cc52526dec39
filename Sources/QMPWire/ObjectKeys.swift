#if canImport(Glibc)
import Glibc
#endif

/// The keys of one JSON object being parsed, for QEMU's "duplicate key" error.
///
/// The first eight keys that are plain ranges of the input live inline (on the parser's stack):
/// objects of QMP messages are that small, so checking them allocates nothing. Keys past those, and
/// keys that decoding changed (escapes, non-ASCII), go to an array.
struct ObjectKeys {
    private typealias Slot = (start: Int, end: Int)
    private static let inlineCapacity = 8
    private var slots: (Slot, Slot, Slot, Slot, Slot, Slot, Slot, Slot) = (
        (0, 0), (0, 0), (0, 0), (0, 0), (0, 0), (0, 0), (0, 0), (0, 0)
    )
    private var slotCount = 0
    private var others: [(key: KeyBytes, hash: UInt64)] = []

    /// Adds `key` (bytes of `input`); false when the object already has a key with the same bytes.
    mutating func insert(_ key: KeyBytes, in input: UnsafeBufferPointer<UInt8>) -> Bool {
        if key.decoded == nil, others.isEmpty, slotCount < Self.inlineCapacity {
            // The common case, a plain key while all keys so far are inline: no hash, no closure.
            if hasInlineKey(UnsafeBufferPointer(rebasing: input[key.start..<key.end]), in: input) { return false }
            addInline(key)
            return true
        }
        // The spilled keys are told apart by hash.
        let hash = key.hash(in: input)
        let duplicate = key.withBytes(in: input) { bytes in
            if hasInlineKey(bytes, in: input) { return true }
            for other in others where other.hash == hash {
                if other.key.withBytes(in: input, { Self.same($0, bytes) }) { return true }
            }
            return false
        }
        if duplicate { return false }
        if key.decoded == nil, slotCount < Self.inlineCapacity {
            addInline(key)
        } else {
            others.append((key, hash))
        }
        return true
    }

    /// Whether an inline key has `bytes`. Inline keys are few: their lengths screen them.
    /// (Mutating: borrowing the tuple would copy it.)
    private mutating func hasInlineKey(_ bytes: UnsafeBufferPointer<UInt8>, in input: UnsafeBufferPointer<UInt8>)
        -> Bool
    {
        let count = slotCount
        return withUnsafeMutableBytes(of: &slots) { raw in
            let stored = raw.assumingMemoryBound(to: Slot.self)
            for index in 0..<count where stored[index].end - stored[index].start == bytes.count {
                let slot = stored[index]
                if Self.same(UnsafeBufferPointer(rebasing: input[slot.start..<slot.end]), bytes) { return true }
            }
            return false
        }
    }

    private mutating func addInline(_ key: KeyBytes) {
        let index = slotCount
        withUnsafeMutableBytes(of: &slots) { raw in
            raw.assumingMemoryBound(to: Slot.self)[index] = (key.start, key.end)
        }
        slotCount += 1
    }

    private static func same(_ a: UnsafeBufferPointer<UInt8>, _ b: UnsafeBufferPointer<UInt8>) -> Bool {
        a.count == b.count && (a.count == 0 || memcmp(a.baseAddress!, b.baseAddress!, a.count) == 0)
    }
}
