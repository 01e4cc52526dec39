import CQMPShims
import QMPRuntime
import Synchronization
import Testing

#if canImport(Glibc)
import Glibc
#endif

@Suite("Reactor")
struct ReactorTests {
    @Test("timers fire in deadline order; cancelled ones never fire")
    func timersInOrder() throws {
        let reactor = try Reactor()
        var fired: [Int] = []
        reactor.schedule(after: .milliseconds(30)) { fired.append(3) }
        reactor.schedule(after: .milliseconds(10)) { fired.append(1) }
        let cancelled = reactor.schedule(after: .milliseconds(20)) { fired.append(99) }
        reactor.schedule(after: .milliseconds(20)) { fired.append(2) }
        reactor.schedule(after: .milliseconds(40)) {
            fired.append(4)
            reactor.stop()
        }
        reactor.cancel(cancelled)
        try runUntilStopped(reactor)
        #expect(fired == [1, 2, 3, 4])
        #expect(reactor.armedTimerCount == 0)
    }

    @Test("equal deadlines fire in scheduling order; a timer never fires early")
    func equalDeadlines() throws {
        let reactor = try Reactor()
        let deadline = ContinuousClock.now + .milliseconds(5)
        var fired: [Int] = []
        var early = false
        for index in 0..<5 {
            reactor.schedule(at: deadline) {
                if ContinuousClock.now < deadline { early = true }
                fired.append(index)
                if index == 4 { reactor.stop() }
            }
        }
        try runUntilStopped(reactor)
        #expect(fired == [0, 1, 2, 3, 4])
        #expect(!early)
    }

    @Test("handlers may unregister other registrations of the same round")
    func unregisterDuringDispatch() throws {
        let reactor = try Reactor()
        let (a, b) = try Sockets.socketPair()
        let (c, d) = try Sockets.socketPair()
        defer { for fd in [a, b, c, d] { close(fd) } }
        writeAll(b, [1])
        writeAll(d, [1])
        var calls = 0
        var first: Reactor.RegistrationID?
        var second: Reactor.RegistrationID?
        first = reactor.register(fd: a, interest: .read) { _ in
            calls += 1
            reactor.unregister(first!)
            reactor.unregister(second!)
            reactor.schedule(after: .milliseconds(20)) { reactor.stop() }
        }
        second = reactor.register(fd: c, interest: .read) { _ in
            calls += 1
            reactor.unregister(first!)
            reactor.unregister(second!)
            reactor.schedule(after: .milliseconds(20)) { reactor.stop() }
        }
        try runUntilStopped(reactor)
        #expect(calls == 1)
        #expect(reactor.registrationCount == 0)
    }

    @Test("a slot freed and taken again within a round does not get the old registration's event")
    func reusedSlotWithinRound() throws {
        let reactor = try Reactor()
        let (a, b) = try Sockets.socketPair()
        let (c, d) = try Sockets.socketPair()
        let (e, f) = try Sockets.socketPair()
        defer { for fd in [a, b, c, d, e, f] { close(fd) } }
        writeAll(b, [1])
        writeAll(d, [1])
        var calls: [String] = []
        var first: Reactor.RegistrationID?
        var second: Reactor.RegistrationID?
        var replacement: Reactor.RegistrationID?
        // Whichever of the two ready descriptors is served first replaces the other one's registration
        // (same slot, a new serial) with one on an idle descriptor: its handler must not run.
        func replace(_ other: Reactor.RegistrationID?) {
            reactor.unregister(other!)
            replacement = reactor.register(fd: e, interest: .read) { _ in calls.append("replacement") }
            reactor.schedule(after: .milliseconds(20)) { reactor.stop() }
        }
        first = reactor.register(fd: a, interest: .read) { _ in
            calls.append("first")
            reactor.unregister(first!)
            if replacement == nil { replace(second) }
        }
        second = reactor.register(fd: c, interest: .read) { _ in
            calls.append("second")
            reactor.unregister(second!)
            if replacement == nil { replace(first) }
        }
        try runUntilStopped(reactor)
        #expect(calls == ["first"] || calls == ["second"])
        #expect(replacement != first && replacement != second)
        #expect(reactor.registrationCount == 1)
    }

    @Test("another thread wakes the loop, runs jobs on it, and stops it")
    func crossThreadWake() async throws {
        let counter = Mutex(0)
        let thread = try ReactorThread.start(name: "test-reactor") { _ in }
        for _ in 0..<100 {
            thread.handle.execute { _ in counter.withLock { $0 += 1 } }
        }
        let ranOnReactor = Mutex(false)
        thread.handle.execute { reactor in ranOnReactor.withLock { $0 = reactor.isRunning } }
        thread.handle.stop()
        try await thread.wait()
        #expect(counter.withLock { $0 } == 100)
        #expect(ranOnReactor.withLock { $0 })
        #expect(thread.isFinished)
    }

    @Test("an error thrown by setup is rethrown by wait()")
    func setupErrorPropagates() async throws {
        let thread = try ReactorThread.start { _ in
            throw RuntimeError(code: .closed, message: "boom")
        }
        await #expect(throws: RuntimeError.self) { try await thread.wait() }
    }

