import Foundation
import QMPTestKit

/// CPU time, context switches and RSS of a process, from `/proc/PID/stat` and `/proc/PID/status`.
struct ProcessSample {
    /// User and system CPU in microseconds (clock-tick resolution). The kernel splits the exact total
    /// between them by sampling the tick, so they vary more between runs than the total does.
    var userMicros: Double
    var systemMicros: Double
    /// Total CPU in microseconds, exact (`/proc/PID/schedstat`: time on a CPU, in nanoseconds).
    var totalMicros: Double
    var voluntarySwitches: Int
    var involuntarySwitches: Int
    /// Resident set in KiB.
    var rssKiB: Int

    init(pid: pid_t) throws {
        let stat = try String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8)
        // Fields after the command name, which is in parentheses and may hold spaces.
        guard let close = stat.lastIndex(of: ")") else { throw QMPTestKitError("unreadable /proc/\(pid)/stat") }
        let fields = stat[stat.index(after: close)...].split(separator: " ")
        let tick = 1e6 / Double(sysconf(Int32(_SC_CLK_TCK)))
        // fields[0] is the state (stat field 3): utime and stime are stat fields 14 and 15.
        userMicros = (Double(fields[11]) ?? 0) * tick
        systemMicros = (Double(fields[12]) ?? 0) * tick
        let schedstat = try String(contentsOfFile: "/proc/\(pid)/schedstat", encoding: .utf8)
        totalMicros = (Double(schedstat.split(separator: " ").first ?? "") ?? 0) / 1000
        let status = try String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8)
        func field(_ name: String) -> Int {
            let line = status.split(separator: "\n").first { $0.hasPrefix(name + ":") } ?? ""
            return Int(line.split(whereSeparator: { $0 == " " || $0 == "\t" }).dropFirst().first ?? "") ?? 0
        }
        voluntarySwitches = field("voluntary_ctxt_switches")
        involuntarySwitches = field("nonvoluntary_ctxt_switches")
        rssKiB = field("VmRSS")
    }

    /// Per-operation cost between two samples.
    static func perOperation(from start: ProcessSample, to end: ProcessSample, operations: Int) -> (
        user: Double, system: Double, total: Double, involuntary: Double
    ) {
        let n = Double(max(1, operations))
        return (
            (end.userMicros - start.userMicros) / n, (end.systemMicros - start.systemMicros) / n,
            (end.totalMicros - start.totalMicros) / n, Double(end.involuntarySwitches - start.involuntarySwitches) / n
        )
    }
}
