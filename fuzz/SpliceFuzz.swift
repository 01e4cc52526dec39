// libFuzzer target for id splicing: replacing, adding and removing the top-level id of commands and
// of QEMU's replies at byte level, and restoring a client's id as QEMU would echo it.
// Built by fuzz/run.sh together with Sources/QMPWire/*.swift (one module, no import).

func fuzzFail(_ message: String) -> Never {
    fatalError("fuzz invariant broken: \(message)")
}

/// Ids a sidecar splices: its own numbers, and QEMU echoes of clients' ids.
private let spliced: [[UInt8]] = ["1", "18446744073709551615", "\"s\"", "{\"a\": [1, \"b\"]}", "[]", "-0"].map {
    Array($0.utf8)
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    guard size > 0 else { return 0 }
    let choice = Int(data[0])
    let input = Array(UnsafeBufferPointer(start: data + 1, count: size - 1))
    // Input side (commands, QEMU's grammar) and output side (replies, QEMU's writer), as parsed.
    let parsed: [(QMPMessage, ([UInt8]) -> Result<QMPMessage, QMPInputError>)] = [
        (QMPMessage.parse(input), QMPMessage.parse), (QMPMessage.parseOutput(input), QMPMessage.parseOutput),
    ].compactMap { result, parser in
        guard case .success(let message) = result else { return nil }
        return (message, parser)
    }
    for (message, parse) in parsed {
        let others = members(of: message, except: .id)
        // Replace or add: the id is exactly the new bytes, every other member unchanged.
        let newID = spliced[choice % spliced.count]
        guard case .success(let with) = parse(message.replacingID(with: newID)) else {
            fuzzFail("splicing id \(String(decoding: newID, as: UTF8.self)) broke the message")
        }
        if with[.id].map(Array.init) != newID { fuzzFail("spliced id is not the new bytes") }
        if members(of: with, except: .id) != others { fuzzFail("splicing changed another member") }
        // Remove: no id, every other member unchanged; removing twice changes nothing.
        let withoutBytes = message.replacingID(with: nil)
        guard case .success(let without) = parse(withoutBytes), without.id == nil else {
            fuzzFail("removing the id broke the message")
        }
        if members(of: without, except: .id) != others { fuzzFail("removing changed another member") }
        if without.replacingID(with: nil) != withoutBytes { fuzzFail("removing an absent id changed bytes") }
        // Restore: the echo of a client's id spliced into a reply parses as that id.
        if let id = message[.id], let echoed = QMPJSON.echoed(id) {
            let reply = Array("{\"return\": {}, \"id\": 0}".utf8)
            guard case .success(let r) = QMPMessage.parseOutput(reply),
                case .success(let restored) = QMPMessage.parseOutput(r.replacingID(with: echoed)),
                restored[.id].map(Array.init) == echoed
            else { fuzzFail("restored id is not the echo") }
            // No fixed-point check: QEMU's echo is not one (an out-of-range number becomes `inf`, which it
            // cannot parse back; members colliding in a QDict bucket come back in reversed order).
        }
    }
    return 0
}

/// The message's top-level members other than `skipped`, as byte slices in order.
private func members(of message: QMPMessage, except skipped: QMPMessage.Member) -> [[UInt8]] {
    QMPMessage.Member.allCases.filter { $0 != skipped }.map { member in
        message[member].map(Array.init) ?? []
    }
}
