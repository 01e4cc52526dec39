import CQMPShims
import Glibc
import QMPRuntime
import QMPTestKit

/// A fresh `/tmp/qs-XXXXXX` directory (short enough for socket paths).
func makeTempDirectory() throws -> String {
    var template = Array("/tmp/qs-XXXXXX".utf8CString)
    guard mkdtemp(&template) != nil else { throw QMPTestKitError("mkdtemp failed: errno \(errno)") }
    return String(decoding: template.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
}

/// Removes a directory tree (test cleanup).
func removeTree(_ path: String) {
    var status: Int32 = 0
    if let pid = try? ChildSpawn.spawn("rm", arguments: ["-rf", path], searchPath: true) { waitpid(pid, &status, 0) }
}

/// The directory holding the test bundle, where SwiftPM puts the package's executables.
func productsDirectory() -> String {
    var buffer = [CChar](repeating: 0, count: 4096)
    let n = readlink("/proc/self/exe", &buffer, buffer.count - 1)
    let exe = String(decoding: buffer.prefix(max(0, n)).map { UInt8(bitPattern: $0) }, as: UTF8.self)
    var parts = exe.split(separator: "/", omittingEmptySubsequences: false)
    parts.removeLast()
    // Inside an .xctest bundle directory on some layouts: climb out of it.
    while let last = parts.last, last.hasSuffix(".xctest") || last == "Contents" || last == "MacOS" {
        parts.removeLast()
    }
    return parts.joined(separator: "/")
}

/// A child process (qmp-mock, qmp-sidecar) with its stdout on a pipe and stderr in a log file.
final class ChildProcess: @unchecked Sendable {
    let pid: pid_t
    private let stdoutFD: Int32
    private var buffered: [UInt8] = []
    let logPath: String
    private var reaped: Int32?

    init(_ executable: String, _ arguments: [String], logPath: String) throws {
        var pipeFDs: [Int32] = [-1, -1]
        guard cqmp_pipe(&pipeFDs, 0) == 0 else { throw QMPTestKitError("pipe failed: errno \(errno)") }
        // Test worker threads block signals; ChildSpawn starts the child with none blocked.
        let pid: pid_t
        do {
            pid = try ChildSpawn.spawn(
                executable, arguments: arguments,
                fileActions: ChildSpawn.isolated([
                    .open(fd: 0, path: "/dev/null", flags: O_RDONLY), .dup2(from: pipeFDs[1], to: 1),
                    .open(fd: 2, path: logPath, flags: O_WRONLY | O_CREAT | O_TRUNC),
                ]))
        } catch {
            Glibc.close(pipeFDs[0])
            Glibc.close(pipeFDs[1])
            throw QMPTestKitError("cannot start \(executable): \(error); build it first (swift build)")
        }
        Glibc.close(pipeFDs[1])
        self.pid = pid
        self.stdoutFD = pipeFDs[0]
        self.logPath = logPath
    }

    deinit {
        terminate()
        Glibc.close(stdoutFD)
    }

    /// Reads stdout until a line containing `marker` (or EOF / timeout, which throw).
    func waitForLine(containing marker: String, timeout: Double = 20) throws -> String {
        let deadline = monotonicSeconds() + timeout
        while true {
            if let newline = buffered.firstIndex(of: 10) {
                let line = String(decoding: buffered[..<newline], as: UTF8.self)
                buffered.removeSubrange(...newline)
                if line.contains(marker) { return line }
                continue
            }
            let remaining = deadline - monotonicSeconds()
            guard remaining > 0 else { throw QMPTestKitError("no line with '\(marker)' in time; log: \(log)") }
            var pfd = pollfd(fd: stdoutFD, events: Int16(POLLIN), revents: 0)
            _ = poll(&pfd, 1, Int32(remaining * 1000))
            var chunk = [UInt8](repeating: 0, count: 4096)
            let n = read(stdoutFD, &chunk, chunk.count)
            if n == 0 { throw QMPTestKitError("process ended before '\(marker)'; log: \(log)") }
            if n > 0 { buffered += chunk[0..<n] }
        }
    }

    /// Sends SIGTERM and reaps; returns the exit status (or 128+signal).
    @discardableResult
    func terminate(signal: Int32 = SIGTERM) -> Int32 {
        if let reaped { return reaped }
        kill(pid, signal)
        return waitForExit()
    }

    /// Waits for the process to end by itself; returns its status.
    @discardableResult
    func waitForExit() -> Int32 {
        if let reaped { return reaped }
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        let code = (status & 0x7f) == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f)
        reaped = code
        return code
    }

    var log: String {
        String(decoding: readAll(logPath) ?? [], as: UTF8.self)
    }
}

func monotonicSeconds() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
}

/// A running `qmp-mock` on a unique socket, with its fake host under a unique directory.
final class MockInstance: @unchecked Sendable {
    let directory: String
    let socketPath: String
    let fakeRoot: String
    let process: ChildProcess

