import ArgumentParser
import Logging
import QMPRuntime
import QMPWire
import Synchronization
import VFIOFakeHost
import VFIOTracking

#if canImport(Glibc)
import Glibc
#endif

/// `qmp-bench release`: last close of the group by a QEMU stand-in → `GROUP_RELEASED` read by a client,
/// against a naive 1 ms `/proc/<pid>/fd` poll measured in the same run, interleaved release by release.
struct ReleaseBenchmark: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "release",
        abstract: "Release latency: last close of a VFIO group -> GROUP_RELEASED at a client.",
        discussion: """
            A python stand-in for QEMU holds the fake group nodes plus --fds other fds. Each round: \
            DEVICE_DELETED of a tracked device while its group is still open (pre-2.11 order), then the \
            stand-in closes the group; measured: from a timestamp taken right before that close to the \
            GROUP_RELEASED line reaching a client thread waiting in poll. The baseline polls \
            /proc/<pid>/fd every 1 ms in another thread, measured the same way in the same run. \
            Targets: p50 <= 0.3 ms, p99 <= 2 ms with 10 and 10k fds.
            """)

    @Option(help: "Releases measured per fd count and method.")
    var iterations = 200

    @Option(help: "Releases run first and not measured.")
    var warmup = 10

    @Option(parsing: .upToNextOption, help: "Other fds the stand-in holds (one run each).")
    var fds: [Int] = [10, 10_000]

    @Flag(inversion: .prefixedNo, help: "Measure the naive 1 ms poll baseline, interleaved release by release.")
    var baseline = true

    @Flag(help: "Print where the time went in each release over 2 ms.")
    var verbose = false

    @Option(help: "IOMMU groups tracked at once (one device each); rounds release them in turn.")
    var groups = 1

    @Option(help: "Minimum time between DEVICE_DELETED and the close, in milliseconds (plus 0-1 ms random).")
    var closeDelayMs = 2.0

    mutating func run() throws {
        print(
            "release latency: last close -> event read by a client (ms), \(iterations) releases each, "
                + "\(groups) group(s) tracked")
        print("load average before: \(loadAverage()) (2 cores here are shared; p99 follows the load)")
        print("fds     method              p50      p99      max      mean")
        var failed = false
        for count in fds {
            let result = try measure(extraFDs: count)
            let sidecar = Summary(result.sidecar)
            let naive = Summary(result.naive)
            print(sidecar.row(fds: count, method: "sidecar"))
            let met = sidecar.p50 <= 0.3 && sidecar.p99 <= 2
            var verdict = "        targets p50<=0.3 p99<=2: " + (met ? "met" : "MISSED")
            if baseline {
                print(naive.row(fds: count, method: "naive 1 ms poll"))
                let ratio50 = naive.p50 / max(sidecar.p50, 1e-9)
                let ratio99 = naive.p99 / max(sidecar.p99, 1e-9)
                verdict =
                    "        ratio naive/sidecar  p50 \(Summary.format(ratio50))x  p99 \(Summary.format(ratio99))x  "
                    + verdict.dropFirst(8)
            }
            print(verdict)
            if !(sidecar.p50 <= 0.3 && sidecar.p99 <= 2) { failed = true }
        }
        print("load average after: \(loadAverage())")
        if failed { throw ExitCode(1) }
    }

    private func measure(extraFDs: Int) throws -> (sidecar: [Double], naive: [Double]) {
        let count = max(1, groups)
        // Group g (1...count) holds one device at bus g / 32, slot g % 32.
        let addresses = (1...count).map { "0000:" + hex($0 / 32, 2) + ":" + hex($0 % 32, 2) + ".0" }
        let host = try FakeHost(spec: zip(1...count, addresses).map { "\($0)=\($1)" }.joined(separator: ";"))
        defer { host.removeTree() }
        let qemu = try StandInProcess()
        defer { qemu.terminate() }
        try qemu.fill(toExtraFDs: extraFDs)
        let baselineNode = host.root + "/baseline-node"
        let made = open(baselineNode, O_WRONLY | O_CREAT | O_CLOEXEC, 0o600)
        guard made >= 0 else { throw ValidationError("cannot create \(baselineNode): errno \(errno)") }
        close(made)

        let sidecar = try SidecarUnderTest(host: host, qemuPID: qemu.pid)
        defer { sidecar.stop() }
        let naive = try NaivePoller(node: baselineNode, qemuPID: qemu.pid)
        defer { naive.stop() }

        // Every group attached: QEMU holds each group node.
        var groupFDs: [Int32] = []
        for (index, address) in addresses.enumerated() {
            groupFDs.append(try qemu.open(host.groupNodePath(index + 1)))
            sidecar.deviceAdded(id: "hostdev\(index + 1)", host: address)
        }
        sidecar.waitUntilIdle()

        var sidecarTimes: [Double] = []
        var naiveTimes: [Double] = []
        var slow = (count: 0, withProcessScan: 0, withFullScan: 0, withoutCloseEvent: 0)
        defer {
            print(
                "        sidecar releases over 2 ms: \(slow.count) (with a process scan: \(slow.withProcessScan), "
                    + "a full QEMU scan: \(slow.withFullScan), no close event: \(slow.withoutCloseEvent))")
        }
        let delay = UInt32(max(0, closeDelayMs) * 1000)
        for round in 0..<(warmup + iterations) {
            // The sidecar: DEVICE_DELETED while the group is open (pre-2.11 order), then the last close.
            let index = round % count
            let before = sidecar.statistics()
            sidecar.deviceDeleted(id: "hostdev\(index + 1)")
            // A random phase against the 1 ms poll period (same distribution for both methods).
            usleep(delay + UInt32.random(in: 0..<1000))
            var closed = try qemu.close(groupFDs[index])
            let released = try sidecar.client.readLine()
            let sidecarLatency = Double(Int64(bitPattern: released.time &- closed)) / 1e6
            let after = sidecar.statistics()
            if round >= warmup && sidecarLatency > 2 {
                if verbose {
                    let ms = { (a: UInt64, b: UInt64) in Summary.format(Double(Int64(bitPattern: a &- b)) / 1e6) }
                    print(
                        "        slow release: close->inotify handled \(ms(after.lastCloseEventAt, closed)) ms, "
                            + "->sent \(ms(after.lastReleaseAt, after.lastCloseEventAt)) ms, "
                            + "->client \(ms(released.time, after.lastReleaseAt)) ms")
                }
                slow.count += 1
                if after.allProcessScans > before.allProcessScans { slow.withProcessScan += 1 }
                if after.qemuFullScans > before.qemuFullScans { slow.withFullScan += 1 }
                if after.closeEvents == before.closeEvents { slow.withoutCloseEvent += 1 }
            }
            let groupMember = "\"group\": \(index + 1)"
            guard released.line.contains("GROUP_RELEASED"),
                released.line.contains(groupMember + ",") || released.line.contains(groupMember + "}")
            else {
                throw ValidationError("expected GROUP_RELEASED of group \(index + 1), got \(released.line)")
            }
            // Attach it again for its next turn; wait until its fds are learned (a full scan, off the
            // measured path: attaching while another group releases would delay that release by it).
            groupFDs[index] = try qemu.open(host.groupNodePath(index + 1))
            sidecar.deviceAdded(id: "hostdev\(index + 1)", host: addresses[index])
            sidecar.waitUntilIdle()

            guard baseline else {
                if round >= warmup { sidecarTimes.append(sidecarLatency) }
                continue
            }
            // The naive poller: starts polling at DEVICE_DELETED time.
            let fd = try qemu.open(baselineNode)
            naive.startPolling()
            usleep(delay + UInt32.random(in: 0..<1000))
            closed = try qemu.close(fd)
            let polled = try naive.client.readLine()
            let naiveLatency = Double(Int64(bitPattern: polled.time &- closed)) / 1e6

            if round >= warmup {
                sidecarTimes.append(sidecarLatency)
                naiveTimes.append(naiveLatency)
            }
        }
        return (sidecarTimes, naiveTimes)
    }
}

