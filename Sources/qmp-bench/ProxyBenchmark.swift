import ArgumentParser
import Foundation
import QMPTestKit

#if canImport(Glibc)
import Glibc
#endif

/// `qmp-bench proxy`: is qmp-sidecar transparent under load? Everything against one real QEMU with
/// a monitor per path, measured in the same run, every figure printed next to its target.
///
/// - Latency: the same command on direct, qmp-sidecar, socat, a minimal C `poll()` proxy (the floor
///   of a userspace hop) and a byte pump on qmp-sidecar's own runtime (`qmp-bench shell-floor`, the
///   floor of its I/O shell), interleaved command by command with a rotating start.
/// - CPU: user/system time and involuntary context switches per round trip of qmp-sidecar and both
///   floors, from `/proc/PID/stat` and `/proc/PID/status` around the latency run; then user/system
///   time of each of them with its path alone (no other path's round trips in between).
/// - Pipelined throughput, direct vs qmp-sidecar, alternating rounds.
/// - Fairness: one client floods `query-qmp-schema` and stops reading; another client's command
///   latency, with monitors of their own vs through the shared sidecar.
/// - Event fan-out to 1, 8 and 64 negotiated clients: QEMU's event timestamp to the last client's read.
/// - Idle wake-ups and RSS of the sidecar afterwards.
///
/// Every reply is checked (an error or a reply to another id fails the run).
struct ProxyBenchmark: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "proxy",
        abstract: "qmp-sidecar vs direct, socat and a C poll() floor proxy on real QEMU, figures vs targets.",
        discussion: """
            Needs qemu-system-x86_64, socat and the floor proxy (bench/floor-proxy.c; `make bench` \
            compiles it next to qmp-bench). Run the release build on a quiet machine; the load \
            average is printed with the figures.
            """)

    @Option(help: "Round trips per path (CPU figures need >= 10000).")
    var iterations = 10000

    @Option(
        help: """
            Round trips per path alone, for its CPU figure. User and system time are split by sampling the \
            kernel's clock tick: the more round trips, the less that split varies between runs.
            """)
    var loneIterations = 30000

    @Option(help: "Warm-up round trips per path (not counted).")
    var warmup = 300

    @Option(help: "Commands per pipelined throughput round.")
    var pipelined = 5000

    @Option(help: "Throughput rounds per path.")
    var rounds = 5

    @Option(help: "Fairness trials per mode (separate monitors, shared sidecar).")
    var fairnessTrials = 5

    @Option(help: "Events per fan-out size.")
    var events = 200

    @Option(help: "The QMP command to time.")
    var command = "query-status"

    @Option(help: "The qmp-sidecar executable (default: next to qmp-bench).")
    var sidecar: String?

    @Option(help: "The floor proxy executable (default: floor-proxy next to qmp-bench).")
    var floor: String?

    @Option(
        parsing: .unconditionalSingleValue,
        help: "An extra qmp-sidecar argument (repeatable), e.g. --sidecar-argument --max-client-in-flight=1.")
    var sidecarArgument: [String] = []

    func run() throws {
        let sidecarPath = sidecar ?? (Self.executableDirectory + "/qmp-sidecar")
        let floorPath = floor ?? (Self.executableDirectory + "/floor-proxy")
        guard access(sidecarPath, X_OK) == 0 else {
            throw ValidationError(
                "qmp-sidecar not found at \(sidecarPath): run `swift build -c release` first or pass --sidecar PATH")
        }
        guard access(floorPath, X_OK) == 0 else {
            throw ValidationError(
                "floor proxy not found at \(floorPath): run `make bench` (it compiles bench/floor-proxy.c) or pass --floor PATH"
            )
        }
        guard
            let socat = ["/usr/bin/socat", "/usr/local/bin/socat"].first(where: { (path: String) in
                access(path, X_OK) == 0
            })
        else {
            throw ValidationError("socat not found: apt-get install socat (scripts/install-deps.sh installs it)")
        }
        // Monitors: 0 direct, 1 sidecar, 2 socat, 3 floor, 4 the flooder's own (fairness), 5 shell floor.
        let qemu = try QEMULauncher(monitors: 6)
        defer { qemu.terminate() }
        var children: [Process] = []
        defer {
            for child in children where child.isRunning {
                child.terminate()
                child.waitUntilExit()
            }
        }
        let sidecarSocket = qemu.directory + "/sidecar.sock"
        let sidecarProcess = try Self.spawn(
            sidecarPath,
            [
                "--upstream", "unix:\(qemu.socketPaths[1])", "--listen", "unix:\(sidecarSocket)", "--log-level",
                "warning",
            ] + sidecarArgument)
        children.append(sidecarProcess)
        let socatSocket = qemu.directory + "/socat.sock"
        children.append(
            try Self.spawn(socat, ["UNIX-LISTEN:\(socatSocket),fork", "UNIX-CONNECT:\(qemu.socketPaths[2])"]))
        let floorSocket = qemu.directory + "/floor.sock"
        let floorProcess = try Self.spawn(floorPath, [floorSocket, qemu.socketPaths[3]])
        children.append(floorProcess)
        let shellSocket = qemu.directory + "/shell.sock"
        let shellProcess = try Self.spawn(
            Self.executableDirectory + "/qmp-bench", ["shell-floor", shellSocket, qemu.socketPaths[5]])
        children.append(shellProcess)
        while access(shellSocket, F_OK) != 0, shellProcess.isRunning { usleep(10_000) }

        let paths: [(name: String, socket: String)] = [
            ("direct", qemu.socketPaths[0]), ("qmp-sidecar", sidecarSocket), ("socat", socatSocket),
            ("floor", floorSocket), ("shell floor", shellSocket),
        ]
        let connections = try paths.map { try BenchConnection.connecting(to: $0.socket) }
        for connection in connections { try connection.negotiate() }
        print(
            "qmp-bench proxy: QEMU \(qemu.pid), command \(command), \(iterations) round trips per path (interleaved); load \(Self.loadAverage)"
        )

        var report = TargetReport()
        let pids = [sidecarProcess.processIdentifier, floorProcess.processIdentifier, shellProcess.processIdentifier]
        let before = try pids.map { try ProcessSample(pid: $0) }
        var samples = Array(repeating: [Double](), count: paths.count)
        for i in 0..<(warmup + iterations) {
            for k in 0..<paths.count {
                let index = (i + k) % paths.count
                let micros = try connections[index].roundTrip(command: command, id: i)
                if i >= warmup { samples[index].append(micros) }
            }
        }
        let after = try pids.map { try ProcessSample(pid: $0) }
        let stats = samples.map(Percentiles.init)
        print("\npath          p50 µs   p99 µs  added p50 µs  ratio p50")
        for (path, s) in zip(paths, stats) {
            print(
                path.name.padding(toLength: 12, withPad: " ", startingAt: 0)
                    + String(
                        format: "%9.1f%9.1f%14.1f%11.3f", s.p50, s.p99, s.p50 - stats[0].p50, s.p50 / stats[0].p50))
        }
        let added = stats.map { $0.p50 - stats[0].p50 }
        let allowed = Swift.max(1.5 * added[3], added[3] + 15)
        report.add(
            "sidecar added p50", String(format: "%.1f µs", added[1]),
            target: String(format: "<= %.1f µs (max(1.5 x floor, floor + 15))", allowed), met: added[1] <= allowed)
        report.add(
            "sidecar vs socat added p50", String(format: "%.1f vs %.1f µs", added[1], added[2]), target: "faster",
            met: added[1] < added[2])

        let roundTrips = warmup + iterations
        print(
            "\nCPU per round trip (\(roundTrips) round trips each)   user µs   sys µs  total µs (exact)  involuntary switches"
        )
        for (index, name) in ["qmp-sidecar", "floor", "shell floor (qmp-sidecar's runtime)"].enumerated() {
            let cost = ProcessSample.perOperation(from: before[index], to: after[index], operations: roundTrips)
            print(
                name.padding(toLength: 40, withPad: " ", startingAt: 0)
                    + String(format: "%9.2f%9.2f%18.2f%22.2f", cost.user, cost.system, cost.total, cost.involuntary))
            if index == 0 {
                report.add(
                    "sidecar user CPU", String(format: "%.2f µs/RT", cost.user), target: "<= 5 µs/RT",
                    met: cost.user <= 5)
            } else if index == 2 {
                report.add(
                    "shell floor user CPU (qmp-sidecar's runtime, no protocol work)",
                    String(format: "%.2f µs/RT", cost.user), target: "none; the C floor's is shown above", met: nil)
            }
        }

        // The same paths one at a time: what a round trip costs the process when no other path runs
        // between two of its round trips (a manager alone on its monitor), next to both floors.
        print(
            "\nCPU per round trip, each path alone (\(loneIterations) round trips each)   user µs   sys µs  total µs (exact)"
        )
        for (index, (name, path)) in [("qmp-sidecar", 1), ("floor", 3), ("shell floor (qmp-sidecar's runtime)", 4)]
            .enumerated()
        {
            let cost = try loneCost(connections[path], pid: pids[index])
            print(
                name.padding(toLength: 47, withPad: " ", startingAt: 0)
                    + String(format: "%9.2f%9.2f%18.2f", cost.user, cost.system, cost.total))
            if index == 0 {
                report.add(
                    "sidecar user CPU, one client alone", String(format: "%.2f µs/RT", cost.user),
                    target: "<= 5 µs/RT", met: cost.user <= 5)
            }
        }

        let rates = try pipelinedRates(direct: connections[0], sidecar: connections[1])
        report.add(
            "pipelined throughput sidecar/direct", String(format: "%.3f", rates.sidecar / rates.direct),
            target: ">= 0.98", met: rates.sidecar / rates.direct >= 0.98)

        let fairness = try fairnessScenario(
            separateFlooder: qemu.socketPaths[4], separateVictim: connections[0], sidecarSocket: sidecarSocket,
            sidecarVictim: connections[1])
        let fairLimit = Swift.max(200, 3 * fairness.separate)
        report.add(
            "fairness: victim's command behind a flooder (worst)", String(format: "%.1f ms", fairness.sidecar),
            target: String(
                format: "<= %.1f ms (max(0.2 s, 3 x separate monitors' %.1f ms))", fairLimit, fairness.separate),
            met: fairness.sidecar <= fairLimit)

        try fanOutScenario(controller: connections[0], sidecarSocket: sidecarSocket, report: &report)

        let idle = try idleWakeUps(pid: sidecarProcess.processIdentifier)
        report.add("sidecar idle wake-ups", "\(idle.wakeUps) in 1 s", target: "0", met: idle.wakeUps == 0)
        report.add(
            "sidecar RSS", String(format: "%.1f MB", Double(idle.rssKiB) / 1024), target: "<= 20 MB",
            met: idle.rssKiB <= 20 * 1024)
        report.print(load: Self.loadAverage)
    }

    /// User and system CPU per round trip of `pid` while `connection` alone does `loneIterations` round trips.
    private func loneCost(_ connection: BenchConnection, pid: pid_t) throws -> (
        user: Double, system: Double, total: Double
    ) {
        for i in 0..<warmup { _ = try connection.roundTrip(command: command, id: i) }
        let before = try ProcessSample(pid: pid)
        for i in 0..<loneIterations { _ = try connection.roundTrip(command: command, id: i) }
        let cost = ProcessSample.perOperation(
            from: before, to: try ProcessSample(pid: pid), operations: loneIterations)
        return (cost.user, cost.system, cost.total)
    }

    private func pipelinedRates(direct: BenchConnection, sidecar: BenchConnection) throws -> (
        direct: Double, sidecar: Double
    ) {
        var rates = Array(repeating: [Double](), count: 2)
        for _ in 0..<rounds {
            for (index, connection) in [direct, sidecar].enumerated() {
                rates[index].append(try connection.pipelined(command: command, count: pipelined))
            }
        }
        let medians = rates.map { Percentiles($0).p50 }
        print(
            String(
                format: "\npipelined throughput (%d commands, median of %d rounds): direct %.0f/s, qmp-sidecar %.0f/s",
                pipelined, rounds, medians[0], medians[1]))
        return (medians[0], medians[1])
    }

    static var executableDirectory: String {
        let exe = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? ""
        return (exe as NSString).deletingLastPathComponent
    }

    static var loadAverage: String {
        ((try? String(contentsOfFile: "/proc/loadavg", encoding: .utf8)) ?? "?").split(separator: " ").prefix(3)
            .joined(separator: " ")
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

/// Every figure with its target, printed together at the end.
struct TargetReport {
    /// `met` is nil for a figure without a numeric target (shown as "info").
    private var rows: [(name: String, value: String, target: String, met: Bool?)] = []

    mutating func add(_ name: String, _ value: String, target: String, met: Bool?) {
        rows.append((name, value, target, met))
    }

    func print(load: String) {
        Swift.print("\ntargets (load \(load)):")
        for row in rows {
            Swift.print(
                "  " + (row.met.map { $0 ? "met     " : "NOT MET " } ?? "info    ") + row.name + ": " + row.value
                    + "  (target " + row.target
                    + ")")
        }
    }
}
