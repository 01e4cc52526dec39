/// A message in bytes its caller owns (a read buffer, or a ``QMPMessage``'s own), with the ranges of
/// its top-level members: what the express lane routes without copying the message first. Holds no
/// reference, so passing one around costs no reference counting; valid only while those bytes are.
public struct QMPMessageView {
    /// The message's bytes, unchanged.
    public let bytes: UnsafeBufferPointer<UInt8>
    @usableFromInline let top: MessageOffsets

    init(bytes: UnsafeBufferPointer<UInt8>, top: MessageOffsets) {
        self.bytes = bytes
        self.top = top
    }

    /// The byte range in ``bytes`` of the value of a top-level member, if present.
    @inlinable @inline(__always) public func range(of member: QMPMessage.Member) -> Range<Int>? { top[member] }

    /// The bytes of the value of a top-level member, if present.
    @inlinable @inline(__always) public subscript(member: QMPMessage.Member) -> UnsafeBufferPointer<UInt8>? {
        top[member].map { UnsafeBufferPointer(rebasing: bytes[$0]) }
    }

    /// The message with its `id` replaced by `newID` (see ``QMPMessage/replacingID(withSlice:spare:)``),
    /// followed by CR LF, written over `line` (whose capacity a caller that reuses it keeps).
    public func writeLine(replacingIDWith newID: ArraySlice<UInt8>?, into line: inout [UInt8]) {
        guard let newID else { return writeLine(newID: nil, into: &line) }
        newID.withUnsafeBufferPointer { writeLine(newID: $0, into: &line) }
    }

    /// ``writeLine(replacingIDWith:into:)`` with the decimal digits of `number` as the new id.
    public func writeLine(replacingIDWith number: UInt64, into line: inout [UInt8]) {
        Self.withDecimalDigits(of: number) { writeLine(newID: $0, into: &line) }
    }

    private func writeLine(newID: UnsafeBufferPointer<UInt8>?, into line: inout [UInt8]) {
        let splice = idSplice(hasNewID: newID != nil)
        let count = splice.count(messageCount: bytes.count, newIDCount: newID?.count ?? 0)
        line.overwrite(count: count + 2) { out in
            write(splice, newID: newID, to: out.baseAddress!)
            out[count] = 0x0D
            out[count + 1] = 0x0A
        }
    }

    /// The message with its `id` replaced by `newID` in an array of its own, with `spare` more capacity.
    func replacingID(withBytes newID: UnsafeBufferPointer<UInt8>?, spare: Int) -> [UInt8] {
        // The result is the message's head, a joiner (`, "id": ` or its tail), the new id and the
        // message's tail: sized once, each piece copied with one memcpy.
        let splice = idSplice(hasNewID: newID != nil)
        let count = splice.count(messageCount: bytes.count, newIDCount: newID?.count ?? 0)
        guard count + spare <= Self.stackAssemblyLimit else {
            // This initializer has a large fixed cost (an unspecialized allocation): paid once
            // for a big message, it saves a copy.
            return [UInt8](unsafeUninitializedCapacity: count + spare) { out, initialized in
                write(splice, newID: newID, to: out.baseAddress!)
                initialized = count
            }
        }
        // A small message is assembled on the stack: an array copied from a buffer costs least.
        var result = withUnsafeTemporaryAllocation(of: UInt8.self, capacity: count) { temp in
            write(splice, newID: newID, to: temp.baseAddress!)
            return Array(temp)
        }
        result.reserveCapacity(count + spare)  // usually within what the allocation already has
        return result
    }

    static func withDecimalDigits<Result>(of number: UInt64, _ body: (UnsafeBufferPointer<UInt8>) -> Result)
        -> Result
    {
        withUnsafeTemporaryAllocation(of: UInt8.self, capacity: 20) { digits in
            var start = digits.count
            var rest = number
            repeat {
                start -= 1
                digits[start] = UInt8(truncatingIfNeeded: rest % 10) + 0x30
                rest /= 10
            } while rest > 0
            return body(UnsafeBufferPointer(rebasing: digits[start...]))
        }
    }

    /// Results up to this size are assembled on the stack, then copied into their array.
    private static let stackAssemblyLimit = 1024

    /// Where the new id goes: the message's head ends at `headEnd`, then come the tail of the joiner
    /// `, "id": ` from `joinerStart`, the new id, and the message from `tailStart`.
    private struct IDSplice {
        static let joiner: StaticString = ", \"id\": "
        var headEnd: Int
        var tailStart: Int
        var joinerStart: Int
        var joinerCount: Int { Self.joiner.utf8CodeUnitCount - joinerStart }
        /// The length of the spliced message.
        func count(messageCount: Int, newIDCount: Int) -> Int {
            headEnd + joinerCount + newIDCount + messageCount - tailStart
        }
    }

    private func idSplice(hasNewID: Bool) -> IDSplice {
        var splice = IDSplice(
            headEnd: bytes.count, tailStart: bytes.count, joinerStart: IDSplice.joiner.utf8CodeUnitCount)
        if let range = top[.id] {
            if hasNewID {
                splice.headEnd = range.lowerBound
                splice.tailStart = range.upperBound
            } else if let before = top.valueEndBeforeID {
                splice.headEnd = before
                splice.tailStart = range.upperBound
            } else {
                splice.headEnd = top.idKeyStart ?? range.lowerBound
                splice.tailStart = top.keyStartAfterID ?? range.upperBound
            }
        } else if hasNewID {
            splice.headEnd = top.lastValueEnd ?? top.closingBrace
            splice.tailStart = splice.headEnd
            splice.joinerStart = top.lastValueEnd == nil ? 2 : 0
        }
        return splice
    }

    /// Writes the message's head, the joiner, the new id and the message's tail at `start`: one memcpy
    /// each.
    private func write(_ splice: IDSplice, newID: UnsafeBufferPointer<UInt8>?, to start: UnsafeMutablePointer<UInt8>) {
        guard let from = bytes.baseAddress else { return }
        var to = start
        func put(_ source: UnsafePointer<UInt8>, _ length: Int) {
            to.update(from: source, count: length)
            to += length
        }
        put(from, splice.headEnd)
        put(IDSplice.joiner.utf8Start + splice.joinerStart, splice.joinerCount)
        if let newID, let base = newID.baseAddress { put(base, newID.count) }
        put(from + splice.tailStart, bytes.count - splice.tailStart)
    }
}
