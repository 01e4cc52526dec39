import Logging
import QMPRuntime
import QMPWire
import VFIOTracking

/// The fallback where open-description counts are unknown: learn QEMU's fd numbers with a full scan
/// of its fd directory (in bounded steps, off the hot path), re-check them with one `stat` each, and
/// scan every process only when no close was witnessed or to name holders in a timeout.
extension VFIOReleaseDriver {
    /// fds `stat`ed per loop round while learning (~4 ms).
    static let learnStep = 1024

    func scheduleLearn() {
        guard learnTimer == nil, !stopped else { return }
        learnTimer = reactor.schedule(after: .zero) { [weak self] in self?.learnPending() }
    }

    /// One full scan of QEMU's fds for every group waiting to learn (or to be checked), then the results
    /// to the machine.
    ///
    /// The scan runs in steps of ``learnStep`` fds, one step per loop round, so a QEMU holding 10k fds
    /// (30–45 ms of `stat`s) does not stall client traffic; groups added meanwhile wait for the next.
    func learnPending() {
        learnTimer = nil
        if learnScan == nil {
            let groups = pendingLearn.sorted()
            pendingLearn.removeAll()
            guard !groups.isEmpty else { return }
            let identities = groups.reduce(into: Set<NodeIdentity>()) {
                $0.formUnion(watches.groups[$1]?.identities ?? [])
            }
            guard let pid = livePID, !identities.isEmpty else {
                deliverLearned(groups, found: [:])
                return
            }
            statistics.qemuFullScans += 1
            guard let scan = scanner.startScan(of: pid, matching: identities) else {
                if scanner.processExists(pid) && !warnedUnreadable {
                    warnedUnreadable = true
                    logger.warning(
                        "cannot read QEMU's fd table: run qmp-sidecar as root or as QEMU's user",
                        metadata: ["path": "\(configuration.procRoot)/\(pid)/fd"])
                }
                deliverLearned(groups, found: [:])
                return
            }
            learnScan = (scan, groups)
        }
        guard let (scan, groups) = learnScan else { return }
        guard scan.step(maxEntries: Self.learnStep) else {
            scheduleLearn()
            return
        }
        learnScan = nil
        deliverLearned(groups, found: scan.found)
        if !pendingLearn.isEmpty { scheduleLearn() }
    }

    private func deliverLearned(_ groups: [Int], found: [Int32: NodeIdentity]) {
        var actions: [VFIOGroupStateMachine.Action] = []
        for group in groups {
            guard watches.groups[group] != nil else {
                checkAfterLearning.remove(group)
                continue
            }
            let identities = watches.groups[group]?.identities ?? []
            let mine = found.filter { identities.contains($0.value) }
            if checkAfterLearning.remove(group) != nil {
                watches.scanned(group: group, qemuFDs: mine)
                actions += machine.qemuChecked(group: group, holds: !mine.isEmpty, now: Self.monotonicNow())
                continue
            }
            // Nothing found while learning: no fd numbers to re-check later, a scan decides then.
            if mine.isEmpty {
                watches.setQEMUFDs(nil, group: group)
            } else {
                watches.scanned(group: group, qemuFDs: mine)
            }
            actions += machine.holdersLearned(group: group, qemuHolds: !mine.isEmpty)
        }
        run(actions)
    }

    /// Does QEMU hold `group`, from the learned fd numbers (one `stat` each)? Nil when they are unknown
    /// or stale (a known number now names another file): then only a full scan can tell.
    func qemuHoldsByKnownFDs(_ group: Int) -> Bool? {
        guard let pid = livePID, watches.groups[group] != nil else { return false }
        guard let known = watches.groups[group]?.qemuFDs else { return nil }
        statistics.knownFDChecks += known.count
        let (still, stale) = scanner.recheck(pid: pid, fds: known)
        guard !still.isEmpty || !stale else {
            watches.setQEMUFDs(nil, group: group)
            return nil
        }
        watches.setQEMUFDs(still, group: group)
        return !still.isEmpty
    }

    /// Does any process hold `group`? From the counts when they are exact, else a scan of every process.
    func anyHolder(_ group: Int) -> Bool {
        if let held = watches.certainlyHeld(group: group) { return held }
        statistics.allProcessScans += 1
        let holders = scanner.allHolders(of: watches.groups[group]?.identities ?? [])
        if let pid = livePID, holders.contains(where: { $0.pid == pid }) {
            watches.setQEMUFDs(nil, group: group)  // stale: QEMU holds something we did not know
        }
        watches.scanned(group: group, qemuFDs: nil, anyHolder: !holders.isEmpty)
        return !holders.isEmpty
    }
}
