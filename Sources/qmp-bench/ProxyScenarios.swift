import Foundation
import QMPTestKit

#if canImport(Glibc)
import Glibc
#endif

extension ProxyBenchmark {
    /// One client sends 200 `query-qmp-schema` and stops reading; another client's `query-status`
    /// right after. Trials alternate between monitors of their own and the shared sidecar; returns
    /// the worst victim latency of each mode in milliseconds.
    func fairnessScenario(
        separateFlooder: String, separateVictim: BenchConnection, sidecarSocket: String,
        sidecarVictim: BenchConnection
    ) throws -> (separate: Double, sidecar: Double) {
        let flood = Array(
            (0..<200).map { #"{"execute": "query-qmp-schema", "id": \#($0)}"# }.joined().utf8)
        var latencies: [[Double]] = [[], []]
        for trial in 0..<(2 * fairnessTrials) {
            let mode = trial % 2
            let flooder = try BenchConnection.connecting(to: mode == 0 ? separateFlooder : sidecarSocket)
            try flooder.negotiate()
            try flooder.write(flood)
            usleep(20_000)  // QEMU is busy with the flood now
            let victim = mode == 0 ? separateVictim : sidecarVictim
            latencies[mode].append(try victim.roundTrip(command: command, id: 1_000_000 + trial) / 1000)
            _ = flooder  // closed here: QEMU (or the sidecar) drops what it still holds for it
            // Let QEMU finish the flooder's commands it already took before the next trial.
            usleep(500_000)
        }
        let separate = Percentiles(latencies[0])
        let sidecar = Percentiles(latencies[1])
        print(
            String(
                format:
                    "\nfairness (%d trials each): victim's %@ behind a 200 x query-qmp-schema flooder: own monitors p50 %.1f ms max %.1f ms; shared sidecar p50 %.1f ms max %.1f ms",
                fairnessTrials, command, separate.p50, separate.max, sidecar.p50, sidecar.max))
        return (separate.max, sidecar.max)
    }

    /// Events (`DEVICE_DELETED` of a usb-kbd plugged and unplugged on the direct monitor) reaching
    /// 1, 8 and 64 negotiated sidecar clients: QEMU's event timestamp to the last client's read, next
    /// to the same for the direct monitor that caused it.
    func fanOutScenario(controller: BenchConnection, sidecarSocket: String, report: inout TargetReport) throws {
        print("\nevent fan-out (\(events) DEVICE_DELETED each): QEMU's timestamp to the read, µs")
        print("clients   direct p50   direct p99   last sidecar client p50   p99")
        for size in [1, 8, 64] {
            let clients = try (0..<size).map { _ in try BenchConnection.connecting(to: sidecarSocket) }
            for client in clients { try client.negotiate() }
            var direct: [Double] = []
            var last: [Double] = []
            for n in 0..<events {
                let device = "fan\(size)x\(n)"
                _ = try controller.roundTrip(
                    raw: #"{"execute": "device_add", "arguments": {"driver": "usb-kbd", "id": "\#(device)"}, "id": 1}"#,
                    id: 1)
                try controller.write(
                    Array(#"{"execute": "device_del", "arguments": {"id": "\#(device)"}, "id": 2}"#.utf8))
                let arrivals = try Self.awaitEvent("DEVICE_DELETED", device: device, on: [controller] + clients)
                direct.append(arrivals[0])
                last.append(arrivals.dropFirst().max() ?? .nan)
                try BenchConnection.check(try controller.readReply(), id: 2)
            }
            let d = Percentiles(direct)
            let l = Percentiles(last)
            print(
                String(format: "%7d", size) + String(format: "%13.1f%13.1f%26.1f%9.1f", d.p50, d.p99, l.p50, l.p99))
            if size == 64 {
                report.add(
                    "event to the last of 64 clients p99", String(format: "%.1f µs", l.p99),
                    target: String(format: "none; the direct monitor's p99 %.1f µs", d.p99), met: nil)
            }
        }
    }

    /// Waits until every connection has read the event about `device`; returns, per connection,
    /// microseconds from the event's QEMU timestamp to its read.
    static func awaitEvent(_ name: String, device: String, on connections: [BenchConnection]) throws -> [Double] {
        var arrivals = [Double?](repeating: nil, count: connections.count)
        let marker = Array("\"\(device)\"".utf8)
        let nameBytes = Array(name.utf8)
        while arrivals.contains(where: { $0 == nil }) {
            for (index, connection) in connections.enumerated() where arrivals[index] == nil {
                let line = connection.takeLine { line in
                    line.firstRange(of: nameBytes) != nil && line.firstRange(of: marker) != nil
                }
                if let line { arrivals[index] = try Self.microsSinceTimestamp(line) }
            }
            var fds = connections.indices.filter { arrivals[$0] == nil }.map {
                pollfd(fd: connections[$0].fd, events: Int16(POLLIN), revents: 0)
            }
            guard !fds.isEmpty else { break }
            guard poll(&fds, nfds_t(fds.count), 10_000) > 0 else {
                throw QMPTestKitError("\(name) of \(device) did not reach every client within 10 s")
            }
            for pfd in fds where pfd.revents != 0 {
                try connections.first { $0.fd == pfd.fd }!.fill()
            }
        }
        return arrivals.map { $0! }
    }

    /// Now minus the event's `timestamp` (QEMU's realtime clock), in microseconds.
    static func microsSinceTimestamp(_ line: [UInt8]) throws -> Double {
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        guard let object = try JSONSerialization.jsonObject(with: Data(line)) as? [String: Any],
            let stamp = object["timestamp"] as? [String: Any], let seconds = stamp["seconds"] as? Int,
            let micros = stamp["microseconds"] as? Int
        else { throw QMPTestKitError("event without timestamp: \(String(decoding: line, as: UTF8.self))") }
        return Double(now.tv_sec - seconds) * 1e6 + Double(now.tv_nsec) / 1e3 - Double(micros)
    }

    /// Context switches of an idle process over one second, and its RSS.
    func idleWakeUps(pid: pid_t) throws -> (wakeUps: Int, rssKiB: Int) {
        usleep(200_000)
        let start = try ProcessSample(pid: pid)
        sleep(1)
        let end = try ProcessSample(pid: pid)
        let wakeUps =
            end.voluntarySwitches + end.involuntarySwitches - start.voluntarySwitches - start.involuntarySwitches
        return (wakeUps, end.rssKiB)
    }
}
