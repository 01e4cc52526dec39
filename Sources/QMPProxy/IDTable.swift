/// A table keyed by the sidecar's own integer ids: client numbers and the ids it gives commands.
///
/// `Dictionary` hashes every key with seeded SipHash, about a hundred instructions a lookup, and the
/// router looks ids up several times per round trip. These keys are counters the sidecar hands out
/// itself (never chosen by a peer), so a multiplicative hash spreads them evenly at a few
/// instructions: open addressing, linear probing, deletion by backward shift (no tombstones), at
/// most three quarters full.
///
/// A value can be checked out (moved out, its key staying in place) and checked in again: the router
/// works on a client's session while it calls its own methods, without copying the session or
/// probing twice for an insertion.
public struct IDTable<Value> {
    /// ``vacant`` marks a free slot; a checked-out entry keeps its key with a nil value.
    @usableFromInline var slotKeys: [Int]
    @usableFromInline var slotValues: [Value?]
    /// 64 minus log2 of the capacity: the hash keeps the product's top bits.
    @usableFromInline var shift: Int
    @usableFromInline var storedCount = 0

    @usableFromInline static var vacant: Int { .min }

    @inlinable public init() {
        slotKeys = Array(repeating: Self.vacant, count: 8)
        slotValues = Array(repeating: nil, count: 8)
        shift = 61
    }

    /// Entries, checked-out ones included.
    @inlinable public var count: Int { storedCount }

    @inlinable public var isEmpty: Bool { storedCount == 0 }

    /// The keys of the entries, in no particular order.
    public var allKeys: [Int] {
        var result: [Int] = []
        result.reserveCapacity(storedCount)
        for key in slotKeys where key != Self.vacant { result.append(key) }
        return result
    }

    /// The keys in ascending order (for a deterministic fan-out).
    public var sortedKeys: [Int] { allKeys.sorted() }

    /// The entries that are not checked out, in no particular order.
    public var entries: [(key: Int, value: Value)] {
        var result: [(key: Int, value: Value)] = []
        result.reserveCapacity(storedCount)
        for slot in slotKeys.indices {
            if let value = slotValues[slot] { result.append((slotKeys[slot], value)) }
        }
        return result
    }

    /// The values that are not checked out, in no particular order.
    public var values: [Value] { slotValues.compactMap { $0 } }

    /// The value for `key`; nil when there is none or it is checked out. Setting nil removes the entry.
    @inlinable public subscript(key: Int) -> Value? {
        get {
            guard let slot = slot(of: key) else { return nil }
            return slotValues[slot]
        }
        set {
            if let newValue { insert(newValue, forKey: key) } else { removeValue(forKey: key) }
        }
    }

    /// Runs `body` on the value stored for `key` (no copy of it); nil when there is none.
    @inlinable public func read<Result>(_ key: Int, _ body: (Value) -> Result) -> Result? {
        guard let slot = slot(of: key) else { return nil }
        return slotValues[slot].map(body)  // borrowed in place, not copied
    }

    /// Runs `body` on the value stored for `key` in place; nil when there is none.
    @inlinable public mutating func withValue<Result>(forKey key: Int, _ body: (inout Value) -> Result) -> Result? {
        guard let slot = slot(of: key), slotValues[slot] != nil else { return nil }
        return body(&slotValues[slot]!)
    }

    /// Moves the value for `key` out, keeping its place for ``checkIn(_:forKey:)``; nil when there is
    /// none (or it is out already).
    @inlinable public mutating func checkOut(_ key: Int) -> Value? {
        guard let slot = slot(of: key) else { return nil }
        return slotValues[slot].take()
    }

    /// Moves `value` back where ``checkOut(_:)`` took it from (or adds it when its entry was removed
    /// meanwhile), leaving nil behind: a move, never a copy.
    @inlinable public mutating func checkIn(_ value: inout Value?, forKey key: Int) {
        if let slot = slot(of: key) {
            swap(&slotValues[slot], &value)
        } else if let value = value.take() {
            insert(value, forKey: key)
        }
    }

    @inlinable public func contains(_ key: Int) -> Bool {
        guard let slot = slot(of: key) else { return false }
        return slotValues[slot] != nil
    }

    @inlinable @discardableResult
    public mutating func removeValue(forKey key: Int) -> Value? {
        guard var hole = slot(of: key) else { return nil }
        let removed = slotValues[hole].take()
        slotKeys[hole] = Self.vacant
        storedCount -= 1
        // Backward shift: an entry further along the probe run moves into the hole unless its home
        // slot lies cyclically after the hole (then it is still reachable where it is).
        let mask = slotKeys.count - 1
        var next = (hole + 1) & mask
        while slotKeys[next] != Self.vacant {
            if (next - home(of: slotKeys[next])) & mask >= (next - hole) & mask {
                slotKeys[hole] = slotKeys[next]
                slotKeys[next] = Self.vacant
                slotValues[hole] = slotValues[next].take()
                hole = next
            }
            next = (next + 1) & mask
        }
        return removed
    }

    public mutating func removeAll() {
        self = IDTable()
    }

    // MARK: - Probing

    @inlinable @inline(__always) func home(of key: Int) -> Int {
        Int(truncatingIfNeeded: (UInt64(bitPattern: Int64(key)) &* 0x9E37_79B9_7F4A_7C15) >> UInt64(shift))
    }

    /// The slot holding `key` (its value may be checked out).
    @inlinable func slot(of key: Int) -> Int? {
        let mask = slotKeys.count - 1
        var slot = home(of: key)
        while slotKeys[slot] != Self.vacant {
            if slotKeys[slot] == key { return slot }
            slot = (slot + 1) & mask
        }
        return nil
    }

    @inlinable mutating func insert(_ value: consuming Value, forKey key: Int) {
        precondition(key != Self.vacant, "IDTable: Int.min is not a key")
        let mask = slotKeys.count - 1
        var slot = home(of: key)
        while slotKeys[slot] != Self.vacant {
            if slotKeys[slot] == key {
                slotValues[slot] = consume value
                return
            }
            slot = (slot + 1) & mask
        }
        slotKeys[slot] = key
        slotValues[slot] = consume value
        storedCount += 1
        if storedCount * 4 > slotKeys.count * 3 { grow() }
    }

    @usableFromInline mutating func grow() {
        var oldKeys = Array(repeating: Self.vacant, count: slotKeys.count * 2)
        var oldValues: [Value?] = Array(repeating: nil, count: slotKeys.count * 2)
        swap(&oldKeys, &slotKeys)
        swap(&oldValues, &slotValues)
        shift -= 1
        storedCount = 0
        for slot in oldKeys.indices where oldKeys[slot] != Self.vacant {
            let key = oldKeys[slot]
            if let value = oldValues[slot].take() {
                insert(value, forKey: key)
            } else {
                insertCheckedOut(key)
            }
        }
    }

    /// Re-adds the key of a checked-out entry while growing.
    @usableFromInline mutating func insertCheckedOut(_ key: Int) {
        let mask = slotKeys.count - 1
        var slot = home(of: key)
        while slotKeys[slot] != Self.vacant { slot = (slot + 1) & mask }
        slotKeys[slot] = key
        storedCount += 1
    }
}

extension IDTable: Sendable where Value: Sendable {}
