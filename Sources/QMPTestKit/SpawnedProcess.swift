import CQMPShims
import QMPRuntime

#if canImport(Glibc)
import Glibc
#endif

/// A child process for tests, started through ``QMPRuntime/ChildSpawn`` so it does not inherit the
/// test thread's blocked SIGTERM/SIGINT (Foundation's `Process` passes them on: such a child ignores
/// `terminate()` and a test run hangs).
///
/// - Important: not thread-safe; use it from one test.
public final class SpawnedProcess: @unchecked Sendable {
    /// The child's pid.
    public let processIdentifier: pid_t
    private var status: Int32?

    /// stdin from `/dev/null`, stdout and stderr to `/dev/null`.
    public static let quiet: [ChildSpawn.FileAction] = [
        .open(fd: 0, path: "/dev/null", flags: O_RDONLY), .open(fd: 1, path: "/dev/null", flags: O_WRONLY),
        .open(fd: 2, path: "/dev/null", flags: O_WRONLY),
    ]

    /// stdin from `/dev/null`, stdout to `/dev/null`, stderr to `path` (created or truncated).
    public static func stderr(to path: String) -> [ChildSpawn.FileAction] {
        [
            .open(fd: 0, path: "/dev/null", flags: O_RDONLY), .open(fd: 1, path: "/dev/null", flags: O_WRONLY),
            .open(fd: 2, path: path, flags: O_WRONLY | O_CREAT | O_TRUNC),
        ]
    }

    /// Starts `executable` (looked up in `PATH` when `searchPath`) with `arguments`; the child gets the
    /// descriptors `fileActions` set up and no others (``QMPRuntime/ChildSpawn/isolated(_:)``).
    public init(
        _ executable: String, _ arguments: [String] = [], searchPath: Bool = false,
        fileActions: [ChildSpawn.FileAction] = SpawnedProcess.quiet
    ) throws {
        do {
            processIdentifier = try ChildSpawn.spawn(
                executable, arguments: arguments, searchPath: searchPath, fileActions: ChildSpawn.isolated(fileActions))
        } catch {
            throw QMPTestKitError("cannot start \(executable): \(error)")
        }
    }

    deinit {
        if isRunning {
            Glibc.kill(processIdentifier, SIGKILL)
            waitUntilExit()
        }
    }

    /// Whether the child has not ended yet (reaps it when it has).
    public var isRunning: Bool {
        reap(options: WNOHANG)
        return status == nil
    }

    /// Sends SIGTERM if the child still runs.
    public func terminate() { signal(SIGTERM) }

    /// Sends `signal` if the child still runs.
    public func signal(_ signal: Int32) {
        if isRunning { Glibc.kill(processIdentifier, signal) }
    }

    /// Waits for the child to end; returns ``terminationStatus``.
    @discardableResult
    public func waitUntilExit() -> Int32 {
        while status == nil { reap(options: 0) }
        return terminationStatus
    }

    /// The exit status, or 128 + the signal that ended it; -1 while running.
    public var terminationStatus: Int32 { status ?? -1 }

    private func reap(options: Int32) {
        guard status == nil else { return }
        var raw: Int32 = 0
        let rc = waitpid(processIdentifier, &raw, options)
        if rc == processIdentifier {
            status = (raw & 0x7f) == 0 ? (raw >> 8) & 0xff : 128 + (raw & 0x7f)
        } else if rc < 0 && errno != EINTR {
            status = -1  // not our child any more
        }
    }

    /// Runs `argv` (looked up in `PATH`) with `input` on stdin to its end; returns its status and its
    /// stdout and stderr together.
    public static func run(_ argv: [String], input: String = "") throws -> (status: Int32, output: String) {
        var inPipe: [Int32] = [-1, -1]
        var outPipe: [Int32] = [-1, -1]
        guard cqmp_pipe(&inPipe, 0) == 0 else { throw QMPTestKitError("pipe failed: errno \(errno)") }
        guard cqmp_pipe(&outPipe, 0) == 0 else {
            close(inPipe[0])
            close(inPipe[1])
            throw QMPTestKitError("pipe failed: errno \(errno)")
        }
        let process: SpawnedProcess
        do {
            process = try SpawnedProcess(
                argv[0], Array(argv.dropFirst()), searchPath: true,
                fileActions: [
                    .dup2(from: inPipe[0], to: 0), .dup2(from: outPipe[1], to: 1), .dup2(from: outPipe[1], to: 2),
                ])
        } catch {
            for fd in inPipe + outPipe { close(fd) }
            throw error
        }
        close(inPipe[0])
        close(outPipe[1])
        var bytes = Array(input.utf8)
        var offset = 0
        while offset < bytes.count {
            let n = bytes.withUnsafeMutableBytes { write(inPipe[1], $0.baseAddress! + offset, $0.count - offset) }
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { break }
            offset += n
        }
        bytes = []
        close(inPipe[1])
        var output: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = read(outPipe[0], &chunk, chunk.count)
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { break }
            output += chunk[0..<n]
        }
        close(outPipe[0])
        return (process.waitUntilExit(), String(decoding: output, as: UTF8.self))
    }
}
