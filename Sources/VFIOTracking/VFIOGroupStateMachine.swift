/// The per-group release logic: attached → detaching → released (or timed out, still tracked).
///
/// Pure: inputs are `mutating func`s, outputs ``Action``s the I/O driver performs; the results of checks
/// it asks for come back as inputs (``qemuChecked(group:holds:now:)``,
/// ``processesScanned(group:anyHolder:now:)``). Times are nanoseconds of a monotonic clock.
///
/// A group is released when every guest device of it had its `DEVICE_DELETED`, QEMU holds no fd on
/// its nodes, and the open file QEMU used is closed everywhere. The last point is *witnessed* by an
/// inotify close event seen while QEMU holds nothing (the event fires only on the last reference of an
/// open file), or, where no such event comes, decided by a scan of all processes. Works with both event
/// orders: a close before `DEVICE_DELETED` (QEMU 2.11+) leaves a witness, and the release follows the
/// event at once. When QEMU holds nothing and no close was witnessed, one grace poll lets a queued close
/// event arrive before the first all-process scan (which costs one `stat` per fd of every process).
///
/// When the driver counts the nodes' open file descriptions (``OpenDescriptionCount``), its answer is
/// *certain*: zero open descriptions is the whole truth (nobody holds anything, no witness needed),
/// and a node still open needs no poll — its close event will come. Polls and scans are then only the
/// fallback for counts that are unknown.
public struct VFIOGroupStateMachine: Sendable {
    /// Where a group is.
    public enum Phase: String, Sendable, Hashable {
        /// At least one guest device of the group is in the guest.
        case attached
        /// Every guest device had its `DEVICE_DELETED`; waiting for the nodes to be free.
        case detaching
        /// Free: safe to rebind.
        case released
    }

    /// What the I/O driver must do.
    public enum Action: Sendable, Hashable {
        /// Full scan of QEMU's fds for the group's nodes, remembering the fd numbers; then call
        /// ``holdersLearned(group:qemuHolds:)``.
        case learnQEMUHolders(group: Int)
        /// Add inotify close watches on the group's nodes (as QEMU sees them).
        case watchNodes(group: Int)
        /// Remove them.
        case unwatchNodes(group: Int)
        /// Re-check whether QEMU still holds the group (open-description counts; known fds or a scan
        /// when they are unknown); then call ``qemuChecked(group:holds:certain:now:)``.
        case checkQEMU(group: Int)
        /// Scan all processes for fds on the group's nodes; then call ``processesScanned(group:anyHolder:now:)``.
        case scanAllProcesses(group: Int)
        /// Arm the backoff poll; on expiry call ``pollFired(group:now:)``.
        case schedulePoll(group: Int, afterNanoseconds: UInt64)
        /// Disarm it.
        case cancelPoll(group: Int)
        /// Arm the release timeout; on expiry call ``timeoutFired(group:now:)``.
        case scheduleTimeout(group: Int, afterNanoseconds: UInt64)
        /// Disarm it.
        case cancelTimeout(group: Int)
        /// Emit `GROUP_RELEASED` (after any held `DEVICE_DELETED` of the group).
        case emitReleased(group: Int, devices: [String], waitedNanoseconds: UInt64)
        /// Emit `GROUP_RELEASE_TIMEOUT` naming the current holders.
        case emitTimeout(group: Int, devices: [String], waitedNanoseconds: UInt64)
        /// The group is no longer tracked (QEMU exited while it was attached): drop held state.
        case forget(group: Int)
    }

    /// A read-only view of one group, for queries and tests.
    public struct GroupView: Sendable, Hashable {
        public var number: Int
        public var phase: Phase
        /// Whether `GROUP_RELEASE_TIMEOUT` was emitted in this detaching period.
        public var timedOut: Bool
        /// QOM paths of the guest devices still in the guest.
        public var guestDevices: [String]
        /// Names of the devices deleted since the last release, in deletion order.
        public var deletedDevices: [String]
        /// Last known: does QEMU hold an fd on the group's nodes?
        public var qemuHolds: Bool
        /// Has the last close of QEMU's open file been witnessed?
        public var closeWitnessed: Bool
    }

    private struct Group {
        var phase: Phase = .attached
        var timedOut = false
        var guestDevices: [String] = []
        var deleted: [String] = []
        var qemuHolds = false
        var witnessed = false
        var closePending = false
        var detachingSince: UInt64 = 0
        var pollArmed = false
        var timeoutArmed = false
        var pollDelay: UInt64 = 0
        var watched = false
        /// Whether the one grace poll before the first all-process scan of this detaching period ran.
        var graceUsed = false
    }

