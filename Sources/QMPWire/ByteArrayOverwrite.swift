extension Array where Element == UInt8 {
    /// Makes the array `count` bytes long and lets `fill` write all of them: the buffer is kept when
    /// the array owns it alone and it is large enough, and at an unchanged length nothing but `fill`
    /// runs (the express lane rewrites lines of the same length again and again).
    @inlinable @inline(__always)
    public mutating func overwrite(count newCount: Int, _ fill: (UnsafeMutableBufferPointer<UInt8>) -> Void) {
        if count > newCount {
            removeLast(count - newCount)
        } else if count < newCount {
            append(contentsOf: repeatElement(0, count: newCount - count))
        }
        withUnsafeMutableBufferPointer { fill($0) }
    }

    /// Makes the array a copy of `source`, in place (see ``overwrite(count:_:)``).
    @inlinable @inline(__always)
    public mutating func overwrite(with source: UnsafeBufferPointer<UInt8>) {
        overwrite(count: source.count) { out in
            if let from = source.baseAddress { out.baseAddress!.update(from: from, count: source.count) }
        }
    }
}
