import QMPWire

/// `--native-group-events`: the mock behaves like a QEMU with contrib/qapi/vfio-group-events.json
/// applied — it emits `GROUP_RELEASED` itself once the last device of a group is deleted and its own
/// group descriptor is closed, and `GROUP_RELEASE_TIMEOUT` when that close does not come in time.
/// In QEMU only QEMU's own hold counts: a second holder does not delay the event.
extension MockMachine {
    /// A device of `group` had its `DEVICE_DELETED`.
    mutating func groupDeviceDeleted(_ device: Device, group: Int, now: QMPTimestamp, actions: inout [MockAction]) {
        guard configuration.nativeGroupEvents else { return }
        groups[group, default: Group()].deleted.append(device.id ?? device.path)
        groups[group]?.lastDeleted = now
        groupProgressed(group, now: now, actions: &actions)
    }

    /// A device event or a finalize of `group`: released once no device of it is left and its
    /// descriptor is closed; else, with every device gone, the timeout runs.
    mutating func groupProgressed(_ group: Int, now: QMPTimestamp, actions: inout [MockAction]) {
        guard configuration.nativeGroupEvents, let entry = groups[group], entry.members.isEmpty,
            !entry.deleted.isEmpty, !devices.contains(where: { $0.device.group == group })
        else { return }
        guard entry.fd == nil else {
            if !entry.timeoutArmed {
                groups[group]?.timeoutArmed = true
                schedule(
                    .groupReleaseTimeout(group: group), after: Int64(configuration.nativeReleaseTimeout * 1e9),
                    actions: &actions)
            }
            return
        }
        groups[group] = nil
        broadcast(
            event: "GROUP_RELEASED",
            data: .object(Self.commonMembers(group, entry, now: now)), now: now, actions: &actions)
    }

    /// `--release-timeout` passed with the group still open.
    mutating func groupReleaseTimeoutFired(_ group: Int, now: QMPTimestamp, actions: inout [MockAction]) {
        guard let entry = groups[group], entry.fd != nil, entry.members.isEmpty else { return }
        let holder = configuration.holder
        let holders = JSONValue.array([
            .object([JSONMember("pid", .integer(holder.pid)), JSONMember("comm", .string(holder.comm))])
        ])
        broadcast(
            event: "GROUP_RELEASE_TIMEOUT",
            data: .object(Self.commonMembers(group, entry, now: now) + [JSONMember("holders", holders)]), now: now,
            actions: &actions)
    }

    /// What both group events begin with: the group, its deleted devices, the wait since the last one.
    private static func commonMembers(_ group: Int, _ entry: Group, now: QMPTimestamp) -> [JSONMember] {
        [
            JSONMember("group", .integer(Int64(group))),
            JSONMember("devices", .array(entry.deleted.map(JSONValue.string))),
            JSONMember("waited-ms", .integer(milliseconds(from: entry.lastDeleted, to: now))),
        ]
    }

    private static func milliseconds(from start: QMPTimestamp?, to end: QMPTimestamp) -> Int64 {
        guard let start else { return 0 }
        return max(0, (end.seconds - start.seconds) * 1000 + (end.microseconds - start.microseconds) / 1000)
    }
}
