import Foundation
import QMPRuntime
import QMPTestKit
import VFIOFakeHost

#if canImport(Glibc)
import Glibc
#endif

/// One configuration of `qmp-bench release`: a fake host with `groups` groups, the stand-in QEMU
/// holding `fds` fds, `qmp-sidecar` in front of it, the floor watcher, and one client with every
/// device attached.
final class ReleaseRun {
    struct Result {
        /// Close → `GROUP_RELEASED` read by the client, ms.
        var sidecar: [Double]
        /// Close → the floor's line read, ms.
        var floor: [Double]
        /// Sidecar CPU (user + system) per plug/unplug cycle, ms.
        var cpuPerCycle: Double
    }

    private let directory: String
    private let host: FakeHost
    private let standIn: ReleaseStandIn
    private let sidecar: SpawnedProcess
    private let floorPID: pid_t
    private let floor: TimedLines
    private let client: TimedLines
    private let groups: Int
    private var nextID = 1

    init(sidecar path: String, fds: Int, groups: Int, order: ReleaseStandIn.Order) throws {
        var template = Array("/tmp/qb-rel-XXXXXX".utf8CString)
        guard let made = mkdtemp(&template) else { throw QMPTestKitError("mkdtemp failed: errno \(errno)") }
        directory = String(cString: made)
        self.groups = groups
        // Group g (1...groups) holds one device at bus g / 32, slot g % 32.
        let spec = (1...groups).map { "\($0)=\(Self.address($0))" }
        let host = try FakeHost(spec: spec.joined(separator: ";"), root: directory + "/host")
        self.host = host
        let nodes = (1...groups).map { (id: "hostdev\($0)", node: host.groupNodePath($0)) }
        let standIn = try ReleaseStandIn(directory: directory, order: order, fds: fds, nodes: nodes)
        self.standIn = standIn
        let listen = directory + "/sidecar.sock"
        sidecar = try SpawnedProcess(
            path,
            [
                "--upstream", "unix:\(standIn.socketPath)", "--listen", "unix:\(listen)", "--sysfs-root",
                host.sysfsRoot, "--dev-root", host.devRoot, "--log-level", "warning",
            ], fileActions: SpawnedProcess.stderr(to: directory + "/sidecar.log"))

        // The floor watches the nodes as the stand-in sees them, as the sidecar does.
        let watched = nodes.map { "/proc/\(standIn.pid)/root\($0.node)" }
        var pipe: [Int32] = [0, 0]
        guard Glibc.pipe(&pipe) == 0 else { throw QMPTestKitError("pipe failed: errno \(errno)") }
        floorPID = try ChildSpawn.spawn(
            "/proc/self/exe", arguments: ["release-floor"] + watched,
            fileActions: [.open(fd: 0, path: "/dev/null", flags: O_RDONLY), .dup2(from: pipe[1], to: 1)])
        close(pipe[1])
        floor = TimedLines(fd: pipe[0])
        guard floor.next(timeout: 10)?.text == "ready" else { throw QMPTestKitError("the floor watcher did not start") }

        client = TimedLines(fd: try Self.connect(listen))
        try negotiate()
        for group in 1...groups { try plug(group) }
    }

    deinit {
        close(client.fd)
        kill(floorPID, SIGKILL)
        var status: Int32 = 0
        while waitpid(floorPID, &status, 0) < 0 && errno == EINTR {}
        sidecar.signal(SIGKILL)
        _ = sidecar.waitUntilExit()
        standIn.terminate()
        host.removeTree()
        rmdir(directory)
    }

