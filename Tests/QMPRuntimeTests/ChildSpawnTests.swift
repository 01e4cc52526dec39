import QMPRuntime
import QMPTestKit
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Children spawned from a thread that blocks SIGTERM (as Swift Testing's workers do) must still
/// stop on `kill(pid, SIGTERM)`.
@Suite struct ChildSpawnTests {
    /// The `Sig*` line of `/proc/<pid>/status` as a bit mask.
    static func signalMask(_ field: String, of pid: pid_t) -> UInt64? {
        guard let file = fopen("/proc/\(pid)/status", "r") else { return nil }
        defer { fclose(file) }
        var line = [CChar](repeating: 0, count: 512)
        while fgets(&line, Int32(line.count), file) != nil {
            let text = String(decoding: line.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
            if text.hasPrefix(field + ":") {
                return UInt64(
                    text.dropFirst(field.count + 1).trimmingPrefix { $0 == "\t" || $0 == " " }.prefix { $0.isHexDigit },
                    radix: 16)
            }
        }
        return nil
    }

    static func bit(_ signal: Int32) -> UInt64 { 1 << UInt64(signal - 1) }

    /// Runs `body` on this thread with SIGTERM and SIGINT blocked and ignored-by-mask restored after.
    static func withTermBlocked<T>(_ body: () throws -> T) rethrows -> T {
        var block = sigset_t()
        sigemptyset(&block)
        sigaddset(&block, SIGTERM)
        sigaddset(&block, SIGINT)
        var old = sigset_t()
        pthread_sigmask(SIG_BLOCK, &block, &old)
        defer { pthread_sigmask(SIG_SETMASK, &old, nil) }
        return try body()
    }

    @Test func childStartsWithNoBlockedSignalsAndStopsOnSIGTERM() throws {
        let pid = try Self.withTermBlocked { try ChildSpawn.spawn("/bin/sleep", arguments: ["30"]) }
        defer {
            kill(pid, SIGKILL)
            var status: Int32 = 0
            waitpid(pid, &status, 0)
        }
        let blocked = try #require(Self.signalMask("SigBlk", of: pid))
        #expect(blocked & (Self.bit(SIGTERM) | Self.bit(SIGINT)) == 0, "SigBlk \(String(blocked, radix: 16))")
        kill(pid, SIGTERM)
        var status: Int32 = 0
        #expect(waitpid(pid, &status, 0) == pid)
        #expect(status & 0x7f == SIGTERM, "ended by SIGTERM")
    }

    /// QMPTestKit's process wrapper (used instead of Foundation's `Process`, whose children keep the
    /// blocked mask) stops on `terminate()`.
    @Test func spawnedProcessTerminatesFromABlockingThread() throws {
        let process = try Self.withTermBlocked { try SpawnedProcess("/bin/sleep", ["30"]) }
        #expect(process.isRunning)
        process.terminate()
        #expect(process.waitUntilExit() == 128 + SIGTERM)
        let (status, output) = try SpawnedProcess.run(["sh", "-c", "cat; echo err >&2; exit 3"], input: "in\n")
        #expect(status == 3)
        #expect(output == "in\nerr\n")
    }

    /// A descriptor held without close-on-exec reaches a plain child, and not one whose actions end
    /// with `closeAll(from:)` (``ChildSpawn/isolated(_:)``), while what the actions set up below it stays.
    @Test func closeAllKeepsOnlyWhatTheActionsSetUp() throws {
        let stray = open("/dev/null", O_RDONLY)  // deliberately without O_CLOEXEC
        try #require(stray > 2)
        defer { close(stray) }
        let probe = "test -e /proc/self/fd/\(stray) && exit 10; test -e /proc/self/fd/1 || exit 11; exit 0"
        let plain = try SpawnedProcess.run(["sh", "-c", probe])  // closes all but 0-2: no stray
        #expect(plain.status == 0, "\(plain.output)")
        var status: Int32 = 0
        let inherits = try ChildSpawn.spawn("/bin/sh", arguments: ["-c", probe], fileActions: SpawnedProcess.quiet)
        #expect(waitpid(inherits, &status, 0) == inherits && (status >> 8) & 0xff == 10, "the premise: inherited")
        let isolated = try ChildSpawn.spawn(
            "/bin/sh", arguments: ["-c", probe], fileActions: ChildSpawn.isolated(SpawnedProcess.quiet))
        #expect(waitpid(isolated, &status, 0) == isolated && (status >> 8) & 0xff == 0, "status \(status)")
    }

    /// The premise: a plain `posix_spawn` from such a thread passes the blocked mask on.
    @Test func plainPosixSpawnInheritsTheBlockedMask() throws {
        var pid: pid_t = 0
        var argv: [UnsafeMutablePointer<CChar>?] = [strdup("/bin/sleep"), strdup("30"), nil]
        defer { for arg in argv { free(arg) } }
        let rc = Self.withTermBlocked { posix_spawn(&pid, "/bin/sleep", nil, nil, &argv, environ) }
        try #require(rc == 0)
        defer {
            kill(pid, SIGKILL)
            var status: Int32 = 0
            waitpid(pid, &status, 0)
        }
        let blocked = try #require(Self.signalMask("SigBlk", of: pid))
        #expect(blocked & Self.bit(SIGTERM) != 0)
    }
}
