import ArgumentParser
import QMPWire

#if canImport(Glibc)
import Glibc
#endif

/// `qmp-bench framer`: the two framers every byte goes through, against a plain newline split
/// (`memchr`) of the same bytes fed in the same chunks: QMPFramer (client input, with the top-level
/// scanner) and QMPOutputFramer (QEMU's output: every reply and event the sidecar forwards).
struct FramerBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "framer",
        abstract:
            "QMPFramer and QMPOutputFramer throughput on one ~64 MiB reply and on 100k small messages, vs a memchr newline split."
    )

    @Option(help: "Bytes per append, as one recv() would deliver them.")
    var chunk = 65536

    @Option(help: "Repetitions per measurement (the best is reported).")
    var repetitions = 5

    @Option(help: "Number of small messages.")
    var messages = 100_000

    func run() throws {
        let big = Self.bigReply()
        print("qmp-bench framer: chunk \(chunk) B, best of \(repetitions)")
        print("\n1 reply of \(Self.fixed(Double(big.bytes.count) / 1_048_576, 1)) MiB (\(big.elements) array elements)")
        try compare(big.bytes, units: 1, unit: "throughput")

        let input = Self.smallMessages(messages, output: false)
        print(
            "\n\(messages) small client-side messages (\(Self.fixed(Double(input.count) / 1_048_576, 1)) MiB: commands, replies, events)"
        )
        try compare(input, units: messages, unit: "msgs/s", output: false)

        let output = Self.smallMessages(messages, output: true)
        print(
            "\n\(messages) small QEMU output messages (\(Self.fixed(Double(output.count) / 1_048_576, 1)) MiB: replies, events)"
        )
        try compare(output, units: messages, unit: "msgs/s", input: false)
    }

    /// Times the baseline and each framer (alone and with parsing) on `bytes`; prints rows and ratios.
    func compare(_ bytes: [UInt8], units: Int, unit: String, input: Bool = true, output: Bool = true) throws {
        var rows: [(name: String, run: ([UInt8], Int) -> Int)] = []
        if input {
            rows += [
                ("QMPFramer", { Self.frame($0, chunk: $1, parse: false) }),
                ("QMPFramer + QMPMessage.parse", { Self.frame($0, chunk: $1, parse: true) }),
            ]
        }
        if output {
            rows += [
                ("QMPOutputFramer", { Self.frameOutput($0, chunk: $1, parse: false) }),
                ("QMPOutputFramer + parseOutput", { Self.frameOutput($0, chunk: $1, parse: true) }),
            ]
        }
        let baseline = best { Self.newlineSplit(bytes, chunk: chunk) }
        Self.report("memchr newline split (baseline)", baseline, bytes: bytes.count)
        var ratios: [String] = []
        for row in rows {
            let measured = best { row.run(bytes, chunk) }
            Self.report(row.name, measured, bytes: bytes.count)
            ratios.append("\(row.name) \(Self.fixed(baseline.seconds / measured.seconds, 3))")
            guard measured.units == units else {
                throw ValidationError("\(row.name) found \(measured.units) units, expected \(units)")
            }
        }
        print("  ratio \(unit) vs baseline: " + ratios.joined(separator: "; "))
        guard baseline.units == units || units == 1 else {
            throw ValidationError("baseline found \(baseline.units) lines, expected \(units)")
        }
    }

    struct Measurement {
        var seconds: Double
        var units: Int
    }

    func best(_ body: () -> Int) -> Measurement {
        var result = Measurement(seconds: .infinity, units: 0)
        for _ in 0..<max(1, repetitions) {
            let start = Self.now()
            let units = body()
            let elapsed = Self.now() - start
            if elapsed < result.seconds { result = Measurement(seconds: elapsed, units: units) }
        }
        return result
    }

    static func fixed(_ value: Double, _ digits: Int) -> String {
        var scale = 1.0
        for _ in 0..<digits { scale *= 10 }
        let rounded = (value * scale).rounded() / scale
        return "\(rounded)"
    }

    static func report(_ name: String, _ m: Measurement, bytes: Int) {
        let padded = name + String(repeating: " ", count: max(0, 34 - name.count))
        print(
            "  \(padded) \(fixed(Double(bytes) / m.seconds / 1e6, 1)) MB/s  \(fixed(Double(m.units) / m.seconds, 0)) msgs/s"
                + "  (\(m.units) units in \(fixed(m.seconds * 1000, 2)) ms)")
    }

    static func now() -> Double {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
    }

    /// Feeds `bytes` to `body` in pieces of `chunk` bytes, as successive `recv()`s would.
    static func inChunks(_ bytes: [UInt8], chunk: Int, _ body: (UnsafeRawBufferPointer) -> Void) {
        bytes.withUnsafeBytes { all in
            var offset = 0
            while offset < all.count {
                body(UnsafeRawBufferPointer(rebasing: all[offset..<min(all.count, offset + chunk)]))
                offset += chunk
            }
        }
    }

    /// Baseline: split on `\n` with memchr and copy each line out, as a line-based proxy would.
    static func newlineSplit(_ bytes: [UInt8], chunk: Int) -> Int {
        var lines = 0
        var pending: [UInt8] = []
        var checksum = 0
        inChunks(bytes, chunk: chunk) { piece in
            var start = 0
            while start < piece.count {
                let base = piece.baseAddress! + start
                if let hit = memchr(base, 0x0A, piece.count - start) {
                    let end = base.distance(to: hit) + start + 1
                    pending.append(contentsOf: piece[start..<end])
                    let line = pending
                    checksum &+= line.count
                    pending.removeAll(keepingCapacity: true)
                    lines += 1
                    start = end
                } else {
                    pending.append(contentsOf: piece[start...])
                    start = piece.count
                }
            }
        }
        return checksum > 0 ? lines : 0
    }

    /// Client input through QMPFramer (optionally parsed): the number of messages.
    static func frame(_ bytes: [UInt8], chunk: Int, parse: Bool) -> Int {
        var framer = QMPFramer()
        var units = 0
        inChunks(bytes, chunk: chunk) { piece in
            for case .message(let message, _) in framer.append(piece) {
                if !parse || QMPMessage.parse(message).isSuccess { units += 1 }
            }
        }
        return units
    }

    /// QEMU output through QMPOutputFramer (optionally parsed): the number of messages.
    static func frameOutput(_ bytes: [UInt8], chunk: Int, parse: Bool) -> Int {
        var framer = QMPOutputFramer()
        var units = 0
        inChunks(bytes, chunk: chunk) { piece in
            for message in framer.append(piece) where !parse || QMPMessage.parseOutput(message).isSuccess {
                units += 1
            }
        }
        return units
    }

    /// A reply just under QEMU's 64 MiB message limit (and its 2 Mi token limit): an array of
    /// objects carrying 2 KiB strings, like `guest-file-read` or `query-...` dumps.
    static func bigReply() -> (bytes: [UInt8], elements: Int) {
        var out = Array(#"{"return": ["#.utf8)
        var n = 0
        let limit = (64 << 20) - 4096
        let payload = String(repeating: "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo=", count: 57)
        while out.count < limit - 2300 {
            if n > 0 { out += Array(", ".utf8) }
            out += Array(
                (#"{"name": "dev\#(n)", "size": \#(UInt64.max - UInt64(n)), "#
                    + #""path": "/machine/peripheral/dev\#(n)\u00e9", "data": "\#(payload)"}"#).utf8)
            n += 1
        }
        out += Array(#"], "id": "big-1"}"#.utf8) + [0x0D, 0x0A]
        return (out, n)
    }

    /// Commands, replies and events as a busy monitor carries them, one per line; with `output`, only
    /// what QEMU writes (replies and events).
    static func smallMessages(_ count: Int, output: Bool) -> [UInt8] {
        var out: [UInt8] = []
        for i in 0..<count {
            switch output ? 1 + i % 2 : i % 4 {
            case 0: out += Array(#"{"execute": "query-status", "id": \#(i)}"#.utf8)
            case 1:
                out += Array(
                    #"{"return": {"status": "running", "singlestep": false, "running": true}, "id": \#(i)}"#.utf8)
            case 2:
                out += Array(
                    (#"{"timestamp": {"seconds": 1795732918, "microseconds": 338638}, "event": "DEVICE_DELETED", "#
                        + #""data": {"device": "k\#(i)", "path": "/machine/peripheral/k\#(i)"}}"#).utf8)
            default:
                out += Array(
                    #"{'execute': 'device_del', 'arguments': {'id': 'hostdev\#(i)'}, 'id': 'libvirt-\#(i)'}"#.utf8)
            }
            out += [0x0D, 0x0A]
        }
        return out
    }
}

extension Result {
    fileprivate var isSuccess: Bool {
        if case .success = self { return true }
        return false
    }
}
