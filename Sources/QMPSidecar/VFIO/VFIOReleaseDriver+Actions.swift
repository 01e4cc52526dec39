import QMPRuntime
import VFIOTracking

/// Performing the group state machine's actions: watches, checks (counts first, the fallback where
/// they are unknown), timers, events.
extension VFIOReleaseDriver {
    func run(_ actions: [VFIOGroupStateMachine.Action]) {
        guard !stopped else { return }
        queue += actions
        guard !performing else { return }
        performing = true
        defer { performing = false }
        while !queue.isEmpty {
            perform(queue.removeFirst())
        }
        scheduleDeferredUnwatch()
    }

    /// Watches go after the events are out: removing one (`inotify_rm_watch`) is a system call the
    /// client need not wait for, and an event queued by the proxy is written only when the reactor
    /// round's handler returns. A zero-delay timer runs at the end of this same round, after that write.
    func scheduleDeferredUnwatch() {
        guard !deferredUnwatch.isEmpty, !unwatchScheduled else { return }
        unwatchScheduled = true
        reactor.schedule(after: .zero) { [weak self] in
            guard let self else { return }
            self.unwatchScheduled = false
            let unwatched = self.deferredUnwatch
            self.deferredUnwatch = []
            for group in unwatched where self.machine.view(of: group)?.phase != .attached {
                // A `device_add` forwarded meanwhile watches the group again for its own open.
                guard !self.pendingAdds.contains(where: { $0.device?.resolved.group == group }) else { continue }
                self.watches.remove(group: group)
            }
        }
    }

    func perform(_ action: VFIOGroupStateMachine.Action) {
        switch action {
        case .learnQEMUHolders(let group):
            addNodes(group, beforeUse: false)
            if let held = watches.certainlyHeld(group: group) {
                queue += machine.holdersLearned(group: group, qemuHolds: held)
            } else {
                // Fallback, batched: devices discovered in one loop round share one scan of QEMU's fds.
                pendingLearn.insert(group)
                scheduleLearn()
            }
        case .watchNodes(let group):
            addNodes(group, beforeUse: false)
        case .unwatchNodes(let group):
            deferredUnwatch.append(group)
        case .checkQEMU(let group):
            if let held = watches.certainlyHeld(group: group) {
                queue += machine.qemuChecked(group: group, holds: held, certain: true, now: Self.monotonicNow())
            } else if let held = qemuHoldsByKnownFDs(group) {
                queue += machine.qemuChecked(group: group, holds: held, now: Self.monotonicNow())
            } else {
                // Nothing known: a full scan of QEMU's fds, in bounded steps; the answer comes with it.
                checkAfterLearning.insert(group)
                pendingLearn.insert(group)
                scheduleLearn()
            }
        case .scanAllProcesses(let group):
            queue += machine.processesScanned(group: group, anyHolder: anyHolder(group), now: Self.monotonicNow())
        case .schedulePoll(let group, let delay):
            if let timer = pollTimers.removeValue(forKey: group) { reactor.cancel(timer) }
            pollTimers[group] = reactor.schedule(after: .nanoseconds(Int64(delay))) { [weak self] in
                guard let self else { return }
                self.pollTimers[group] = nil
                self.statistics.pollsFired += 1
                self.run(self.machine.pollFired(group: group, now: Self.monotonicNow()))
            }
        case .cancelPoll(let group):
            if let timer = pollTimers.removeValue(forKey: group) { reactor.cancel(timer) }
        case .scheduleTimeout(let group, let delay):
            if let timer = timeoutTimers.removeValue(forKey: group) { reactor.cancel(timer) }
            timeoutTimers[group] = reactor.schedule(after: .nanoseconds(Int64(min(delay, UInt64(Int64.max))))) {
                [weak self] in
                guard let self else { return }
                self.timeoutTimers[group] = nil
                self.run(self.machine.timeoutFired(group: group, now: Self.monotonicNow()))
            }
        case .cancelTimeout(let group):
            if let timer = timeoutTimers.removeValue(forKey: group) { reactor.cancel(timer) }
        case .emitReleased(let group, let devices, let waited):
            emitReleased(group, devices: devices, waited: waited)
        case .emitTimeout(let group, let devices, let waited):
            emitTimeout(group, devices: devices, waited: waited)
        case .forget(let group):
            flushHeld(group)
            deferredUnwatch.append(group)
            lastCloseAt[group] = nil
            for device in registry.devices(inGroup: group) { _ = registry.untrack(qomPath: device.qomPath) }
        }
    }

    /// The nodes of every tracked device of `group` (a discovered device's watch starts unknown).
    func addNodes(_ group: Int, beforeUse: Bool) {
        var paths = [sysfs.groupNodePath(group)]
        for device in registry.devices(inGroup: group) {
            for path in watches.nodePaths(of: device.resolved) where !paths.contains(path) { paths.append(path) }
        }
        watches.add(group: group, paths: paths, qemuPID: livePID, beforeUse: beforeUse)
    }

    func closeEvent(_ group: Int, lastClose: Bool) {
        let now = Self.monotonicNow()
        statistics.closeEvents += 1
        statistics.lastCloseEventAt = now
        lastCloseAt[group] = now
        run(machine.closeObserved(group: group, lastClose: lastClose, now: now))
    }

    /// Events were lost: every count is unknown. Detaching groups are re-checked now through the
    /// fallback (which is what it is for); attached ones learn QEMU's fds in bounded steps.
    func overflowed() {
        statistics.overflows += 1
        for view in machine.views where view.phase != .released {
            watches.setQEMUFDs(nil, group: view.number)
            if view.phase == .detaching {
                run(machine.closeObserved(group: view.number, lastClose: false, now: Self.monotonicNow()))
            } else {
                pendingLearn.insert(view.number)
                scheduleLearn()
            }
        }
    }

}
