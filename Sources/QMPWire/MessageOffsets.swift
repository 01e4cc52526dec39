/// Where a message's top-level members are (their value ranges) and the offsets id splicing needs.
///
/// Held inline, with no reference inside: the parser fills one per message and the router passes
/// messages by value, so an array here (an allocation, and a retain and release on every copy of a
/// message) would cost more than the scan itself. Offsets are 32-bit: a message or view is then
/// small enough to be copied by a few vector moves instead of a call to `memcpy`, and the scans
/// refuse messages past ``maxBytes``.
@usableFromInline
struct MessageOffsets: Hashable, Sendable {
    /// The largest message whose offsets fit (2 GiB).
    static let maxBytes = Int(Int32.max)

    private static let slotCount = 23
    @usableFromInline static let absent: Int32 = -1
    private static let idKeyStartSlot = 18
    private static let valueEndBeforeIDSlot = 19
    private static let keyStartAfterIDSlot = 20
    private static let lastValueEndSlot = 21
    private static let closingBraceSlot = 22

    @usableFromInline var slots = InlineArray<23, Int32>(repeating: MessageOffsets.absent)

    /// The value range of a top-level member, if present.
    /// Inlinable: the express lane, in another module, reads members known at the call site, and
    /// inlined such a read is two loads.
    @inlinable subscript(member: QMPMessage.Member) -> Range<Int>? {
        @inline(__always) get {
            let slot = Self.firstSlot(of: member)
            guard let lower = offset(slot), let upper = offset(slot + 1) else { return nil }
            return lower..<upper
        }
        set {
            let slot = Self.firstSlot(of: member)
            setOffset(slot, newValue?.lowerBound)
            setOffset(slot + 1, newValue?.upperBound)
        }
    }

    /// Start of the `id` member's key.
    var idKeyStart: Int? {
        get { offset(Self.idKeyStartSlot) }
        set { setOffset(Self.idKeyStartSlot, newValue) }
    }
    /// End of the value before the `id` member (nil when `id` is first).
    var valueEndBeforeID: Int? {
        get { offset(Self.valueEndBeforeIDSlot) }
        set { setOffset(Self.valueEndBeforeIDSlot, newValue) }
    }
    /// Start of the key after the `id` member (nil when `id` is last).
    var keyStartAfterID: Int? {
        get { offset(Self.keyStartAfterIDSlot) }
        set { setOffset(Self.keyStartAfterIDSlot, newValue) }
    }
    /// End of the last member's value (nil for `{}`).
    var lastValueEnd: Int? {
        get { offset(Self.lastValueEndSlot) }
        set { setOffset(Self.lastValueEndSlot, newValue) }
    }
    /// Index of the closing brace.
    var closingBrace: Int {
        get { offset(Self.closingBraceSlot) ?? 0 }
        set { setOffset(Self.closingBraceSlot, newValue) }
    }

    @usableFromInline static func == (a: MessageOffsets, b: MessageOffsets) -> Bool {
        (0..<slotCount).allSatisfy { a.offset($0) == b.offset($0) }
    }

    @usableFromInline func hash(into hasher: inout Hasher) {
        for slot in 0..<Self.slotCount { hasher.combine(offset(slot)) }
    }

    @inlinable @inline(__always)
    static func firstSlot(of member: QMPMessage.Member) -> Int {
        switch member {
        case .execute: 0
        case .execOOB: 2
        case .arguments: 4
        case .id: 6
        case .event: 8
        case .data: 10
        case .returnValue: 12
        case .error: 14
        case .qmp: 16
        }
    }

    @inlinable @inline(__always) func offset(_ slot: Int) -> Int? {
        let value = slots[slot]
        return value == Self.absent ? nil : Int(value)
    }

    @usableFromInline @inline(__always) mutating func setOffset(_ slot: Int, _ value: Int?) {
        slots[slot] = value.map { Int32($0) } ?? Self.absent
    }
}
