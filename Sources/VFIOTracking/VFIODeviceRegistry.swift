import QMPWire

/// What a `device_add` (or a discovered QOM child) says about a device, before sysfs resolution.
public struct VFIODeviceDescription: Sendable, Hashable {
    /// The QOM type / `driver` argument, e.g. `vfio-pci`.
    public var driver: String
    /// The `id` argument, when given.
    public var id: String?
    /// QEMU's `host` property (`dddd:bb:ss.f`); nil when absent or `ffff:ff:ff.f`.
    public var host: String?
    /// QEMU's `sysfsdev` property; nil when absent or empty.
    public var sysfsdev: String?

    public init(driver: String, id: String? = nil, host: String? = nil, sysfsdev: String? = nil) {
        self.driver = driver
        self.id = id
        self.host = (host == nil || host == PCIAddress.unset || host == "") ? nil : host
        self.sysfsdev = sysfsdev?.isEmpty == true ? nil : sysfsdev
    }

    /// From the text of a `device_add`'s arguments object (QEMU's grammar: single quotes allowed); nil
    /// when it is no object or has no `driver`.
    public init?(arguments text: [UInt8]) {
        guard let arguments = try? JSONValue(parsing: text), let driver = arguments["driver"]?.stringValue else {
            return nil
        }
        self.init(
            driver: driver, id: arguments["id"]?.stringValue, host: arguments["host"]?.stringValue,
            sysfsdev: arguments["sysfsdev"]?.stringValue)
    }

    /// Whether this is a device the tracker follows: `vfio-pci`, `vfio-pci-nohotplug`, or any `vfio-*`
    /// driver with `host` or `sysfsdev`.
    public var isVFIO: Bool {
        if driver == "vfio-pci" || driver == "vfio-pci-nohotplug" { return host != nil || sysfsdev != nil }
        return driver.hasPrefix("vfio-") && (host != nil || sysfsdev != nil)
    }

    /// The QOM path QEMU gives a device with an id: `/machine/peripheral/<id>`; nil without id.
    public var qomPath: String? { id.map(VFIODeviceRegistry.qomPath(forID:)) }
}

/// A VFIO device the guest holds, as tracked.
public struct TrackedVFIODevice: Sendable, Hashable {
    /// The QOM path, the registry key (`/machine/peripheral/<id>` or `/machine/peripheral-anon/...`).
    public var qomPath: String
    /// The device id, where one exists.
    public var id: String?
    /// The QOM type.
    public var driver: String
    /// Sysfs resolution: name, path, group, cdev.
    public var resolved: ResolvedVFIODevice

    public init(qomPath: String, id: String?, driver: String, resolved: ResolvedVFIODevice) {
        self.qomPath = qomPath
        self.id = id
        self.driver = driver
        self.resolved = resolved
    }

    /// The group number.
    public var group: Int { resolved.group }
    /// What events report: the id where it exists, else the QOM path.
    public var displayName: String { id ?? qomPath }
}

/// The devices the guest holds, keyed by QOM path, indexed by group. Pure: no I/O.
///
/// Lookups by group cost the group's size, not the registry's: with hundreds of groups attached, every
/// `DEVICE_DELETED` and `device_add` asks for one group's devices.
public struct VFIODeviceRegistry: Sendable {
    private var devices: [String: TrackedVFIODevice] = [:]
    /// QOM paths by group, in tracking order.
    private var byGroup: [Int: [String]] = [:]
    /// Tracking order of each QOM path (for ``all``).
    private var sequence: [String: Int] = [:]
    private var nextSequence = 0

    public init() {}

    /// `/machine/peripheral/<id>`.
    public static func qomPath(forID id: String) -> String { "/machine/peripheral/\(id)" }

    /// The QOM path a `DEVICE_DELETED` names: its `path`, else `/machine/peripheral/<device>`.
    public static func deletedPath(path: String?, device: String?) -> String? {
        if let path, !path.isEmpty { return path }
        if let device, !device.isEmpty { return qomPath(forID: device) }
        return nil
    }

    /// Tracks a device; returns the device it replaced at the same QOM path, if any.
    @discardableResult
    public mutating func track(_ device: TrackedVFIODevice) -> TrackedVFIODevice? {
        let previous = devices.updateValue(device, forKey: device.qomPath)
        if let previous {
            if previous.group != device.group {
                byGroup[previous.group]?.removeAll { $0 == device.qomPath }
                byGroup[device.group, default: []].append(device.qomPath)
            }
        } else {
            sequence[device.qomPath] = nextSequence
            nextSequence += 1
            byGroup[device.group, default: []].append(device.qomPath)
        }
        return previous
    }

    /// Stops tracking the device at `qomPath`; returns it, or nil when it was not tracked.
    public mutating func untrack(qomPath: String) -> TrackedVFIODevice? {
        guard let device = devices.removeValue(forKey: qomPath) else { return nil }
        sequence[qomPath] = nil
        byGroup[device.group]?.removeAll { $0 == qomPath }
        if byGroup[device.group]?.isEmpty == true { byGroup[device.group] = nil }
        return device
    }

    /// The device at `qomPath`.
    public func device(atPath qomPath: String) -> TrackedVFIODevice? { devices[qomPath] }

    /// Whether a device with this sysfs name (PCI address or UUID) is tracked.
    public func contains(name: String) -> Bool { devices.values.contains { $0.resolved.name == name } }

    /// The devices of `group`, in tracking order.
    public func devices(inGroup group: Int) -> [TrackedVFIODevice] {
        (byGroup[group] ?? []).compactMap { devices[$0] }
    }

    /// All devices, in tracking order.
    public var all: [TrackedVFIODevice] {
        devices.values.sorted { (sequence[$0.qomPath] ?? 0) < (sequence[$1.qomPath] ?? 0) }
    }

    /// Number of tracked devices.
    public var count: Int { devices.count }
}
