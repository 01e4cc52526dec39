/// What the VFIO release driver has done: plain counters and values, read on the reactor thread (for
/// metrics exporters, tests and benchmarks).
public struct VFIOReleaseStatistics: Sendable, Hashable {
    /// `IN_OPEN` events on watched nodes.
    public var openEvents = 0
    /// Last-close events on watched nodes.
    public var closeEvents = 0
    /// inotify queue overflows (every count became unknown).
    public var overflows = 0
    /// Fallback: full scans of QEMU's fd directory (each in bounded steps when learning).
    public var qemuFullScans = 0
    /// Fallback: `stat`s of fd numbers a scan found QEMU using.
    public var knownFDChecks = 0
    /// Fallback: scans of every process's fds (also the one naming holders in a timeout).
    public var allProcessScans = 0
    /// Backoff polls that fired (only while a detaching group's counts are unknown).
    public var pollsFired = 0
    /// `GROUP_RELEASED` events emitted.
    public var releases = 0
    /// `GROUP_RELEASE_TIMEOUT` events emitted.
    public var releaseTimeouts = 0
    /// `CLOCK_MONOTONIC` ns when the last close event was handled.
    public var lastCloseEventAt: UInt64 = 0
    /// `CLOCK_MONOTONIC` ns when the last `GROUP_RELEASED` was handed to the clients.
    public var lastReleaseAt: UInt64 = 0
    /// From the released group's last close event to its `GROUP_RELEASED`, for the last release that
    /// saw one (includes waiting for `DEVICE_DELETED` when the close came first).
    public var lastReleaseLatencyNanoseconds: UInt64 = 0

    public init() {}

    /// Every fallback scan (of QEMU's fds or of all processes).
    public var fallbackScans: Int { qemuFullScans + allProcessScans }
}
