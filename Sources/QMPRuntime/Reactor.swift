import CQMPShims
import Logging

#if canImport(Glibc)
import Glibc
#endif

/// An epoll event loop (level triggered): file-descriptor readiness handlers and monotonic timers.
///
/// One reactor serves all the sockets, inotify and pidfd descriptors of a process (or of one test).
/// Handlers run on the reactor's thread, one at a time, and may register, unregister or change
/// interest of any descriptor (their own included), schedule and cancel timers, or call `stop()`.
/// When no timer is armed the loop waits in `epoll_wait` with no timeout: an idle reactor never wakes
/// up. A wake-up visits only the descriptors that are ready, however many are registered.
///
/// - Important: A `Reactor` is confined to the thread that runs it: call its methods only from that
///   thread (from handlers, timers, jobs given to ``ReactorHandle/execute(_:)``, or before `run()`
///   starts on the thread that will run it). Other threads talk to it through ``handle``.
///   The reactor never closes descriptors that were registered with it: their owners do, after
///   `unregister`.
public final class Reactor {
    /// What a registration wants to be told about.
    public struct Interest: OptionSet, Hashable, Sendable {
        public let rawValue: UInt8
        public init(rawValue: UInt8) { self.rawValue = rawValue }
        /// Readable (data, EOF, or a pending connection on a listener).
        public static let read = Interest(rawValue: 1)
        /// Writable (room in the socket buffer).
        public static let write = Interest(rawValue: 2)
    }

    /// What happened to a descriptor, as given to its handler.
    public struct Events: OptionSet, Hashable, Sendable {
        public let rawValue: UInt8
        public init(rawValue: UInt8) { self.rawValue = rawValue }
        /// EPOLLIN (also set on EPOLLHUP when read interest is on, so a reader sees EOF).
        public static let readable = Events(rawValue: 1)
        /// EPOLLOUT.
        public static let writable = Events(rawValue: 2)
        /// EPOLLHUP: the peer hung up.
        public static let hangup = Events(rawValue: 4)
        /// EPOLLERR: an error is pending on the descriptor.
        public static let error = Events(rawValue: 8)
    }

    /// Identifies one registration; stays unique for the reactor's lifetime even if the fd is reused.
    ///
    /// A serial number above the index of the registration's slot: the epoll token finds the slot
    /// without hashing, and the serial tells a reused slot from the one an old token named.
    public struct RegistrationID: Hashable, Sendable, CustomStringConvertible {
        fileprivate let raw: UInt64
        fileprivate static let slotBits: UInt64 = 24
        fileprivate init(raw: UInt64) { self.raw = raw }
        fileprivate init(serial: UInt64, slot: Int) { self.raw = serial << Self.slotBits | UInt64(slot) }
        fileprivate var slot: Int { Int(truncatingIfNeeded: raw & (1 << Self.slotBits - 1)) }
        public var description: String { "reg#\(raw >> Self.slotBits)" }
    }

    /// Identifies one armed timer.
    public struct TimerID: Hashable, Sendable, CustomStringConvertible {
        fileprivate let raw: UInt64
        public var description: String { "timer#\(raw)" }
    }

    private final class Registration {
        let id: RegistrationID
        let fd: Int32
        var interest: Interest
        /// False once unregistered: handlers of a round may unregister later entries of the same round.
        var isActive = true
        /// Whether the descriptor is in the epoll set (not while the interest is empty).
        var inKernel = false
        let handler: (Events) -> Void
        init(id: RegistrationID, fd: Int32, interest: Interest, handler: @escaping (Events) -> Void) {
            self.id = id
            self.fd = fd
            self.interest = interest
            self.handler = handler
        }
    }

    private struct HeapEntry {
        var deadline: ContinuousClock.Instant
        var id: UInt64
        static func < (a: HeapEntry, b: HeapEntry) -> Bool {
            a.deadline < b.deadline || (a.deadline == b.deadline && a.id < b.id)
        }
    }

    /// The thread-safe way in: other threads wake the loop, run jobs on it, or stop it.
    public let handle: ReactorHandle
    /// The logger given at creation.
    public let logger: Logger

