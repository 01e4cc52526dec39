import ArgumentParser
import Foundation
import QMPTestKit

#if canImport(Glibc)
import Glibc
#endif

/// `qmp-bench proxy`: round-trip latency and pipelined throughput through qmp-sidecar against
/// direct QMP, on one real QEMU with several monitors, measured in the same run.
///
/// Latency: the same command on each path in turn (direct, sidecar, socat when installed),
/// interleaved command by command with a rotating start so drift and noise hit all paths alike.
/// Throughput: `--pipelined` commands written back to back on one path, timed until the last reply;
/// paths alternate over several rounds and the median round counts.
struct ProxyBenchmark: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "proxy",
        abstract: "Round trip and pipelined throughput through qmp-sidecar vs direct, on real QEMU.",
        discussion: """
            Starts qemu-system-x86_64 with one -qmp monitor per path, qmp-sidecar in front of one of \
            them and, when socat is installed, socat in front of another (a dumb proxy baseline). \
            Prints p50/p90/p99 per path and the sidecar/direct ratios (target: round trip <= 1.08, \
            throughput >= 0.98).
            """)

    @Option(help: "Round trips per path.")
    var iterations = 5000

    @Option(help: "Warm-up round trips per path (not counted).")
    var warmup = 300

    @Option(help: "Commands per pipelined throughput round.")
    var pipelined = 5000

    @Option(help: "Throughput rounds per path.")
    var rounds = 5

    @Option(help: "The QMP command to time.")
    var command = "query-status"

    @Option(help: "The qmp-sidecar executable (default: next to qmp-bench).")
    var sidecar: String?

    func run() throws {
        let sidecarPath = sidecar ?? (Self.executableDirectory + "/qmp-sidecar")
        guard access(sidecarPath, X_OK) == 0 else {
            throw ValidationError(
                "qmp-sidecar not found at \(sidecarPath): run `swift build -c release` first or pass --sidecar PATH")
        }
        let socat = ["/usr/bin/socat", "/usr/local/bin/socat"].first { (path: String) in access(path, X_OK) == 0 }
        let qemu = try QEMULauncher(monitors: socat == nil ? 2 : 3)
        defer { qemu.terminate() }
        var children: [Process] = []
        defer {
            for child in children where child.isRunning {
                child.terminate()
                child.waitUntilExit()
            }
        }

        var paths: [(name: String, socket: String)] = [("direct", qemu.socketPaths[0])]
        let sidecarSocket = qemu.directory + "/sidecar.sock"
        children.append(
            try Self.spawn(
                sidecarPath,
                [
                    "--upstream", "unix:\(qemu.socketPaths[1])", "--listen", "unix:\(sidecarSocket)", "--log-level",
                    "warning",
                ]))
        paths.append(("qmp-sidecar", sidecarSocket))
        if let socat {
            let socatSocket = qemu.directory + "/socat.sock"
            children.append(
                try Self.spawn(socat, ["UNIX-LISTEN:\(socatSocket),fork", "UNIX-CONNECT:\(qemu.socketPaths[2])"]))
            paths.append(("socat", socatSocket))
        }

        let connections = try paths.map { path in try BenchConnection.connecting(to: path.socket) }
        for connection in connections { try connection.negotiate() }

        print("qmp-bench proxy: QEMU \(qemu.pid), command \(command), \(iterations) round trips per path (interleaved)")
        var samples = Array(repeating: [Double](), count: paths.count)
        for i in 0..<(warmup + iterations) {
            for k in 0..<paths.count {
                let index = (i + k) % paths.count
                let micros = try connections[index].roundTrip(command: command, id: i)
                if i >= warmup { samples[index].append(micros) }
            }
        }
        let stats = samples.map(Percentiles.init)
        print("")
        print("path          p50 µs   p90 µs   p99 µs   mean µs")
        for (path, s) in zip(paths, stats) {
            print(
                path.name.padding(toLength: 12, withPad: " ", startingAt: 0)
                    + [s.p50, s.p90, s.p99, s.mean].map { String(format: "%9.1f", $0) }.joined())
        }
        let direct = stats[0]
        print("")
        print(
            String(
                format: "round trip ratio qmp-sidecar/direct: p50 %.3f, mean %.3f (target <= 1.08)",
                stats[1].p50 / direct.p50, stats[1].mean / direct.mean))
        print(String(format: "added latency qmp-sidecar - direct: p50 %.1f µs", stats[1].p50 - direct.p50))
        if paths.count > 2 {
            print(
                String(
                    format: "round trip ratio socat/direct:       p50 %.3f, mean %.3f", stats[2].p50 / direct.p50,
                    stats[2].mean / direct.mean))
        }

        // Pipelined throughput: direct and sidecar alternate round by round.
        var rates = Array(repeating: [Double](), count: 2)
        for _ in 0..<rounds {
            for index in 0..<2 {
                rates[index].append(try connections[index].pipelined(command: command, count: pipelined))
            }
        }
        let medians = rates.map { Percentiles($0).p50 }
        print("")
        print(
            String(
                format: "pipelined throughput (%d commands, median of %d rounds): direct %.0f/s, qmp-sidecar %.0f/s",
                pipelined, rounds, medians[0], medians[1]))
        print(String(format: "throughput ratio qmp-sidecar/direct: %.3f (target >= 0.98)", medians[1] / medians[0]))
    }

    static var executableDirectory: String {
        let exe = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? ""
        return (exe as NSString).deletingLastPathComponent
    }

    static func spawn(_ executable: String, _ arguments: [String]) throws -> Process {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        process.standardOutput = FileHandle.nullDevice
        try process.run()
        return process
    }
}

