// libFuzzer target for the QMPWire framer, scanner, id splicing, echo and jansson wrapper.
// Built by fuzz/run.sh together with Sources/QMPWire/*.swift (one module, no import).

/// Stops the run with a message: libFuzzer saves the input that got here.
func fuzzFail(_ message: String) -> Never {
    fatalError("fuzz invariant broken: \(message)")
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let input = Array(UnsafeBufferPointer(start: data, count: size))

    // 1. Framing does not depend on how the stream is cut.
    var whole = QMPFramer()
    let frames = whole.append(input)
    let cut = size == 0 ? 0 : Int(input[0]) % (size + 1)
    var split = QMPFramer()
    let pieces = split.append(input[..<cut]) + split.append(input[cut...])
    if pieces != frames { fuzzFail("split at \(cut) frames differently") }
    var previousEnd = 0
    for frame in frames {
        if frame.end < previousEnd || frame.end > size { fuzzFail("frame end \(frame.end) out of order") }
        previousEnd = frame.end
    }

    // 2. The plain-command scan answers for the grammar only where the grammar agrees, on every
    //    unit and on the input as a whole.
    for case .message(let bytes, _) in frames { checkPlainScan(bytes) }
    checkPlainScan(input)

    // 3. Every message unit either parses or fails with QEMU's text; parsed ones splice cleanly.
    for case .message(let bytes, _) in frames {
        switch QMPMessage.parse(bytes) {
        case .failure(let error):
            if error.descBytes.isEmpty { fuzzFail("empty error text") }
            _ = QMPBuilder.error(error)
        case .success(let message):
            guard case .success(let without) = QMPMessage.parse(message.replacingID(with: nil)),
                without.id == nil
            else { fuzzFail("removing the id broke the message") }
            guard case .success(let with) = QMPMessage.parse(message.replacingID(with: Array("\"s\"".utf8))),
                with.string(.id) == "s"
            else { fuzzFail("replacing the id broke the message") }
            if let id = message[.id] {
                guard let echoed = QMPJSON.echoed(id) else { fuzzFail("valid id without echo") }
                if case .failure = QMPMessage.parseOutput(Array("{\"id\": ".utf8) + echoed + [0x7D]) {
                    fuzzFail("echoed id does not parse")
                }
            }
            // JSONValue (jansson, or the grammar where jansson cannot) accepts everything the grammar accepts.
            guard let value = try? JSONValue(parsing: bytes) else { fuzzFail("JSONValue rejected a valid message") }
            if value.qemuBytes.isEmpty { fuzzFail("empty serialization") }
        }
    }
    return 0
}

/// Whatever the plain-command scan accepts, the grammar accepts with the same member ranges and end.
func checkPlainScan(_ bytes: [UInt8]) {
    bytes.withUnsafeBufferPointer { buffer in
        guard let (offsets, end) = QMPOutputScan.leadingObject(of: buffer, rules: .plainCommand)
        else { return }
        guard let (top, grammarEnd, run) = try? QMPGrammar.scanLeading(buffer), top.isObject,
            run <= QMPFramer.maxWhitespaceRun, top.offsets == offsets, grammarEnd == end
        else { fuzzFail("the plain-command scan accepted what the grammar reads otherwise") }
    }
}