    /// Registrations by slot (``RegistrationID/slot``); nil slots are free, and listed in `freeSlots`.
    private var slots: [Registration?] = []
    private var freeSlots: [Int] = []
    private var liveRegistrations = 0
    private let epollFD: Int32
    /// Ready events of one `epoll_wait`: their ``Events`` bits and registration ids. Raw memory, not
    /// arrays: a wake-up touches no reference count and no uniqueness check.
    private let readyMasks = UnsafeMutableBufferPointer<UInt32>.allocate(capacity: 64)
    private let readyTokens = UnsafeMutableBufferPointer<UInt64>.allocate(capacity: 64)
    private var nextID: UInt64 = 1
    private var timers: [UInt64: () -> Void] = [:]
    private var heap: [HeapEntry] = []
    private var stopFlag = false
    private var wakeRegistration: RegistrationID?
    /// A scratch buffer shared by the connections of this reactor for reads (only used on its thread).
    /// Raw memory, not an array: a read touches no reference count and no uniqueness check.
    let readBuffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 64 * 1024, alignment: 16)
    /// Scratch space for descriptors received by `recvmsg` (only used on the reactor thread).
    let fdBuffer = UnsafeMutableBufferPointer<Int32>.allocate(capacity: Int(CQMP_MAX_FDS))

    /// `true` while `run()` is executing.
    public private(set) var isRunning = false

    /// Creates a reactor with its own epoll set and an eventfd for cross-thread wake-ups.
    ///
    /// - Throws: ``RuntimeError`` if the epoll set or the eventfd cannot be created.
    public convenience init(logger: Logger = Logger(label: "qmp.runtime")) throws {
        try self.init(channel: try WakeChannel(), logger: logger)
    }

    init(channel: WakeChannel, logger: Logger) throws(RuntimeError) {
        let epollFD = cqmp_epoll_create()
        guard epollFD >= 0 else {
            let err = errno
            channel.close()
            throw RuntimeError.systemCall("epoll_create1", errno: err, context: "reactor")
        }
        self.epollFD = epollFD
        self.handle = ReactorHandle(channel: channel)
        self.logger = logger
        wakeRegistration = register(fd: channel.fd, interest: .read) { [unowned self] _ in
            self.drainWakeChannel()
        }
    }

    deinit {
        handle.channel.close()
        Glibc.close(epollFD)
        readBuffer.deallocate()
        fdBuffer.deallocate()
        readyMasks.deallocate()
        readyTokens.deallocate()
    }

    // MARK: Descriptors

    /// Registers `fd` and calls `handler` on the reactor thread whenever it is ready.
    ///
    /// The handler receives the events that match the current interest (plus hang-up and error).
    /// With an empty interest the descriptor is not polled at all (no wake-ups from hang-ups either).
    /// - Important: The reactor does not take ownership of `fd`; keep it open until `unregister`.
    ///   The handler is retained until `unregister`.
    @discardableResult
    public func register(fd: Int32, interest: Interest, handler: @escaping (Events) -> Void) -> RegistrationID {
        let slot = freeSlots.popLast() ?? slots.count
        precondition(slot < 1 << RegistrationID.slotBits, "Reactor: too many registrations")
        let id = RegistrationID(serial: nextID, slot: slot)
        nextID += 1
        let registration = Registration(id: id, fd: fd, interest: interest, handler: handler)
        if slot == slots.count { slots.append(registration) } else { slots[slot] = registration }
        liveRegistrations += 1
        updateKernel(registration)
        return id
    }

    /// Changes what a registration is polled for. Unknown ids are ignored.
    public func setInterest(_ interest: Interest, for id: RegistrationID) {
        guard let registration = registration(id), registration.interest != interest else { return }
        registration.interest = interest
        updateKernel(registration)
    }

    /// The current interest of a registration, or nil when it is not registered.
    public func interest(of id: RegistrationID) -> Interest? {
        registration(id)?.interest
    }

    /// Removes a registration; its handler is not called again, even for events of the current round.
    /// Idempotent. Does not close the descriptor.
    public func unregister(_ id: RegistrationID) {
        if let registration = registration(id) {
            slots[id.slot] = nil
            freeSlots.append(id.slot)
            liveRegistrations -= 1
            registration.isActive = false
            registration.interest = []
            updateKernel(registration)
        }
    }

    /// Brings the epoll set in line with a registration's interest.
    private func updateKernel(_ registration: Registration) {
        var bits: UInt32 = 0
        if registration.interest.contains(.read) { bits |= CQMP_EPOLL_READ }
        if registration.interest.contains(.write) { bits |= CQMP_EPOLL_WRITE }
        let result = cqmp_epoll_update(
            epollFD, registration.fd, registration.id.raw, registration.inKernel ? 1 : 0, bits)
        if result == 0 {
            registration.inKernel = bits != 0
            return
        }
        let err = errno
        // The descriptor was closed before `unregister` (the kernel dropped it from the set already).
        if bits == 0, err == EBADF || err == ENOENT {
            registration.inKernel = false
            return
        }
        logger.error(
            "epoll_ctl failed: the descriptor will not be watched",
            metadata: ["fd": "\(registration.fd)", "registration": "\(registration.id)", "errno": "\(err)"])
        registration.inKernel = false
    }

    /// Number of registrations (the reactor's own eventfd excluded).
    public var registrationCount: Int { liveRegistrations - (wakeRegistration == nil ? 0 : 1) }

    /// The live registration `id` names, if any.
    @inline(__always)
    private func registration(_ id: RegistrationID) -> Registration? {
        let slot = id.slot
        guard slot < slots.count, let registration = slots[slot], registration.id == id else { return nil }
        return registration
    }

    // MARK: Timers

    /// Runs `body` once on the reactor thread after `delay` (monotonic clock).
    @discardableResult
    public func schedule(after delay: Duration, _ body: @escaping () -> Void) -> TimerID {
        schedule(at: .now + delay, body)
    }

    /// Runs `body` once on the reactor thread at `deadline`. Timers with equal deadlines fire in the
    /// order they were scheduled. A deadline in the past fires on the next loop round.
    @discardableResult
    public func schedule(at deadline: ContinuousClock.Instant, _ body: @escaping () -> Void) -> TimerID {
        let id = nextID
        nextID += 1
        timers[id] = body
        heapPush(HeapEntry(deadline: deadline, id: id))
        return TimerID(raw: id)
    }

    /// Cancels a timer; it will not fire. Idempotent; cancelling a timer that already fired is a no-op.
    public func cancel(_ timer: TimerID) {
        timers.removeValue(forKey: timer.raw)
        // Cancelled entries stay in the heap until popped; compact when they dominate.
        if heap.count > 64 && heap.count > 2 * timers.count {
            heap.removeAll { timers[$0.id] == nil }
            heap.sort(by: <)
        }
    }

    /// Number of armed (not yet fired, not cancelled) timers.
    public var armedTimerCount: Int { timers.count }

    // MARK: Running

    /// Runs the loop on the calling thread until `stop()` (or ``ReactorHandle/stop()``).
    ///
    /// May be called again after it returned. A stop requested through the handle before `run()`
    /// makes it return at once.
    /// - Throws: ``RuntimeError`` if `epoll_wait` fails with anything but EINTR.
    public func run() throws(RuntimeError) {
        precondition(!isRunning, "Reactor.run() is not reentrant")
        isRunning = true
        defer { isRunning = false }
        stopFlag = false
        drainWakeChannel()
        while !stopFlag {
            // Checked here, not inside: the clock's types are resilient, and a function that touches
            // them asks the runtime for their layout on every call, timers or not.
            try runOnce(timeoutNanoseconds: heap.isEmpty ? -1 : nextTimeoutNanoseconds())
        }
        stopFlag = false
    }

    /// Asks `run()` to return after the current handler. Call it on the reactor thread.
    public func stop() {
        stopFlag = true
    }

    private func runOnce(timeoutNanoseconds: Int64) throws(RuntimeError) {
        let ready = cqmp_epoll_wait_ns(
            epollFD, readyMasks.baseAddress, readyTokens.baseAddress, Int32(readyTokens.count), timeoutNanoseconds)
        if ready < 0 {
            let err = errno
            if err == EINTR { return }
            throw RuntimeError.systemCall("epoll_wait", errno: err, context: "reactor loop")
        }
        for index in 0..<Int(ready) {
            // Unregistered (or replaced) by an earlier handler of this round: no longer in the table.
            guard let registration = registration(RegistrationID(raw: readyTokens[index])), registration.isActive
            else { continue }
            let mask = readyMasks[index]
            var events: Events = []
            let interest = registration.interest
            if mask & CQMP_EPOLL_READ != 0, interest.contains(.read) { events.insert(.readable) }
            if mask & CQMP_EPOLL_WRITE != 0, interest.contains(.write) { events.insert(.writable) }
            if mask & CQMP_EPOLL_HANGUP != 0 {
                events.insert(.hangup)
                if interest.contains(.read) { events.insert(.readable) }
            }
            if mask & CQMP_EPOLL_ERROR != 0 { events.insert(.error) }
            if events.isEmpty { continue }
            registration.handler(events)
        }
        if !heap.isEmpty { fireDueTimers() }
    }

    @inline(never)
    private func nextTimeoutNanoseconds() -> Int64 {
        while let top = heap.first, timers[top.id] == nil {
            _ = heapPop()
        }
        guard let top = heap.first else { return -1 }
        let remaining = ContinuousClock.now.duration(to: top.deadline)
        if remaining <= .zero { return 0 }
        let (seconds, attoseconds) = remaining.components
        // Round up so a timer never fires early.
        let nanos = seconds * 1_000_000_000 + (attoseconds + 999_999_999) / 1_000_000_000
        return max(nanos, 0)
    }

    @inline(never)
    private func fireDueTimers() {
        let now = ContinuousClock.now
        // Timers scheduled by timers fire on a later round, so a zero-delay re-arm cannot starve I/O.
        let limit = nextID
        while let top = heap.first, top.deadline <= now, top.id < limit {
            _ = heapPop()
            if let body = timers.removeValue(forKey: top.id) {
                body()
            }
        }
    }

    private func drainWakeChannel() {
        let (jobs, stop) = handle.channel.drain()
        for job in jobs {
            job(self)
        }
        if stop {
            stopFlag = true
        }
    }

    /// Drops every registration, timer and pending job (breaking reference cycles through handlers).
    /// Used when a reactor thread ends. Descriptors are not closed: objects owning them close them
    /// in their `deinit` once released.
    func dropAll() {
        handle.channel.close()
        let wake = wakeRegistration.flatMap { registration($0) }
        for case let registration? in slots where registration !== wake {
            registration.isActive = false
            registration.interest = []
            updateKernel(registration)
        }
        slots = Array(repeating: nil, count: slots.count)
        if let wake { slots[wake.id.slot] = wake }
        freeSlots = slots.indices.reversed().filter { slots[$0] == nil }
        liveRegistrations = wake == nil ? 0 : 1
        timers.removeAll()
        heap.removeAll()
    }

    // MARK: Heap

    private func heapPush(_ entry: HeapEntry) {
        heap.append(entry)
        var child = heap.count - 1
        while child > 0 {
            let parent = (child - 1) / 2
            if heap[child] < heap[parent] {
                heap.swapAt(child, parent)
                child = parent
            } else {
                break
            }
        }
    }

    private func heapPop() -> HeapEntry? {
        guard !heap.isEmpty else { return nil }
        let top = heap[0]
        let last = heap.removeLast()
        if !heap.isEmpty {
            heap[0] = last
            var parent = 0
            while true {
                let left = 2 * parent + 1
                let right = left + 1
                var smallest = parent
                if left < heap.count && heap[left] < heap[smallest] { smallest = left }
                if right < heap.count && heap[right] < heap[smallest] { smallest = right }
                if smallest == parent { break }
                heap.swapAt(parent, smallest)
                parent = smallest
            }
        }
        return top
    }
}