    init(_ arguments: [String], fakeHost: [String] = []) throws {
        directory = try makeTempDirectory()
        socketPath = directory + "/m.sock"
        fakeRoot = directory + "/fh"
        var args = ["--listen", "unix:\(socketPath)"]
        for spec in fakeHost { args += ["--fake-host", spec] }
        if !fakeHost.isEmpty { args += ["--fake-host-root", fakeRoot] }
        process = try ChildProcess(
            productsDirectory() + "/qmp-mock", args + arguments, logPath: directory + "/mock.log")
        _ = try process.waitForLine(containing: "listening on")
    }

    deinit {
        process.terminate()
        removeTree(directory)
    }

    func connect() throws -> MockTestClient { try MockTestClient(path: socketPath) }

    /// The targets of the mock's open descriptors (`/proc/<pid>/fd`), by fd number.
    func openFiles() -> [Int32: String] { openFilesOf(process.pid) }
}

/// `/proc/<pid>/fd` as fd → link target.
func openFilesOf(_ pid: pid_t) -> [Int32: String] {
    var result: [Int32: String] = [:]
    for name in DirectoryEntries.names(in: "/proc/\(pid)/fd") ?? [] {
        guard let fd = Int32(name) else { continue }
        var buffer = [CChar](repeating: 0, count: 4096)
        let n = readlink("/proc/\(pid)/fd/\(name)", &buffer, buffer.count - 1)
        if n > 0 { result[fd] = String(decoding: buffer.prefix(n).map { UInt8(bitPattern: $0) }, as: UTF8.self) }
    }
    return result
}

/// A blocking QMP client for process tests that can pass descriptors with SCM_RIGHTS.
final class MockTestClient: @unchecked Sendable {
    private(set) var fd: Int32
    private var buffer: [UInt8] = []
    private(set) var greeting = ""

    init(path: String, timeout: Double = 10) throws {
        // A server may have bound its socket file before listen(): retried briefly.
        fd = try connectUnixStream(path, timeout: timeout)
        greeting = try readLine(timeout: timeout) ?? ""
    }

    deinit { close() }

    /// Closes the connection (idempotent).
    func close() {
        if fd >= 0 { Glibc.close(fd) }
        fd = -1
    }

    /// Sends `text`, with `fds` attached to its first byte.
    func send(_ text: String, fds: [Int32] = []) throws {
        let bytes = Array(text.utf8)
        let n = bytes.withUnsafeBytes { raw in
            fds.withUnsafeBufferPointer {
                cqmp_sendmsg_fds(fd, raw.baseAddress, raw.count, $0.baseAddress, fds.count, 0)
            }
        }
        guard n == bytes.count else { throw QMPTestKitError("send: \(n) of \(bytes.count) bytes, errno \(errno)") }
    }

    /// One line without CR LF; nil at EOF; throws on timeout. An unterminated tail before EOF is returned.
    func readLine(timeout: Double = 10) throws -> String? {
        let deadline = monotonicSeconds() + timeout
        while true {
            if let lf = buffer.firstIndex(of: 10) {
                var line = Array(buffer[..<lf])
                buffer.removeSubrange(...lf)
                if line.last == 13 { line.removeLast() }
                return String(decoding: line, as: UTF8.self)
            }
            let remaining = deadline - monotonicSeconds()
            guard remaining > 0 else {
                throw QMPTestKitError("no line within \(timeout) s (have \(buffer.count) bytes)")
            }
            var pfd = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            _ = poll(&pfd, 1, Int32(remaining * 1000) + 1)
            var chunk = [UInt8](repeating: 0, count: 65536)
            let n = recv(fd, &chunk, chunk.count, Int32(MSG_DONTWAIT))
            if n == 0 {
                guard !buffer.isEmpty else { return nil }
                defer { buffer = [] }
                return String(decoding: buffer, as: UTF8.self)
            }
            if n > 0 { buffer += chunk[0..<n] }
        }
    }

    /// Negotiates capabilities; returns the client, for `try x.connect().negotiated()`.
    func negotiated() throws -> MockTestClient {
        _ = try execute(#"{"execute":"qmp_capabilities"}"#)
        return self
    }

    /// Sends a command and returns the lines up to its reply (events first, reply last).
    func execute(_ text: String, fds: [Int32] = []) throws -> [String] {
        try send(text, fds: fds)
        var lines: [String] = []
        while let line = try readLine() {
            lines.append(line)
            if !line.hasPrefix("{\"timestamp\"") { return lines }
        }
        return lines
    }

    /// Reads lines until one contains `text` (events in between are returned too).
    func readUntil(_ text: String, timeout: Double = 10) throws -> [String] {
        var lines: [String] = []
        while let line = try readLine(timeout: timeout) {
            lines.append(line)
            if line.contains(text) { return lines }
        }
        throw QMPTestKitError("EOF before a line with \(text); got \(lines)")
    }
}

/// The package root (three levels above this file).
func packageRoot() -> String {
    var parts = #filePath.split(separator: "/", omittingEmptySubsequences: false)
    parts.removeLast(4)
    return parts.joined(separator: "/")
}

/// A whole file, or nil.
func readAll(_ path: String) -> [UInt8]? {
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { return nil }
    defer { Glibc.close(fd) }
    var out: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 65536)
    while true {
        let n = read(fd, &chunk, chunk.count)
        if n <= 0 { break }
        out += chunk[0..<n]
    }
    return out
}