/// p50/p99/max/mean of a sample, in milliseconds.
private struct Summary {
    var p50: Double
    var p99: Double
    var max: Double
    var mean: Double

    init(_ values: [Double]) {
        let percentiles = Percentiles(values)
        p50 = percentiles.p50
        p99 = percentiles.p99
        max = percentiles.max
        mean = percentiles.mean
    }

    func row(fds: Int, method: String) -> String {
        func pad(_ text: String, _ width: Int) -> String {
            text + String(repeating: " ", count: Swift.max(1, width - text.count))
        }
        return pad("\(fds)", 8) + pad(method, 20) + pad(Self.format(p50), 9) + pad(Self.format(p99), 9)
            + pad(Self.format(max), 9) + Self.format(mean)
    }

    static func format(_ value: Double) -> String {
        guard value.isFinite else { return "n/a" }
        if value < 0 { return "-" + format(-value) }
        let scaled = Int((value * 1000).rounded())
        let fraction = String(scaled % 1000)
        return "\(scaled / 1000)." + String(repeating: "0", count: 3 - fraction.count) + fraction
    }
}

/// `value` in lowercase hex, zero-padded to `width`.
private func hex(_ value: Int, _ width: Int) -> String {
    let digits = String(value, radix: 16)
    return String(repeating: "0", count: max(0, width - digits.count)) + digits
}