    private var groups: [Int: Group] = [:]
    private var qemuGone = false
    private let releaseTimeout: UInt64
    private let pollInitial: UInt64
    private let pollMaximum: UInt64

    /// - Parameters:
    ///   - releaseTimeoutNanoseconds: `--release-timeout`.
    ///   - pollInitialNanoseconds: first backoff poll interval while detaching.
    ///   - pollMaximumNanoseconds: its cap.
    public init(
        releaseTimeoutNanoseconds: UInt64, pollInitialNanoseconds: UInt64 = 1_000_000,
        pollMaximumNanoseconds: UInt64 = 1_000_000_000
    ) {
        self.releaseTimeout = releaseTimeoutNanoseconds
        self.pollInitial = max(1, pollInitialNanoseconds)
        self.pollMaximum = max(self.pollInitial, pollMaximumNanoseconds)
    }

    /// Builds the machine from a ``VFIOConfiguration``.
    public init(configuration: VFIOConfiguration) {
        self.init(
            releaseTimeoutNanoseconds: configuration.releaseTimeout.nanosecondsValue,
            pollInitialNanoseconds: configuration.pollInitialInterval.nanosecondsValue,
            pollMaximumNanoseconds: configuration.pollMaximumInterval.nanosecondsValue
        )
    }

    // MARK: Inputs

    /// A guest device of `group` is in the guest (successful `device_add`, or discovered).
    public mutating func deviceAttached(_ qomPath: String, group number: Int) -> [Action] {
        var actions: [Action] = []
        var group = groups[number] ?? Group()
        if group.phase != .attached {
            // A new period (after release) or a re-add while detaching: back to attached.
            if group.phase == .detaching {
                if group.pollArmed { actions.append(.cancelPoll(group: number)) }
                if group.timeoutArmed { actions.append(.cancelTimeout(group: number)) }
            }
            group.phase = .attached
            group.timedOut = false
            group.pollArmed = false
            group.timeoutArmed = false
        }
        if !group.guestDevices.contains(qomPath) { group.guestDevices.append(qomPath) }
        if !group.watched {
            group.watched = true
            actions.append(.watchNodes(group: number))
        }
        actions.append(.learnQEMUHolders(group: number))
        groups[number] = group
        return actions
    }

    /// Result of ``Action/learnQEMUHolders(group:)``.
    public mutating func holdersLearned(group number: Int, qemuHolds: Bool) -> [Action] {
        guard var group = groups[number] else { return [] }
        group.qemuHolds = qemuHolds
        if qemuHolds {
            group.witnessed = false
            group.closePending = false
        }
        groups[number] = group
        return []
    }

    /// `DEVICE_DELETED` for a tracked device of `group`.
    ///
    /// - Parameter displayName: what `GROUP_RELEASED` reports (id, else QOM path).
    public mutating func deviceDeleted(_ qomPath: String, displayName: String, group number: Int, now: UInt64)
        -> [Action]
    {
        guard var group = groups[number], let index = group.guestDevices.firstIndex(of: qomPath) else { return [] }
        group.guestDevices.remove(at: index)
        group.deleted.append(displayName)
        guard group.guestDevices.isEmpty else {
            groups[number] = group
            return []
        }
        group.phase = .detaching
        group.timedOut = false
        group.detachingSince = now
        group.pollDelay = pollInitial
        group.graceUsed = false
        group.timeoutArmed = true
        groups[number] = group
        var actions: [Action] = [.scheduleTimeout(group: number, afterNanoseconds: releaseTimeout)]
        actions += qemuGone ? qemuChecked(group: number, holds: false, now: now) : [.checkQEMU(group: number)]
        return actions
    }

    /// An inotify close event on one of the group's nodes.
    ///
    /// - Parameter lastClose: the close left that node with no open description for sure (an
    ///   exclusive legacy group node, or an exact count now at zero). A close of a node whose count is
    ///   unknown (another process may hold a description of its own) only prompts a check: QEMU then
    ///   holding nothing is not enough, a scan of every process decides.
    public mutating func closeObserved(group number: Int, lastClose: Bool = true, now: UInt64) -> [Action] {
        guard var group = groups[number], group.phase != .released else { return [] }
        if lastClose { group.closePending = true }
        groups[number] = group
        return qemuGone ? qemuChecked(group: number, holds: false, now: now) : [.checkQEMU(group: number)]
    }

