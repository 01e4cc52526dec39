import QMPRuntime

#if canImport(Glibc)
import Glibc
#endif

/// Why a test fixture could not do its job; `message` names the fix.
public struct QMPTestKitError: Error, CustomStringConvertible, Sendable {
    public var message: String
    public var description: String { message }

    public init(_ message: String) {
        self.message = message
    }
}

/// Starts a real QEMU 7.2 (`qemu-system-x86_64`, TCG, paused, no guest) with one or more QMP
/// monitors on unique unix sockets, and kills it when released.
///
/// Tests that need QEMU declare `@Test(.enabled(if: QEMULauncher.shouldRun, "..."))`: they are
/// skipped (with the printed reason) only when QEMU is absent and `QMP_SIDECAR_REQUIRE_QEMU` is
/// unset; with the variable set, a missing QEMU makes the launcher throw, so the test fails.
///
/// - Important: each instance owns one QEMU process and one temp directory (`/tmp/qs-XXXXXX`,
///   short enough for `sun_path`); both are gone after ``terminate()`` or deinit.
public final class QEMULauncher: @unchecked Sendable {
    /// The QEMU binary (`QMP_SIDECAR_QEMU` overrides the default `/usr/bin/qemu-system-x86_64`).
    public static var binary: String {
        if let path = getenv("QMP_SIDECAR_QEMU") { return String(cString: path) }
        return "/usr/bin/qemu-system-x86_64"
    }

    /// Whether the QEMU binary is installed and executable.
    public static var isAvailable: Bool { access(binary, X_OK) == 0 }

    /// Whether the environment demands QEMU tests run (`QMP_SIDECAR_REQUIRE_QEMU` set, as in CI).
    public static var isRequired: Bool { getenv("QMP_SIDECAR_REQUIRE_QEMU") != nil }

    /// Whether QEMU tests should run: QEMU is there, or CI requires them (and then fails without it).
    public static var shouldRun: Bool { isAvailable || isRequired }

    /// The QMP socket of each `-qmp` monitor, in command-line order.
    public let socketPaths: [String]
    /// The first monitor's socket.
    public var socketPath: String { socketPaths[0] }
    /// The temp directory holding the sockets and `qemu.log` (QEMU's stdout and stderr).
    public let directory: String
    /// QEMU's process id.
    public let pid: pid_t
    private var exited = false

    /// Starts QEMU and waits until every monitor socket is listening.
    ///
    /// - Parameters:
    ///   - monitors: how many `-qmp unix:...,server=on,wait=off` monitors to create.
    ///   - extraArguments: appended to the command line (e.g. more `-device` options).
    ///   - timeout: seconds to wait for the sockets.
    public init(monitors: Int = 1, extraArguments: [String] = [], timeout: Double = 20) throws {
        guard Self.isAvailable else {
            throw QMPTestKitError(
                "\(Self.binary) not found: install QEMU 7.2 (apt-get install qemu-system-x86) or set QMP_SIDECAR_QEMU")
        }
        var template = Array("/tmp/qs-XXXXXX".utf8CString)
        guard mkdtemp(&template) != nil else {
            throw QMPTestKitError("mkdtemp(/tmp/qs-XXXXXX) failed: errno \(errno)")
        }
        let directory = String(decoding: template.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        self.directory = directory
        let sockets = (0..<max(1, monitors)).map { "\(directory)/qmp\($0).sock" }
        socketPaths = sockets
        var arguments = [
            "-M", "pc", "-accel", "tcg", "-nodefaults", "-display", "none", "-S", "-device", "qemu-xhci",
        ]
        for socket in sockets {
            arguments += ["-qmp", "unix:\(socket),server=on,wait=off"]
        }
        arguments += extraArguments
        let logPath = "\(directory)/qemu.log"

        let child: pid_t
        do {
            // ChildSpawn: the test thread's blocked SIGTERM/SIGINT must not be inherited.
            child = try ChildSpawn.spawn(
                Self.binary, arguments: arguments,
                fileActions: ChildSpawn.isolated([
                    .open(fd: 0, path: "/dev/null", flags: O_RDONLY),
                    .open(fd: 1, path: logPath, flags: O_WRONLY | O_CREAT | O_TRUNC), .dup2(from: 1, to: 2),
                ]))
        } catch {
            Self.removeDirectory(directory)
            throw QMPTestKitError("cannot start \(Self.binary): \(error)")
        }
        pid = child

        let deadline = Self.monotonicSeconds() + timeout
        while true {
            if sockets.allSatisfy({ Self.isSocket($0) }) { break }
            var status: Int32 = 0
            if waitpid(child, &status, WNOHANG) == child {
                exited = true
                let log = Self.readFile(logPath)
                Self.removeDirectory(directory)
                throw QMPTestKitError("QEMU exited during start-up (status \(status)): \(log)")
            }
            if Self.monotonicSeconds() > deadline {
                terminate()
                throw QMPTestKitError("QEMU's QMP sockets did not appear within \(timeout) s: \(sockets)")
            }
            usleep(5000)  // bounded start-up wait; QEMU gives no other readiness signal here
        }
    }

    deinit {
        terminate()
    }

    /// Kills QEMU (SIGKILL), reaps it and removes the temp directory. Idempotent.
    public func terminate() {
        if !exited {
            kill(pid, SIGKILL)
            var status: Int32 = 0
            while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
            exited = true
        }
        Self.removeDirectory(directory)
    }

    /// QEMU's output so far (for failure messages).
    public var log: String { Self.readFile("\(directory)/qemu.log") }

    static func monotonicSeconds() -> Double {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
    }

    private static func isSocket(_ path: String) -> Bool {
        var st = stat()
        return stat(path, &st) == 0 && (st.st_mode & S_IFMT) == S_IFSOCK
    }

    private static func readFile(_ path: String) -> String {
        guard let file = fopen(path, "r") else { return "" }
        defer { fclose(file) }
        var bytes: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = fread(&buffer, 1, buffer.count, file)
            if n <= 0 { break }
            bytes += buffer[0..<n]
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    private static func removeDirectory(_ path: String) {
        guard let names = DirectoryEntries.names(in: path) else { return }
        for name in names { unlink("\(path)/\(name)") }
        rmdir(path)
    }
}
