import CQMPShims
import Foundation
import QMPTestKit
import Testing

/// Whether real QEMU tests run: QEMU present, or `QMP_SIDECAR_REQUIRE_QEMU` set (then they fail
/// instead of skipping).
enum Requirements {
    static let qemuPath = "/usr/bin/qemu-system-x86_64"
    static let qemuRequired = ProcessInfo.processInfo.environment["QMP_SIDECAR_REQUIRE_QEMU"] != nil
    static let qemuUsable: Bool = {
        if !QEMULauncher.shouldRun {
            print(
                "skipping real-QEMU integration tests: \(QEMULauncher.binary) not installed (apt-get install qemu-system-x86)"
            )
        }
        return QEMULauncher.shouldRun
    }()
    static let pythonQMPUsable: Bool = {
        let ok = run(["python3", "-c", "import qemu.qmp"]) == 0
        if !ok && !qemuRequired {
            print("skipping qemu.qmp tests: python3 with qemu.qmp not found (python3 -m pip install qemu.qmp)")
        }
        return (ok || qemuRequired) && qemuUsable
    }()

    @discardableResult
    static func run(_ arguments: [String]) -> Int32 {
        guard let process = try? SpawnedProcess(arguments[0], Array(arguments.dropFirst()), searchPath: true) else {
            return -1
        }
        return process.waitUntilExit()
    }
}

struct TestFailure: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

/// A unique short temp dir (unix socket paths must stay under 108 bytes).
func makeTempDir() -> String {
    var template = Array("/tmp/qs-XXXXXX".utf8CString)
    let path = template.withUnsafeMutableBufferPointer { String(cString: mkdtemp($0.baseAddress!)!) }
    return path
}

/// Waits until `condition` holds or `seconds` pass.
func waitFor(seconds: Double = 10, _ condition: () -> Bool) -> Bool {
    let deadline = Date().addingTimeInterval(seconds)
    while Date() < deadline {
        if condition() { return true }
        usleep(2000)
    }
    return condition()
}

/// The directory holding the test bundle and the package's executables.
let productsDirectory: String = {
    let exe = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? ""
    return (exe as NSString).deletingLastPathComponent
}()