    /// Result of ``Action/checkQEMU(group:)``.
    ///
    /// - Parameters:
    ///   - holds: QEMU holds the group's nodes (certain: some process holds an open description of them).
    ///   - certain: the answer comes from exact open-description counts, not from a look at QEMU's fds.
    public mutating func qemuChecked(group number: Int, holds: Bool, certain: Bool = false, now: UInt64) -> [Action] {
        guard var group = groups[number] else { return [] }
        // With exact counts a description still open is open whether or not QEMU lives (a copy elsewhere).
        let holds = holds && (certain || !qemuGone)
        group.qemuHolds = holds
        if holds {
            group.witnessed = false
        } else if group.closePending || certain {
            group.witnessed = true
        }
        group.closePending = false
        groups[number] = group
        guard group.phase == .detaching else { return [] }
        if holds { return certain ? [] : armPoll(number) }
        if group.witnessed { return release(number, now: now) }
        // QEMU holds nothing but no last close was seen. Its close event may still be queued behind the
        // message that brought us here (same poll round): give it one short poll before paying for a
        // scan of every process.
        if !group.graceUsed {
            groups[number]?.graceUsed = true
            return armPoll(number)
        }
        return [.scanAllProcesses(group: number)]
    }

    /// Result of ``Action/scanAllProcesses(group:)``: does any process (QEMU included) hold a node?
    public mutating func processesScanned(group number: Int, anyHolder: Bool, now: UInt64) -> [Action] {
        guard let group = groups[number], group.phase == .detaching else { return [] }
        return anyHolder ? armPoll(number) : release(number, now: now)
    }

    /// The backoff poll expired.
    public mutating func pollFired(group number: Int, now: UInt64) -> [Action] {
        guard var group = groups[number] else { return [] }
        group.pollArmed = false
        guard group.phase == .detaching else {
            groups[number] = group
            return []
        }
        group.pollDelay = min(pollMaximum, group.pollDelay * 2)
        groups[number] = group
        return qemuGone ? qemuChecked(group: number, holds: false, now: now) : [.checkQEMU(group: number)]
    }

    /// The release timeout expired.
    public mutating func timeoutFired(group number: Int, now: UInt64) -> [Action] {
        guard var group = groups[number] else { return [] }
        group.timeoutArmed = false
        guard group.phase == .detaching, !group.timedOut else {
            groups[number] = group
            return []
        }
        group.timedOut = true
        groups[number] = group
        return [
            .emitTimeout(
                group: number, devices: group.deleted, waitedNanoseconds: now &- group.detachingSince)
        ]
    }

    /// QEMU exited: it holds nothing any more (copies elsewhere still count). Attached groups are
    /// forgotten (QEMU sends no `DEVICE_DELETED` on exit); detaching ones are decided now.
    public mutating func qemuExited(now: UInt64) -> [Action] {
        qemuGone = true
        var actions: [Action] = []
        for number in groups.keys.sorted() {
            guard let group = groups[number] else { continue }
            switch group.phase {
            case .attached:
                groups[number] = nil
                if group.watched { actions.append(.unwatchNodes(group: number)) }
                actions.append(.forget(group: number))
            case .detaching:
                actions += qemuChecked(group: number, holds: false, now: now)
            case .released:
                break
            }
        }
        return actions
    }

    // MARK: Queries

    /// The group's view, if tracked.
    public func view(of number: Int) -> GroupView? {
        groups[number].map {
            GroupView(
                number: number, phase: $0.phase, timedOut: $0.timedOut, guestDevices: $0.guestDevices,
                deletedDevices: $0.deleted, qemuHolds: $0.qemuHolds, closeWitnessed: $0.witnessed)
        }
    }

    /// All tracked groups, by number.
    public var views: [GroupView] { groups.keys.sorted().compactMap(view(of:)) }

    // MARK: Private

    private mutating func armPoll(_ number: Int) -> [Action] {
        guard var group = groups[number], !group.pollArmed else { return [] }
        group.pollArmed = true
        groups[number] = group
        return [.schedulePoll(group: number, afterNanoseconds: group.pollDelay)]
    }

    private mutating func release(_ number: Int, now: UInt64) -> [Action] {
        guard var group = groups[number] else { return [] }
        var actions: [Action] = []
        if group.pollArmed { actions.append(.cancelPoll(group: number)) }
        if group.timeoutArmed { actions.append(.cancelTimeout(group: number)) }
        if group.watched { actions.append(.unwatchNodes(group: number)) }
        actions.append(
            .emitReleased(group: number, devices: group.deleted, waitedNanoseconds: now &- group.detachingSince))
        group.phase = .released
        group.pollArmed = false
        group.timeoutArmed = false
        group.watched = false
        group.deleted = []
        group.witnessed = false
        group.closePending = false
        groups[number] = group
        return actions
    }
}
