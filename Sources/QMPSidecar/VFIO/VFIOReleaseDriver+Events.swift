import Logging
import QMPWire
import VFIOTracking

#if canImport(Glibc)
import Glibc
#endif

/// What the driver tells the clients: `GROUP_RELEASED`, `GROUP_RELEASE_TIMEOUT`, held `DEVICE_DELETED`
/// events, and the answer to the query command.
extension VFIOReleaseDriver {
    func emitReleased(_ group: Int, devices: [String], waited: UInt64) {
        flushHeld(group)
        let closed = lastCloseAt.removeValue(forKey: group)
        releasing = (group, closed.map { Self.monotonicNow() &- $0 })
        defer { releasing = nil }
        // The event first, the log line after it: a client need not wait for the log's write.
        defer {
            logger.info(
                "IOMMU group released",
                metadata: ["group": "\(group)", "devices": "\(devices)", "waited-ns": "\(waited)"])
        }
        broadcast(
            configuration.releasedEventName,
            [
                JSONMember("group", .integer(Int64(group))),
                JSONMember("devices", .array(devices.map(JSONValue.string))),
                JSONMember("waited-ms", .integer(Int64(waited / 1_000_000))),
            ])
        statistics.releases += 1
        statistics.lastReleaseAt = Self.monotonicNow()
        if let latency = releasing?.latency { statistics.lastReleaseLatencyNanoseconds = latency }
    }

    /// Names the holders with a scan of every process: the one place a scan is worth its cost (an
    /// operator reads it), and it happens once per timeout.
    func emitTimeout(_ group: Int, devices: [String], waited: UInt64) {
        statistics.allProcessScans += 1
        statistics.releaseTimeouts += 1
        let holders = scanner.allHolders(of: watches.groups[group]?.identities ?? identities(ofUnwatched: group))
        // The operator's log names every holder; each client only those it could see in /proc itself.
        logger.warning(
            "IOMMU group not released in time",
            metadata: ["group": "\(group)", "holders": "\(holders.map { "\($0.pid)(\($0.comm))" })"])
        let at = QMPTimestamp.now()
        commander?.broadcastEvent { disclosure in
            let shown = disclosure.split(holders) { $0.owner }.shown
            return QMPBuilder.event(
                name: configuration.timeoutEventName,
                data: .object([
                    JSONMember("group", .integer(Int64(group))),
                    JSONMember("devices", .array(devices.map(JSONValue.string))),
                    JSONMember("waited-ms", .integer(Int64(waited / 1_000_000))),
                    JSONMember("holders", .array(shown.map(Self.holderJSON))),
                ]), at: at)
        }
    }

    func flushHeld(_ group: Int) {
        guard let lines = heldEvents.removeValue(forKey: group) else { return }
        for line in lines { commander?.broadcastEvent(line) }
    }

    private func broadcast(_ name: String, _ members: [JSONMember]) {
        commander?.broadcastEvent(QMPBuilder.event(name: name, data: .object(members), at: .now()))
    }

    private func identities(ofUnwatched group: Int) -> Set<NodeIdentity> {
        Set([NodeIdentity(path: sysfs.groupNodePath(group))].compactMap { $0 })
    }

    static func holderJSON(_ holder: NodeHolder) -> JSONValue {
        .object([JSONMember("pid", .integer(Int64(holder.pid))), JSONMember("comm", .string(holder.comm))])
    }

    /// The query command's answer, from what is already known: no scan, so it never stalls the
    /// reactor. `holders` names QEMU when it was last known to hold the group and the client may be
    /// told (``HolderDisclosure``), else `hidden-holders` counts it; `open-descriptions` is each
    /// node's count (null where unknown).
    func queryResult(disclosure: HolderDisclosure) -> JSONValue {
        let qemu = livePID.map {
            NodeHolder(pid: $0, comm: scanner.comm(of: $0), fds: [], owner: scanner.owner(of: $0))
        }
        return .array(
            machine.views.map { view in
                let state = view.timedOut ? "timed-out" : view.phase.rawValue
                let devices = registry.devices(inGroup: view.number).map { device -> JSONValue in
                    var members = [
                        JSONMember("qom-path", .string(device.qomPath)),
                        JSONMember("driver", .string(device.driver)),
                        JSONMember("sysfs", .string(device.resolved.name)),
                    ]
                    if let id = device.id { members.insert(JSONMember("id", .string(id)), at: 0) }
                    if let cdev = device.resolved.cdevNode { members.append(JSONMember("cdev", .string(cdev))) }
                    return .object(members)
                }
                let (holders, hidden) = disclosure.split(view.qemuHolds ? (qemu.map { [$0] } ?? []) : []) { $0.owner }
                let counts = watches.counts(of: view.number).map { count -> JSONValue in
                    if case .exact(let open) = count.knowledge { .integer(Int64(open)) } else { .null }
                }
                return .object([
                    JSONMember("group", .integer(Int64(view.number))),
                    JSONMember("state", .string(state)),
                    JSONMember("devices", .array(devices)),
                    JSONMember("deleted", .array(view.deletedDevices.map(JSONValue.string))),
                    JSONMember("members", .array(sysfs.members(ofGroup: view.number).map(JSONValue.string))),
                    JSONMember("holders", .array(holders.map(Self.holderJSON))),
                    JSONMember("hidden-holders", .integer(Int64(hidden))),
                    JSONMember("open-descriptions", .array(counts)),
                ])
            })
    }
}