/// A raw QMP connection for timing: blocking round trips, nonblocking pipelining.
final class BenchConnection {
    let fd: Int32
    private var buffer: [UInt8] = []
    private var scratch = [UInt8](repeating: 0, count: 1 << 16)

    init(path: String) throws {
        fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { raw in raw.copyBytes(from: Array(path.utf8) + [0]) }
        let rc = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
            }
        }
        guard rc == 0 else {
            close(fd)
            throw QMPTestKitError("connect(\(path)) failed: errno \(errno)")
        }
    }

    deinit { close(fd) }

    static func connecting(to path: String) throws -> BenchConnection {
        let deadline = Date().addingTimeInterval(20)
        while true {
            do { return try BenchConnection(path: path) } catch {
                if Date() > deadline { throw error }
                usleep(10_000)
            }
        }
    }

    func negotiate() throws {
        _ = try readLine()
        try write(Array(#"{"execute": "qmp_capabilities"}"#.utf8))
        let reply = try readLine()
        guard reply.starts(with: Array(#"{"return""#.utf8)) else {
            throw QMPTestKitError("negotiation failed: \(String(decoding: reply, as: UTF8.self))")
        }
    }

    /// One command and its reply; returns microseconds.
    func roundTrip(command: String, id: Int) throws -> Double {
        let request = Array(#"{"execute": "\#(command)", "id": \#(id)}"#.utf8)
        let start = ContinuousClock.now
        try write(request)
        _ = try readLine()
        let elapsed = (ContinuousClock.now - start).components
        return Double(elapsed.seconds) * 1e6 + Double(elapsed.attoseconds) / 1e12
    }

    /// Writes `count` commands back to back while reading replies; returns commands per second.
    func pipelined(command: String, count: Int) throws -> Double {
        var output: [UInt8] = []
        for i in 0..<count { output += Array(#"{"execute": "\#(command)", "id": \#(i)}"#.utf8) }
        var written = 0
        var replies = 0
        let flags = fcntl(fd, F_GETFL)
        _ = fcntl(fd, F_SETFL, flags | O_NONBLOCK)
        defer { _ = fcntl(fd, F_SETFL, flags) }
        let start = ContinuousClock.now
        while replies < count {
            var pfd = pollfd(fd: fd, events: Int16(POLLIN) | (written < output.count ? Int16(POLLOUT) : 0), revents: 0)
            guard poll(&pfd, 1, 10_000) > 0 else { throw QMPTestKitError("pipelined run stalled") }
            if pfd.revents & Int16(POLLOUT) != 0 {
                let n = output[written...].withUnsafeBytes {
                    Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL))
                }
                if n > 0 { written += n }
            }
            if pfd.revents & (Int16(POLLIN) | Int16(POLLHUP)) != 0 {
                let n = read(fd, &scratch, scratch.count)
                guard n > 0 else { throw QMPTestKitError("connection closed during pipelined run") }
                for byte in scratch[..<n] where byte == 0x0A { replies += 1 }
            }
        }
        let elapsed = (ContinuousClock.now - start).components
        return Double(count) / (Double(elapsed.seconds) + Double(elapsed.attoseconds) / 1e18)
    }

    private func write(_ bytes: [UInt8]) throws {
        var offset = 0
        while offset < bytes.count {
            let n = bytes[offset...].withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            guard n > 0 else { throw QMPTestKitError("send failed: errno \(errno)") }
            offset += n
        }
    }

    private func readLine() throws -> [UInt8] {
        while true {
            if let newline = buffer.firstIndex(of: 0x0A) {
                let line = Array(buffer[..<newline])
                buffer.removeSubrange(...newline)
                return line
            }
            let n = read(fd, &scratch, scratch.count)
            guard n > 0 else { throw QMPTestKitError("connection closed") }
            buffer += scratch[..<n]
        }
    }
}
