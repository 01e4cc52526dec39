/// What the model learns about a device directory from sysfs.
public enum MockHostLookup: Sendable, Equatable {
    /// `stat` of the device directory failed with `errno`.
    case noDevice(errno: Int32)
    /// The device exists but its `iommu_group` link cannot be read (`errno`).
    case noGroup(errno: Int32)
    /// IOMMU group number and, when the device has one, its iommufd cdev node (`<dev>/vfio/devices/vfio3`).
    case found(group: Int, cdevNode: String?)
}

/// The model's only window on the host: sysfs lookups, opening and closing VFIO nodes and device
/// descriptors, a second holder.
///
/// The real implementation (``SystemMockHost``) reads sysfs through ``VFIOTracking/VFIOSysfs`` and opens
/// files under the dev root; unit tests use an in-memory one. Keeping this behind a protocol keeps
/// ``MockMachine`` free of I/O while still letting it decide, synchronously, whether `device_add` succeeds.
public protocol MockHost: AnyObject {
    /// Resolves a device directory (`<sysfs>/bus/pci/devices/<BDF>`, `<sysfs>/bus/mdev/devices/<uuid>`).
    func lookup(devicePath: String) -> MockHostLookup
    /// Opens `path` read-write. Returns the descriptor, or the errno.
    ///
    /// - Important: the model owns the descriptor and gives it back through ``close(_:)``.
    func open(_ path: String) -> Result<Int32, MockHostErrno>
    /// A descriptor standing for QEMU's per-device `anon_inode:[vfio-device]` fd of device `name`.
    func openDevice(named name: String) -> Result<Int32, MockHostErrno>
    /// Closes a descriptor the model owns (opened here or received with SCM_RIGHTS).
    func close(_ fd: Int32)
    /// Starts a second process holding a copy of `fd`'s open file (fault injection).
    func startHolder(group: Int, fd: Int32)
    /// Ends the second process of `group`, dropping its copy.
    func stopHolder(group: Int)
}

/// An errno from ``MockHost/open(_:)``.
public struct MockHostErrno: Error, Sendable, Equatable {
    public var value: Int32
    public init(_ value: Int32) { self.value = value }
}
