/// A client's last lone command, to recognise its next one by comparison (header prediction, as
/// ``QMPOutputFramer/loneReply(_:id:)`` does for QEMU's replies). A client polling QEMU sends the
/// same command again and again with a new id at its end: `{"execute":"query-status","id":"libvirt-12"}`.
///
/// A read is the remembered command when it has the same bytes before the id's value and after it,
/// and its id is a value the plain-command scan accepts (``ObjectScanRules/plainCommand``). The
/// object is then as valid as the remembered one, with the same members where they were: only the
/// id's range and what follows it move.
public struct LonePrediction: Sendable {
    /// The remembered read.
    private var read: [UInt8] = []
    private var top = MessageOffsets()
    /// The id's value in `read`: it is the object's last member.
    private var id = 0..<0
    /// Just past the closing brace in `read`.
    private var objectEnd = 0

    public init() {}

    /// Remembers `message`, the object at the start of `read`, when its id is its last member;
    /// forgets otherwise.
    public mutating func remember(_ message: QMPMessageView, read bytes: UnsafeRawBufferPointer) {
        guard let id = message.top[.id], message.top.keyStartAfterID == nil, message.top.lastValueEnd == id.upperBound
        else {
            self.id = 0..<0
            return
        }
        read.overwrite(with: bytes.bindMemory(to: UInt8.self))
        top = message.top
        self.id = id
        objectEnd = message.bytes.count
    }

    /// The view of `bytes` when they are the remembered command with another plain id; nil otherwise.
    func view(of bytes: UnsafeRawBufferPointer) -> QMPMessageView? {
        let all = bytes.bindMemory(to: UInt8.self)
        let tail = read.count - id.upperBound
        let idCount = all.count - id.lowerBound - tail
        guard !id.isEmpty, idCount > 0,
            read.withUnsafeBytes({ old in
                ShortBytes.equal(old.baseAddress!, bytes.baseAddress!, count: id.lowerBound)
                    && ShortBytes.equal(
                        old.baseAddress! + id.upperBound, bytes.baseAddress! + all.count - tail, count: tail)
            }),
            // A value the plain-command scan takes as it is, and nothing after it.
            ObjectScanRules.plainCommand.valueEnd(
                UnsafeBufferPointer(rebasing: all[..<(id.lowerBound + idCount)]), from: id.lowerBound)
                == id.lowerBound + idCount
        else { return nil }
        let shift = idCount - id.count
        var offsets = top
        offsets[.id] = id.lowerBound..<(id.upperBound + shift)
        offsets.lastValueEnd = id.upperBound + shift
        offsets.closingBrace = top.closingBrace + shift
        return QMPMessageView(bytes: UnsafeBufferPointer(rebasing: all[..<(objectEnd + shift)]), top: offsets)
    }
}

extension QMPFramer {
    /// ``loneObject(_:)``, trying `prediction` first; `predicted` tells which found it (a predicted
    /// object has the remembered one's members, all but the id with the same bytes).
    public func loneObject(_ bytes: UnsafeRawBufferPointer, predictedBy prediction: borrowing LonePrediction)
        -> (message: QMPMessageView, predicted: Bool)?
    {
        if hasQEMULimits, isBetweenUnits, bytes.count <= Self.parsedUnitLimit, let view = prediction.view(of: bytes) {
            return (view, true)
        }
        return loneObject(bytes).map { ($0, false) }
    }
}

/// Comparing and searching the few dozen bytes of a message, eight at a time: shorter code than
/// the C library's vector routines, whose length matters more here than their speed.
enum ShortBytes {
    private static let ones: UInt64 = 0x0101_0101_0101_0101

    /// Whether `count` bytes at `a` and `b` are equal.
    @inline(never)
    static func equal(_ a: UnsafeRawPointer, _ b: UnsafeRawPointer, count: Int) -> Bool {
        var i = 0
        while i + 8 <= count {
            guard
                a.loadUnaligned(fromByteOffset: i, as: UInt64.self)
                    == b.loadUnaligned(fromByteOffset: i, as: UInt64.self)
            else { return false }
            i += 8
        }
        while i < count {
            guard a.load(fromByteOffset: i, as: UInt8.self) == b.load(fromByteOffset: i, as: UInt8.self) else {
                return false
            }
            i += 1
        }
        return true
    }

    /// Whether `byte` occurs in the `count` bytes at `start`.
    @inline(never)
    static func contains(_ byte: UInt8, _ start: UnsafeRawPointer, count: Int) -> Bool {
        let pattern = ones &* UInt64(byte)
        var i = 0
        while i + 8 <= count {
            let word = start.loadUnaligned(fromByteOffset: i, as: UInt64.self) ^ pattern
            // A zero byte of `word` is a match (the lowest marked one is exact; any mark means one).
            if (word &- ones) & ~word & (ones &* 0x80) != 0 { return true }
            i += 8
        }
        while i < count {
            if start.load(fromByteOffset: i, as: UInt8.self) == byte { return true }
            i += 1
        }
        return false
    }
}