/// The first three fields of `/proc/loadavg`.
private func loadAverage() -> String {
    let fd = open("/proc/loadavg", O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { return "unknown" }
    defer { close(fd) }
    var buffer = [UInt8](repeating: 0, count: 128)
    let count = read(fd, &buffer, buffer.count)
    guard count > 0 else { return "unknown" }
    return String(decoding: buffer[0..<count], as: UTF8.self).split(separator: " ").prefix(3).joined(separator: " ")
}

/// `CLOCK_MONOTONIC` in nanoseconds (the clock the stand-in stamps its close with).
private func monotonicNow() -> UInt64 {
    var now = timespec()
    clock_gettime(CLOCK_MONOTONIC, &now)
    return UInt64(now.tv_sec) * 1_000_000_000 + UInt64(now.tv_nsec)
}

/// A socketpair: the reactor side writes event lines; a client thread, already waiting in `poll`,
/// stamps each line the moment it arrives (as a client waiting for the event would see it).
private final class ClientSocket: Sendable {
    let serverSide: Int32
    let clientSide: Int32
    private let arrived = Mutex<[(line: String, time: UInt64)]>([])
    private let signal: (read: Int32, write: Int32)
    private let reader: ReactorThread

    init() throws {
        var pair: [Int32] = [0, 0]
        guard socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &pair) == 0 else {
            throw ValidationError("socketpair failed: errno \(errno)")
        }
        var pipeFDs: [Int32] = [0, 0]
        guard pipe(&pipeFDs) == 0 else { throw ValidationError("pipe failed: errno \(errno)") }
        serverSide = pair[0]
        clientSide = pair[1]
        signal = (pipeFDs[0], pipeFDs[1])
        let client = pair[1]
        let wake = pipeFDs[1]
        let box = ArrivalBox()
        reader = try ReactorThread.start(name: "bench-client") { reactor in
            reactor.register(fd: client, interest: .read) { _ in
                var buffer = [UInt8](repeating: 0, count: 4096)
                let count = recv(client, &buffer, buffer.count, Int32(MSG_DONTWAIT))
                guard count > 0 else { return }
                let now = monotonicNow()
                if box.pending.isEmpty { box.firstByte = now }
                box.pending += buffer[0..<count]
                while let newline = box.pending.firstIndex(of: 0x0A) {
                    let line = String(decoding: box.pending[...newline], as: UTF8.self)
                    box.pending.removeSubrange(...newline)
                    box.deliver((line, box.firstByte))
                    box.firstByte = now
                    var byte: UInt8 = 1
                    _ = write(wake, &byte, 1)
                }
            }
        }
        box.sink = { [weak self] entry in self?.arrived.withLock { $0.append(entry) } }
    }

    func send(_ line: [UInt8]) {
        var offset = 0
        while offset < line.count {
            let count = line[offset...].withUnsafeBytes {
                Glibc.send(serverSide, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL))
            }
            if count <= 0 { return }
            offset += count
        }
    }

    /// The next line and when its first byte reached the waiting client thread.
    func readLine() throws -> (line: String, time: UInt64) {
        var byte: UInt8 = 0
        while true {
            let count = read(signal.read, &byte, 1)
            if count == 1 { break }
            if count < 0 && errno == EINTR { continue }
            throw ValidationError("client reader stopped")
        }
        return arrived.withLock { $0.removeFirst() }
    }

    func close() {
        reader.handle.stop()
        while !reader.isFinished { usleep(1000) }
        Glibc.close(serverSide)
        Glibc.close(clientSide)
        Glibc.close(signal.read)
        Glibc.close(signal.write)
    }
}

/// The client thread's buffer (touched only on that thread, except `sink`, set once before use).
private final class ArrivalBox: @unchecked Sendable {
    var pending: [UInt8] = []
    var firstByte: UInt64 = 0
    var sink: (@Sendable ((line: String, time: UInt64)) -> Void)?
    func deliver(_ entry: (line: String, time: UInt64)) { sink?(entry) }
}

/// The commander of the benchmark: event lines go to the client socket; no internal commands.
private final class SocketCommander: QMPUpstreamCommander {
    let client: ClientSocket
    init(client: ClientSocket) { self.client = client }
    func sendInternalCommand(_ name: String, arguments: JSONValue?, reply: @escaping (QMPMessage) -> Void) {}
    func broadcastEvent(_ line: [UInt8]) { client.send(line) }
}

/// Carries statistics from the reactor thread (written there, read after the ack).
private final class StatisticsBox: @unchecked Sendable {
    var value = VFIOReleaseMonitor.Statistics()
    var armed = 0
}