/// The directory of this source file's python scripts.
let pythonDirectory: String = {
    (#filePath as NSString).deletingLastPathComponent + "/python"
}()

/// A real QEMU 7.2 with `monitors` QMP sockets at paths of our choosing (the reconnect test needs
/// a second QEMU at the first one's path); elsewhere the tests use QMPTestKit's ``QEMULauncher``.
final class QEMUInstance {
    let dir: String
    let monitors: [String]
    let process: SpawnedProcess

    init(dir: String, monitors count: Int = 2) throws {
        self.dir = dir
        monitors = (0..<count).map { "\(dir)/m\($0).sock" }
        var arguments = ["-M", "pc", "-accel", "tcg", "-nodefaults", "-display", "none", "-S", "-device", "qemu-xhci"]
        for path in monitors { arguments += ["-qmp", "unix:\(path),server=on,wait=off"] }
        process = try SpawnedProcess(Requirements.qemuPath, arguments)
        guard waitFor({ self.monitors.allSatisfy { FileManager.default.fileExists(atPath: $0) } }) else {
            process.terminate()
            throw TestFailure("QEMU did not create its QMP sockets in \(dir)")
        }
    }

    var pid: pid_t { process.processIdentifier }

    func kill() {
        process.signal(SIGKILL)
        process.waitUntilExit()
    }

    deinit { kill() }
}

/// The `qmp-sidecar` executable, run as a child.
final class SidecarInstance {
    let process: SpawnedProcess
    let logPath: String
    let listenPath: String

    init(dir: String, upstream: String?, extra: [String] = [], listen: String? = nil, waitForSocket: Bool = true)
        throws
    {
        listenPath = listen ?? "\(dir)/sidecar.sock"
        logPath = "\(dir)/sidecar.log"
        var arguments: [String] = []
        if let upstream { arguments += ["--upstream", "unix:\(upstream)", "--listen", "unix:\(listenPath)"] }
        process = try SpawnedProcess(
            productsDirectory + "/qmp-sidecar", arguments + extra + ["--log-level", "debug"],
            fileActions: SpawnedProcess.stderr(to: logPath))
        if waitForSocket {
            guard waitFor({ FileManager.default.fileExists(atPath: self.listenPath) }) else {
                throw TestFailure("qmp-sidecar did not listen at \(listenPath): \(log)")
            }
        }
    }

    var pid: pid_t { process.processIdentifier }
    var log: String { (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? "" }

    /// Waits for the exit status (nil if still running after `seconds`).
    func exitStatus(within seconds: Double = 10) -> Int32? {
        guard waitFor(seconds: seconds, { !self.process.isRunning }) else { return nil }
        process.waitUntilExit()
        return process.terminationStatus
    }

    func terminate() {
        if process.isRunning {
            process.terminate()
            process.waitUntilExit()
        }
    }

    deinit {
        process.signal(SIGKILL)
        process.waitUntilExit()
    }
}

/// A blocking QMP client for tests: line-oriented reads with a deadline, raw sends, fd passing.
final class TestClient {
    let fd: Int32
    private var buffer: [UInt8] = []
    /// Lines skipped by ``command(_:)`` because they were events.
    var events: [String] = []

    /// Connects to `path`; with a `timeout`, retries while nobody listens there yet.
    init(path: String, timeout: Double = 0) throws {
        fd = try connectUnixStream(path, timeout: timeout)
    }

    deinit { close(fd) }

    /// Connects, retrying while the socket file exists but nobody listens yet (bind before listen).
    static func connecting(to path: String, within seconds: Double = 10) throws -> TestClient {
        try TestClient(path: path, timeout: seconds)
    }

    func send(_ text: String) {
        send(Array(text.utf8))
    }

    func send(_ bytes: [UInt8], fds: [Int32] = []) {
        let n = bytes.withUnsafeBytes { raw in
            fds.withUnsafeBufferPointer {
                cqmp_sendmsg_fds(fd, raw.baseAddress, raw.count, $0.baseAddress, fds.count, 0)
            }
        }
        precondition(n == bytes.count, "short send in test client")
    }

    /// The next line (without CRLF), or nil at EOF / after `timeout` seconds.
    func readLine(timeout: Double = 10) -> String? {
        let deadline = Date().addingTimeInterval(timeout)
        while true {
            if let newline = buffer.firstIndex(of: 0x0A) {
                var line = Array(buffer[..<newline])
                buffer.removeFirst(newline + 1)
                if line.last == 0x0D { line.removeLast() }
                return String(decoding: line, as: UTF8.self)
            }
            let remaining = deadline.timeIntervalSinceNow
            guard remaining > 0 else { return nil }
            var pfd = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            guard poll(&pfd, 1, Int32(remaining * 1000) + 1) > 0 else { return nil }
            var chunk = [UInt8](repeating: 0, count: 1 << 16)
            let n = read(fd, &chunk, chunk.count)
            if n <= 0 { return nil }
            buffer += chunk[..<n]
        }
    }

    /// True when the peer closed the connection within `timeout` (pending lines are discarded).
    func isClosed(within timeout: Double = 10) -> Bool {
        while let _ = readLine(timeout: timeout) {}
        var pfd = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        guard poll(&pfd, 1, 0) > 0 else { return false }
        var byte: UInt8 = 0
        return read(fd, &byte, 1) == 0
    }

    /// Reads the greeting and negotiates.
    @discardableResult
    func negotiate(oob: Bool = false) throws -> String {
        guard let greeting = readLine() else { throw TestFailure("no greeting") }
        let reply = try command(
            oob
                ? #"{"execute": "qmp_capabilities", "arguments": {"enable": ["oob"]}}"#
                : #"{"execute": "qmp_capabilities"}"#)
        guard reply == #"{"return": {}}"# else { throw TestFailure("negotiation failed: \(reply)") }
        return greeting
    }

    /// Sends `text` and returns the next non-event line.
    func command(_ text: String, timeout: Double = 10) throws -> String {
        send(text)
        return try reply(timeout: timeout)
    }

    /// The next non-event line (events are kept in ``events``).
    func reply(timeout: Double = 10) throws -> String {
        while let line = readLine(timeout: timeout) {
            if line.hasPrefix(#"{"timestamp""#) {
                events.append(line)
                continue
            }
            return line
        }
        throw TestFailure("no reply within \(timeout) s")
    }

    /// The next event line with `name` (from those already seen, or read now).
    func event(named name: String, timeout: Double = 10) -> String? {
        if let index = events.firstIndex(where: { $0.contains(#""event": "\#(name)""#) }) {
            return events.remove(at: index)
        }
        while let line = readLine(timeout: timeout) {
            if line.contains(#""event": "\#(name)""#) { return line }
            events.append(line)
        }
        return nil
    }
}

/// A sidecar in front of a fresh QEMU with a second, direct monitor for comparisons.
final class ProxiedQEMU {
    let qemu: QEMULauncher
    let sidecar: SidecarInstance

    init(extra: [String] = [], monitors: Int = 2) throws {
        qemu = try QEMULauncher(monitors: monitors)
        sidecar = try SidecarInstance(dir: qemu.directory, upstream: qemu.socketPaths[0], extra: extra)
    }

    var dir: String { qemu.directory }
    var directPath: String { qemu.socketPaths[1] }
    var sidecarPath: String { sidecar.listenPath }

    func client() throws -> TestClient { try TestClient(path: sidecarPath) }
    func direct() throws -> TestClient { try TestClient(path: directPath) }

    /// Kills QEMU (SIGKILL) but keeps the directory (the sidecar's log is there).
    func killQEMU() {
        kill(qemu.pid, SIGKILL)
    }

    deinit {
        sidecar.terminate()
        qemu.terminate()
    }
}

/// The targets of `/proc/<pid>/fd/*`.
func openFiles(of pid: pid_t) -> [String] {
    let dir = "/proc/\(pid)/fd"
    let entries = (try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []
    return entries.compactMap { try? FileManager.default.destinationOfSymbolicLink(atPath: "\(dir)/\($0)") }
}
