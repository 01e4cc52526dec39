// libFuzzer target for QMPOutputFramer (QEMU's output stream -> messages).
// Built by fuzz/run.sh together with Sources/QMPWire/*.swift (one module, no import).

func fuzzFail(_ message: String) -> Never {
    fatalError("fuzz invariant broken: \(message)")
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let input = Array(UnsafeBufferPointer(start: data, count: size))

    // 1. Any bytes: the messages do not depend on how the stream is cut (three cuts from the input).
    var whole = QMPOutputFramer()
    let messages = whole.append(input)
    var cuts = [0, size]
    for byte in input.prefix(3) { cuts.append(Int(byte) * size / 256) }
    cuts.sort()
    var pieces = QMPOutputFramer()
    var split: [[UInt8]] = []
    for (from, to) in zip(cuts, cuts.dropFirst()) { split += pieces.append(input[from..<to]) }
    if split != messages { fuzzFail("cutting at \(cuts) framed differently") }

    // 2. Each message is a contiguous run of the input from an opening to a closing bracket, in order.
    var searchFrom = 0
    for message in messages {
        guard let first = message.first, let last = message.last, first == 0x7B || first == 0x5B,
            last == 0x7D || last == 0x5D
        else { fuzzFail("message not bracketed") }
        guard let at = find(message, in: input, from: searchFrom) else { fuzzFail("message not in the input") }
        searchFrom = at + message.count
    }

    // 3. QEMU-shaped output (what QEMU's writer emits: objects, CRLF after each) built from the
    //    messages that parse as output: framed back exactly, whatever the chunking.
    let lines = messages.filter {
        if case .success = QMPMessage.parseOutput($0) { return true }
        return false
    }
    var stream: [UInt8] = []
    for line in lines { stream += line + [0x0D, 0x0A] }
    var again = QMPOutputFramer()
    var reframed: [[UInt8]] = []
    let step = max(1, Int(input.last ?? 1))
    var offset = 0
    while offset < stream.count {
        reframed += again.append(stream[offset..<min(stream.count, offset + step)])
        offset += step
    }
    if reframed != lines { fuzzFail("QEMU-shaped stream framed differently (step \(step))") }
    return 0
}

private func find(_ needle: [UInt8], in haystack: [UInt8], from start: Int) -> Int? {
    guard needle.count <= haystack.count - start else { return nil }
    var i = start
    while i + needle.count <= haystack.count {
        if haystack[i] == needle[0] && Array(haystack[i..<i + needle.count]) == needle { return i }
        i += 1
    }
    return nil
}