/// Reactor-thread state, touched only on that thread.
private final class ReactorBox: @unchecked Sendable {
    var monitor: VFIOReleaseMonitor?
    var commander: SocketCommander?
}

/// The release monitor on its own reactor thread, driven through the reactor handle.
private final class SidecarUnderTest {
    let client: ClientSocket
    let thread: ReactorThread
    let box = ReactorBox()
    let ack: (read: Int32, write: Int32)

    init(host: FakeHost, qemuPID: pid_t) throws {
        let client = try ClientSocket()
        self.client = client
        var pipeFDs: [Int32] = [0, 0]
        guard pipe(&pipeFDs) == 0 else { throw ValidationError("pipe failed: errno \(errno)") }
        ack = (pipeFDs[0], pipeFDs[1])
        let configuration = VFIOConfiguration(
            sysfsRoot: host.sysfsRoot, devRoot: host.devRoot, discoverColdPlugged: false)
        let box = self.box
        var logger = Logger(label: "qmp-bench.release")
        logger.logLevel = .error
        let quietLogger = logger
        thread = try ReactorThread.start(name: "bench-sidecar") { reactor in
            let commander = SocketCommander(client: client)
            let monitor = VFIOReleaseMonitor(
                configuration: configuration, reactor: reactor, commander: commander, logger: quietLogger)
            box.commander = commander
            box.monitor = monitor
            monitor.upstreamReady(qemuPID: qemuPID)
        }
    }

    /// Runs `job` on the reactor thread and waits until it ran.
    private func sync(_ job: @escaping @Sendable (VFIOReleaseMonitor) -> Void) {
        let box = self.box
        let write = ack.write
        thread.handle.execute { _ in
            if let monitor = box.monitor { job(monitor) }
            var byte: UInt8 = 1
            _ = Glibc.write(write, &byte, 1)
        }
        var byte: UInt8 = 0
        while read(ack.read, &byte, 1) < 0 && errno == EINTR {}
    }

    /// Waits until the monitor has no timer armed (learning done, nothing detaching).
    func waitUntilIdle() {
        while true {
            let result = StatisticsBox()
            sync { monitor in result.armed = monitor.armedTimers }
            if result.armed == 0 { return }
            usleep(200)
        }
    }

    /// The monitor's counters.
    func statistics() -> VFIOReleaseMonitor.Statistics {
        let result = StatisticsBox()
        sync { monitor in result.value = monitor.statistics }
        return result.value
    }

    func deviceAdded(id: String, host: String) {
        sync { monitor in
            monitor.deviceAddSucceeded(
                arguments: .object([
                    JSONMember("driver", .string("vfio-pci")), JSONMember("id", .string(id)),
                    JSONMember("host", .string(host)),
                ]))
        }
    }

    func deviceDeleted(id: String) {
        let line = QMPBuilder.event(
            name: "DEVICE_DELETED",
            data: .object([
                JSONMember("device", .string(id)), JSONMember("path", .string("/machine/peripheral/\(id)")),
            ]), at: .now())
        guard case .success(let message) = QMPMessage.parse(Array(line.dropLast(2))) else { return }
        sync { monitor in _ = monitor.deviceDeleted(message) }
    }

    func stop() {
        let box = self.box
        thread.handle.execute { reactor in
            box.monitor?.stop()
            box.monitor = nil
            reactor.stop()
        }
        while !thread.isFinished { usleep(1000) }
        client.close()
        close(ack.read)
        close(ack.write)
    }
}

/// The baseline: what a manager polling `/proc/<pid>/fd` every 1 ms would see.
private final class NaivePoller {
    let client: ClientSocket
    let thread: ReactorThread
    let node: String
    let pid: pid_t

    init(node: String, qemuPID: pid_t) throws {
        client = try ClientSocket()
        thread = try ReactorThread.start(name: "bench-naive") { _ in }
        self.node = node
        self.pid = qemuPID
    }

    /// Polls every 1 ms (a full scan of the fd directory each time) until the node is no longer held,
    /// then writes one line to the client.
    func startPolling() {
        let client = self.client
        let node = self.node
        let pid = self.pid
        thread.handle.execute { reactor in
            guard let identity = NodeIdentity(path: node) else { return }
            let scanner = HolderScanner()
            func poll() {
                reactor.schedule(after: .milliseconds(1)) {
                    if let held = scanner.fds(of: pid, matching: [identity]), !held.isEmpty {
                        poll()
                    } else {
                        client.send(Array("{\"event\": \"NAIVE_RELEASED\"}\r\n".utf8))
                    }
                }
            }
            poll()
        }
    }

    func stop() {
        thread.handle.stop()
        while !thread.isFinished { usleep(1000) }
        client.close()
    }
}
