import QMPRuntime
import Testing

#if canImport(Glibc)
import Glibc
#endif

@Suite("Watchers")
struct WatcherTests {
    @Test("inotify reports the last close of a watched file, for each path watched")
    func inotifyClose() throws {
        let dir = try TempDir()
        defer { dir.remove() }
        let path = dir.file("group")
        let other = dir.file("other")
        let fd = open(path, O_CREAT | O_RDWR | O_CLOEXEC, 0o600)
        try #require(fd >= 0)
        close(open(other, O_CREAT | O_RDWR | O_CLOEXEC, 0o600))
        let reactor = try Reactor()
        var events: [String] = []
        let watcher = try InotifyWatcher(reactor: reactor) { watched in
            events.append(watched)
            reactor.stop()
        }
        try watcher.watch(path)
        try watcher.watch(other)
        watcher.unwatch(other)
        // A duplicate keeps the open file alive: closing one copy is not the last close.
        let copy = dup(fd)
        close(fd)
        close(open(other, O_RDONLY | O_CLOEXEC))  // unwatched: no event
        let closedAt = ContinuousClock.now + .milliseconds(30)
        reactor.schedule(at: closedAt) { close(copy) }
        try runUntilStopped(reactor)
        #expect(events == [path])
        #expect(ContinuousClock.now >= closedAt, "the event must come from the last close, not the first")
        #expect(watcher.watchedPaths == [path])
        watcher.close()
        #expect(reactor.registrationCount == 0)
    }

    @Test("a deleted watched file reports its watch as lost")
    func inotifyWatchLost() throws {
        let dir = try TempDir()
        defer { dir.remove() }
        let path = dir.file("gone")
        close(open(path, O_CREAT | O_RDWR | O_CLOEXEC, 0o600))
        let reactor = try Reactor()
        var lost: [String] = []
        let watcher = try InotifyWatcher(reactor: reactor) { _ in }
        watcher.onWatchLost = { path in
            lost.append(path)
            reactor.stop()
        }
        try watcher.watch(path)
        unlink(path)
        try runUntilStopped(reactor)
        #expect(lost == [path])
        #expect(watcher.watchedPaths.isEmpty)
        #expect(throws: RuntimeError.self) { try watcher.watch(dir.file("missing")) }
        watcher.close()
    }

    @Test("a pidfd reports the exit of a spawned child")
    func processExit() throws {
        let pid = try ChildSpawn.spawn("/bin/sleep", arguments: ["0.05"])
        let (reactor, watcher, exited) = try watchUntilExit(pid)
        #expect(exited)
        #expect(watcher.hasExited)
        var status: Int32 = 0
        #expect(waitpid(pid, &status, WNOHANG) == pid, "the child is a zombie when the pidfd fires")
        #expect(reactor.registrationCount == 0)
    }

    @Test("a process that is already gone is reported on the next round")
    func processAlreadyGone() throws {
        let pid = try ChildSpawn.spawn("/bin/true")
        var status: Int32 = 0
        try #require(waitpid(pid, &status, 0) == pid)
        let (_, watcher, exited) = try watchUntilExit(pid)
        #expect(exited && watcher.hasExited)
    }

    /// Watches `pid` with a pidfd on a new reactor and runs the reactor until the exit is reported.
    private func watchUntilExit(_ pid: pid_t) throws -> (Reactor, ProcessExitWatcher, exited: Bool) {
        let reactor = try Reactor()
        var exited = false
        let watcher = try ProcessExitWatcher(pid: pid, reactor: reactor) {
            exited = true
            reactor.stop()
        }
        try runUntilStopped(reactor)
        return (reactor, watcher, exited)
    }

    @Test("ConnectRetry waits on the reactor until the listener appears")
    func connectRetry() throws {
        let dir = try TempDir()
        defer { dir.remove() }
        let path = dir.file("up")
        let reactor = try Reactor()
        var listening: Int32 = -1
        var result: Result<Int32, RuntimeError>?
        reactor.schedule(after: .milliseconds(40)) { listening = (try? Sockets.listenUnix(path: path)) ?? -1 }
        let retry = ConnectRetry(address: .unix(path: path), reactor: reactor, deadline: .now + .seconds(10)) {
            result = $0
            reactor.stop()
        }
        try runUntilStopped(reactor)
        #expect(!retry.isPending)
        let fd = try #require(try result?.get())
        #expect(listening >= 0)
        close(fd)
        close(listening)

        var timedOut: RuntimeError?
        _ = ConnectRetry(
            address: .unix(path: dir.file("never")), reactor: reactor, deadline: .now + .milliseconds(50)
        ) {
            if case .failure(let error) = $0 { timedOut = error }
            reactor.stop()
        }
        try runUntilStopped(reactor)
        #expect(timedOut?.code == .timedOut)
        #expect(reactor.armedTimerCount == 0)
    }
}
