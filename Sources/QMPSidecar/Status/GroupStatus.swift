import QMPWire

/// One tracked IOMMU group as `__org.qmp-sidecar_query-vfio-groups` reports it (docs/GROUP-EVENTS.md
/// "Query command").
public struct GroupStatus: Equatable, Sendable {
    public struct Device: Equatable, Sendable {
        /// The qdev id, nil for a device without one.
        public var id: String?
        public var qomPath: String
        public var driver: String
        /// The PCI address (or mdev uuid) in sysfs.
        public var sysfs: String
        /// The iommufd cdev (`/dev/vfio/devices/vfioX`), if the device has one.
        public var cdev: String?

        /// The id where there is one, else the QOM path.
        public var name: String { id ?? qomPath }
    }

    public struct Holder: Equatable, Sendable {
        public var pid: Int64
        public var comm: String
    }

    public var group: Int64
    /// `attached`, `detaching`, `timed-out` or `released`.
    public var state: String
    /// Guest devices still in the guest.
    public var devices: [Device]
    /// Devices deleted since the group was last released, in deletion order.
    public var deleted: [String]
    /// The group's members in sysfs.
    public var members: [String]
    public var holders: [Holder]
    /// Holders of other users, not named to this client (``HolderDisclosure``).
    public var hiddenHolders: Int64

    /// The groups of a query reply's `return` value; members that are missing or of another type
    /// are taken as empty, so a newer sidecar with more members still reads.
    public static func parse(_ value: JSONValue) -> [GroupStatus] {
        (value.arrayValue ?? []).map { entry in
            GroupStatus(
                group: entry["group"]?.int64Value ?? -1,
                state: entry["state"]?.stringValue ?? "?",
                devices: (entry["devices"]?.arrayValue ?? []).map { device in
                    Device(
                        id: device["id"]?.stringValue, qomPath: device["qom-path"]?.stringValue ?? "?",
                        driver: device["driver"]?.stringValue ?? "?", sysfs: device["sysfs"]?.stringValue ?? "?",
                        cdev: device["cdev"]?.stringValue)
                },
                deleted: (entry["deleted"]?.arrayValue ?? []).compactMap(\.stringValue),
                members: (entry["members"]?.arrayValue ?? []).compactMap(\.stringValue),
                holders: (entry["holders"]?.arrayValue ?? []).map { holder in
                    Holder(pid: holder["pid"]?.int64Value ?? -1, comm: holder["comm"]?.stringValue ?? "?")
                },
                hiddenHolders: entry["hidden-holders"]?.int64Value ?? 0)
        }
    }
}