    @Test("a timer cancelled by an earlier timer of the same round does not fire")
    func cancelWithinRound() throws {
        let reactor = try Reactor()
        let deadline = ContinuousClock.now + .milliseconds(5)
        var fired: [String] = []
        var second: Reactor.TimerID?
        reactor.schedule(at: deadline) {
            fired.append("first")
            reactor.cancel(second!)
        }
        second = reactor.schedule(at: deadline) { fired.append("second") }
        reactor.schedule(at: deadline + .milliseconds(5)) { reactor.stop() }
        try runUntilStopped(reactor)
        #expect(fired == ["first"])
    }

    @Test("a timer re-arming itself with zero delay does not starve I/O")
    func zeroDelayTimerDoesNotStarve() throws {
        let reactor = try Reactor()
        let (a, b) = try Sockets.socketPair()
        defer { close(a); close(b) }
        var ticks = 0
        func tick() {
            ticks += 1
            reactor.schedule(after: .zero) { tick() }
        }
        tick()
        let registration = reactor.register(fd: a, interest: .read) { _ in reactor.stop() }
        writeAll(b, [1])
        try runUntilStopped(reactor)
        reactor.unregister(registration)
        #expect(ticks < 10, "I/O must be served within a few rounds, not after \(ticks) timer rounds")
    }

    @Test("write interest reports writability; handles of a finished reactor refuse work")
    func writeInterestAndDeadHandle() async throws {
        let (a, b) = try Sockets.socketPair()
        defer { close(a); close(b) }
        let events = Mutex<[String]>([])
        let thread = try ReactorThread.start { reactor in
            var id: Reactor.RegistrationID?
            id = reactor.register(fd: a, interest: .write) { ready in
                events.withLock { $0.append(ready.contains(.writable) ? "writable" : "other") }
                reactor.setInterest([], for: id!)
                reactor.unregister(id!)
                reactor.stop()
            }
        }
        try await thread.wait()
        #expect(events.withLock { $0 } == ["writable"])
        #expect(thread.handle.execute { _ in } == false)
        #expect(thread.handle.stop() == false)
    }

    @Test("an empty interest hears nothing, not even a hang-up; restoring it reports the hang-up")
    func emptyInterestIsSilent() throws {
        let reactor = try Reactor()
        let (a, b) = try Sockets.socketPair()
        defer { close(a) }
        var seen: [Reactor.Events] = []
        let id = reactor.register(fd: a, interest: []) { events in
            seen.append(events)
            reactor.stop()
        }
        close(b)  // the peer hangs up while nobody listens
        reactor.schedule(after: .milliseconds(30)) { reactor.stop() }
        try runUntilStopped(reactor)
        #expect(seen.isEmpty, "a paused descriptor must not wake the loop")
        reactor.setInterest(.read, for: id)
        try runUntilStopped(reactor)
        #expect(seen.count == 1 && seen[0].contains(.readable) && seen[0].contains(.hangup))
        reactor.unregister(id)
    }

    @Test("a wake-up serves only the ready descriptor among many idle ones")
    func manyIdleRegistrations() throws {
        let reactor = try Reactor()
        var pairs: [(Int32, Int32)] = []
        defer { for (x, y) in pairs { close(x); close(y) } }
        var calls: [Int] = []
        var ids: [Reactor.RegistrationID] = []
        for index in 0..<200 {
            let pair = try Sockets.socketPair()
            pairs.append(pair)
            ids.append(
                reactor.register(fd: pair.0, interest: .read) { _ in
                    calls.append(index)
                    reactor.stop()
                })
        }
        writeAll(pairs[137].1, [1])
        try runUntilStopped(reactor)
        #expect(calls == [137])
        for id in ids { reactor.unregister(id) }
        #expect(reactor.registrationCount == 0)
    }

    @Test("an idle reactor with no timer armed never wakes up")
    func idleHasNoWakeups() async throws {
        let tid = Mutex<pid_t>(0)
        let thread = try ReactorThread.start { _ in tid.withLock { $0 = cqmp_gettid() } }
        defer { thread.handle.stop() }
        // Let the thread reach epoll_wait, then count its context switches over 200 ms of idleness.
        try await Task.sleep(for: .milliseconds(50))
        let id = tid.withLock { $0 }
        try #require(id > 0)
        let before = try #require(voluntarySwitches(tid: id))
        try await Task.sleep(for: .milliseconds(200))
        let after = try #require(voluntarySwitches(tid: id))
        #expect(after == before, "the idle reactor thread woke up \(after - before) times")
        thread.handle.stop()
        try await thread.wait()
    }
}

/// voluntary_ctxt_switches of one of our threads: each return from a blocking epoll_wait adds one.
func voluntarySwitches(tid: pid_t) -> Int? {
    guard let file = fopen("/proc/self/task/\(tid)/status", "r") else { return nil }
    defer { fclose(file) }
    var line = [CChar](repeating: 0, count: 512)
    while fgets(&line, Int32(line.count), file) != nil {
        let text = line.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
        if text.hasPrefix("voluntary_ctxt_switches:") {
            return Int(text.dropFirst("voluntary_ctxt_switches:".count).trimmingCharacters(in: " \t\n"))
        }
    }
    return nil
}

extension Substring {
    fileprivate func trimmingCharacters(in set: String) -> String {
        String(self.drop(while: { set.contains($0) }).reversed().drop(while: { set.contains($0) }).reversed())
    }
}
