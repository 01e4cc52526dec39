import ArgumentParser
import QMPWire

#if canImport(Glibc)
import Glibc
#endif

/// `qmp-bench framer`: QMPFramer (and the top-level scanner) throughput against a plain newline
/// split (`memchr`) of the same bytes, fed in the same chunks.
struct FramerBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "framer",
        abstract: "QMPFramer throughput on one ~64 MiB reply and on 100k small messages, vs a memchr newline split."
    )

    @Option(help: "Bytes per append, as one recv() would deliver them.")
    var chunk = 65536

    @Option(help: "Repetitions per measurement (the best is reported).")
    var repetitions = 5

    @Option(help: "Number of small messages.")
    var messages = 100_000

    func run() throws {
        let big = Self.bigReply()
        let small = Self.smallMessages(messages)
        print("qmp-bench framer: chunk \(chunk) B, best of \(repetitions)")

        print("\n1 reply of \(Self.fixed(Double(big.bytes.count) / 1_048_576, 1)) MiB (\(big.elements) array elements)")
        let baseBig = best { Self.newlineSplit(big.bytes, chunk: chunk) }
        let frameBig = best { Self.frame(big.bytes, chunk: chunk, parse: false) }
        let parseBig = best { Self.frame(big.bytes, chunk: chunk, parse: true) }
        Self.report("memchr newline split (baseline)", baseBig, bytes: big.bytes.count)
        Self.report("QMPFramer", frameBig, bytes: big.bytes.count)
        Self.report("QMPFramer + QMPMessage.parse", parseBig, bytes: big.bytes.count)
        print(
            "  ratio framer/baseline throughput: \(Self.fixed(baseBig.seconds / frameBig.seconds, 3)); "
                + "framer+parse/baseline: \(Self.fixed(baseBig.seconds / parseBig.seconds, 3))")

        print(
            "\n\(messages) small messages (\(Self.fixed(Double(small.count) / 1_048_576, 1)) MiB: commands, replies, events)"
        )
        let baseSmall = best { Self.newlineSplit(small, chunk: chunk) }
        let frameSmall = best { Self.frame(small, chunk: chunk, parse: false) }
        let parseSmall = best { Self.frame(small, chunk: chunk, parse: true) }
        Self.report("memchr newline split (baseline)", baseSmall, bytes: small.count)
        Self.report("QMPFramer", frameSmall, bytes: small.count)
        Self.report("QMPFramer + QMPMessage.parse", parseSmall, bytes: small.count)
        print(
            "  ratio framer/baseline msgs/s: \(Self.fixed(baseSmall.seconds / frameSmall.seconds, 3)); "
                + "framer+parse/baseline: \(Self.fixed(baseSmall.seconds / parseSmall.seconds, 3))")
        guard frameSmall.units == messages, parseSmall.units == messages, baseSmall.units == messages,
            frameBig.units == 1, parseBig.units == 1
        else {
            throw ValidationError("unit counts disagree: framer \(frameSmall.units), baseline \(baseSmall.units)")
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

    /// Baseline: split on `\n` with memchr and copy each line out, as a line-based proxy would.
    static func newlineSplit(_ bytes: [UInt8], chunk: Int) -> Int {
        var lines = 0
        var pending: [UInt8] = []
        var checksum = 0
        bytes.withUnsafeBytes { all in
            var offset = 0
            while offset < all.count {
                let piece = UnsafeRawBufferPointer(rebasing: all[offset..<min(all.count, offset + chunk)])
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
                offset += chunk
            }
        }
        return checksum > 0 ? lines : 0
    }

    static func frame(_ bytes: [UInt8], chunk: Int, parse: Bool) -> Int {
        var framer = QMPFramer()
        var units = 0
        bytes.withUnsafeBytes { all in
            var offset = 0
            while offset < all.count {
                let piece = UnsafeRawBufferPointer(rebasing: all[offset..<min(all.count, offset + chunk)])
                for frame in framer.append(piece) {
                    if case .message(let message, _) = frame {
                        if parse {
                            if case .success = QMPMessage.parse(message) { units += 1 }
                        } else {
                            units += 1
                        }
                    }
                }
                offset += chunk
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

    /// Commands, replies and events as a busy monitor carries them, one per line.
    static func smallMessages(_ count: Int) -> [UInt8] {
        var out: [UInt8] = []
        for i in 0..<count {
            switch i % 4 {
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
