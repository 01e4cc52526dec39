import ArgumentParser
import Foundation
import QMPProxy

#if canImport(Glibc)
import Glibc
#endif

/// `qmp-bench router`: the pure per-message work of one round trip (client command in, QEMU's reply
/// out: framing, member scanning, id splicing, scheduling, routing), in process, without sockets.
///
/// An in-process figure: it bounds the user CPU the protocol core adds to an end-to-end round trip
/// (`qmp-bench proxy` measures the real process); it is not a latency.
struct RouterBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "router",
        abstract: "ProxyRouter CPU per round trip (command in, reply out), in process, best of N runs.")

    @Option(help: "Round trips per run.")
    var roundTrips = 200_000

    @Option(help: "Runs (the best is reported).")
    var repetitions = 5

    func run() throws {
        var router = ProxyRouter(configuration: .init(localCommands: ["x-query-vfio"]))
        let greeting =
            #"{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}, "package": ""}, "capabilities": ["oob"]}}"#
        _ = router.upstreamReceived(Array((greeting + "\r\n").utf8))
        _ = router.upstreamReceived(Array(#"{"return": {}, "id": 1}"#.utf8) + [0x0D, 0x0A])
        _ = router.clientConnected(1)
        _ = router.clientReceived(1, Array(#"{"execute": "qmp_capabilities"}"#.utf8))
        let command = Array(#"{"execute": "query-status", "id": "libvirt-12"}"#.utf8)
        var best = Double.infinity
        var nextID: UInt64 = 2
        for _ in 0..<repetitions {
            let start = Self.threadCPUMicros()
            for _ in 0..<roundTrips {
                let forwarded = router.clientReceived(1, command)
                guard forwarded.contains(where: { if case .sendUpstream = $0 { true } else { false } }) else {
                    throw ValidationError("the command did not reach QEMU")
                }
                let reply = Array(
                    #"{"return": {"status": "prelaunch", "singlestep": false, "running": false}, "id": \#(nextID)}"#
                        .utf8)
                nextID += 1
                let routed = router.upstreamReceived(reply + [0x0D, 0x0A])
                guard routed.contains(where: { if case .sendToClient(1, _) = $0 { true } else { false } }) else {
                    throw ValidationError("the reply did not reach the client")
                }
            }
            best = min(best, (Self.threadCPUMicros() - start) / Double(roundTrips))
        }
        print(
            "qmp-bench router: \(String(format: "%.2f", best)) µs of ProxyRouter CPU per round trip (thread CPU time, best of \(repetitions) x \(roundTrips); in process, reply text built by the bench included)"
        )
    }

    /// CPU time of the calling thread: preemption by other processes does not count.
    static func threadCPUMicros() -> Double {
        var now = timespec()
        clock_gettime(CLOCK_THREAD_CPUTIME_ID, &now)
        return Double(now.tv_sec) * 1e6 + Double(now.tv_nsec) / 1e3
    }
}