    /// `cycles` unplug/replug cycles (after `warmup`), rotating over the groups.
    func measure(cycles: Int, warmup: Int) throws -> Result {
        var sidecarTimes: [Double] = []
        var floorTimes: [Double] = []
        var cpuBefore = 0.0
        for cycle in 0..<(warmup + cycles) {
            if cycle == warmup { cpuBefore = try cpuMilliseconds() }
            let group = cycle % groups + 1
            try send("device_del", #"{"id": "hostdev\#(group)"}"#)
            let closed = try standIn.nextClose()
            guard let released = client.next(containing: #""group": \#(group),"#, timeout: 10),
                released.text.contains("GROUP_RELEASED")
            else { throw QMPTestKitError("no GROUP_RELEASED for group \(group); see \(directory)/sidecar.log") }
            guard let floorLine = floor.next(timeout: 10) else { throw QMPTestKitError("the floor saw no close") }
            if cycle >= warmup {
                sidecarTimes.append(Double(Int64(released.time) - Int64(closed.time)) / 1e6)
                floorTimes.append(Double(Int64(floorLine.time) - Int64(closed.time)) / 1e6)
            }
            try plug(group)
        }
        let cpu = try cpuMilliseconds() - cpuBefore
        return Result(sidecar: sidecarTimes, floor: floorTimes, cpuPerCycle: cpu / Double(max(1, cycles)))
    }

    /// What a peer polling `/proc/<qemu>/fd` every `interval` seconds sees: close → the first poll that
    /// finds the group node no longer held, ms. The sidecar keeps running meanwhile.
    func measurePoll(interval: Double, cycles: Int) throws -> [Double] {
        var samples: [Double] = []
        let node = host.groupNodePath(1)
        var info = stat()
        guard stat(node, &info) == 0 else { throw QMPTestKitError("cannot stat \(node)") }
        let identity = (info.st_dev, info.st_ino)
        let period = UInt64(interval * 1e9)
        let phase = TimedLines.monotonicNow()
        for _ in 0..<cycles {
            try send("device_del", #"{"id": "hostdev1"}"#)
            let closed = try standIn.nextClose()
            _ = floor.next(timeout: 10)
            while true {
                // Free-running ticks: the poll does not know when the close happened.
                let now = TimedLines.monotonicNow()
                let next = phase + ((now - phase) / period + 1) * period
                var pause = timespec(
                    tv_sec: Int((next - now) / 1_000_000_000), tv_nsec: Int((next - now) % 1_000_000_000))
                var left = timespec()
                while nanosleep(&pause, &left) < 0 && errno == EINTR { pause = left }
                if !Self.holds(pid: standIn.pid, dev: identity.0, ino: identity.1) {
                    samples.append(Double(TimedLines.monotonicNow() - closed.time) / 1e6)
                    break
                }
            }
            _ = client.next(containing: "GROUP_RELEASED", timeout: 10)
            try plug(1)
        }
        return samples
    }

    // MARK: Client

    private func plug(_ group: Int) throws {
        try command(
            "device_add", #"{"driver": "vfio-pci", "id": "hostdev\#(group)", "host": "\#(Self.address(group))"}"#)
    }

    private func negotiate() throws {
        guard client.next(timeout: 20)?.text.contains("QMP") == true else {
            throw QMPTestKitError("no greeting from qmp-sidecar; see \(directory)/sidecar.log")
        }
        try command("qmp_capabilities", nil)
    }

    private func send(_ name: String, _ arguments: String?) throws {
        let id = nextID
        nextID += 1
        let text =
            #"{"execute": "\#(name)""# + (arguments.map { #", "arguments": \#($0)"# } ?? "") + #", "id": \#(id)}"#
        let bytes = Array(text.utf8)
        var sent = 0
        while sent < bytes.count {
            let count = bytes[sent...].withUnsafeBytes {
                Glibc.send(client.fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL))
            }
            guard count > 0 else { throw QMPTestKitError("send to qmp-sidecar failed: errno \(errno)") }
            sent += count
        }
    }

    /// Sends a command and waits for its reply (events before it are skipped).
    private func command(_ name: String, _ arguments: String?) throws {
        try send(name, arguments)
        let id = nextID - 1
        guard let reply = client.next(containing: #""id": \#(id)"#, timeout: 20), reply.text.contains(#""return""#)
        else { throw QMPTestKitError("\(name) failed; see \(directory)/sidecar.log") }
    }

    private static func connect(_ path: String) throws -> Int32 {
        let deadline = TimedLines.monotonicNow() + 20_000_000_000
        while true {
            do {
                let fd = try Sockets.connect(to: .unix(path: path))
                _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK)
                return fd
            } catch {
                if TimedLines.monotonicNow() > deadline { throw QMPTestKitError("cannot connect to \(path): \(error)") }
                usleep(10_000)
            }
        }
    }

    // MARK: Measurements

    /// The sidecar's CPU time so far, ms: `/proc/PID/schedstat`'s first field (ns on a CPU; the sidecar
    /// runs on one thread), exact where `/proc/PID/stat`'s ticks are 10 ms coarse.
    private func cpuMilliseconds() throws -> Double {
        guard let text = try? String(contentsOfFile: "/proc/\(sidecar.processIdentifier)/schedstat", encoding: .utf8),
            let first = text.split(separator: " ").first, let nanoseconds = Double(first)
        else { throw QMPTestKitError("cannot read the sidecar's /proc/PID/schedstat") }
        return nanoseconds / 1e6
    }

    /// A peer's check: does `pid` hold the node (dev, ino)? One `stat` per fd of the process.
    private static func holds(pid: pid_t, dev: dev_t, ino: ino_t) -> Bool {
        let directory = "/proc/\(pid)/fd"
        guard let names = DirectoryEntries.names(in: directory) else { return false }
        var info = stat()
        for name in names where stat(directory + "/" + name, &info) == 0 {
            if info.st_dev == dev && info.st_ino == ino { return true }
        }
        return false
    }

    /// Group g's device: bus g / 32, slot g % 32.
    private static func address(_ group: Int) -> String { "0000:\(hex(group / 32)):\(hex(group % 32)).0" }

    private static func hex(_ value: Int) -> String {
        let digits = String(value, radix: 16)
        return String(repeating: "0", count: max(0, 2 - digits.count)) + digits
    }
}
