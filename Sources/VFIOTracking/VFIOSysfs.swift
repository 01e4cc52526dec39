import CQMPShims

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// A device resolved through sysfs: where it lives, its IOMMU group and its iommufd cdev node.
public struct ResolvedVFIODevice: Sendable, Hashable {
    /// The sysfs name: a PCI address `dddd:bb:ss.f` or an mdev UUID.
    public var name: String
    /// The device's directory under `--sysfs-root`.
    public var sysfsPath: String
    /// The IOMMU group number.
    public var group: Int
    /// `<dev>/vfio/devices/vfio<X>` when the kernel exposes an iommufd cdev for the device.
    public var cdevNode: String?

    public init(name: String, sysfsPath: String, group: Int, cdevNode: String? = nil) {
        self.name = name
        self.sysfsPath = sysfsPath
        self.group = group
        self.cdevNode = cdevNode
    }
}

/// Reads device → group → members → nodes through injected sysfs and dev roots, as the kernel lays
/// them out.
///
/// - Important: never opens a group node; it only reads links and directories.
public struct VFIOSysfs: Sendable {
    /// `--sysfs-root` (default `/sys`).
    public var sysfsRoot: String
    /// `--dev-root` (default `/dev`).
    public var devRoot: String

    public init(sysfsRoot: String = "/sys", devRoot: String = "/dev") {
        self.sysfsRoot = Self.trimmed(sysfsRoot)
        self.devRoot = Self.trimmed(devRoot)
    }

    /// `<dev>/vfio/<N>`.
    public func groupNodePath(_ group: Int) -> String { "\(devRoot)/vfio/\(group)" }

    /// The sysfs directory of a device given as QEMU's `host` or `sysfsdev` property (`sysfsdev` wins,
    /// as in QEMU). A `sysfsdev` under `/sys/` is read under ``sysfsRoot``.
    public func devicePath(host: String?, sysfsdev: String?) throws(VFIOTrackingError) -> String {
        if let sysfsdev, !sysfsdev.isEmpty {
            if sysfsdev.hasPrefix("/sys/") {
                return sysfsRoot + sysfsdev.dropFirst(4)
            }
            return sysfsdev
        }
        guard let host, let address = PCIAddress.normalized(host) else {
            throw VFIOTrackingError(
                .notAVFIODevice,
                "VFIO device has neither a valid host (dddd:bb:ss.f) nor sysfsdev: got host \(host ?? "none")"
            )
        }
        return "\(sysfsRoot)/bus/pci/devices/\(address)"
    }

    /// Resolves a device given by `host`/`sysfsdev` to its group and cdev.
    ///
    /// - Throws: `.outsideRoot` when the device's directory, its group node or its cdev node leads
    ///   (through a link) out of ``sysfsRoot`` / ``devRoot``: such a device is not tracked.
    public func resolve(host: String?, sysfsdev: String?) throws(VFIOTrackingError) -> ResolvedVFIODevice {
        let path = try devicePath(host: host, sysfsdev: sysfsdev)
        try RootConfinement.check(path, inside: sysfsRoot, option: "--sysfs-root")
        let group = try group(ofDevicePath: path)
        let name = path.split(separator: "/").last.map(String.init) ?? path
        let cdev = cdevNode(ofDevicePath: path)
        for node in [groupNodePath(group)] + (cdev.map { [$0] } ?? []) {
            try RootConfinement.check(node, inside: devRoot, option: "--dev-root")
        }
        return ResolvedVFIODevice(name: name, sysfsPath: path, group: group, cdevNode: cdev)
    }

    /// The group number behind `<device>/iommu_group` (a relative symlink to `.../iommu_groups/<N>`).
    public func group(ofDevicePath path: String) throws(VFIOTrackingError) -> Int {
        var info = stat()
        guard stat(path, &info) == 0 else {
            let code = errno
            throw VFIOTrackingError(
                .deviceNotFound,
                "device \(path) not found: is it bound to vfio-pci, and is --sysfs-root (\(sysfsRoot)) right?",
                call: "stat", errno: code
            )
        }
        guard let target = Self.readLink(path + "/iommu_group") else {
            let code = errno
            throw VFIOTrackingError(
                .noIOMMUGroup,
                "device \(path) has no iommu_group link: is the IOMMU enabled (intel_iommu=on / amd_iommu)?",
                call: "readlink", errno: code
            )
        }
        guard let last = target.split(separator: "/").last, let number = Int(last), number >= 0 else {
            throw VFIOTrackingError(.noIOMMUGroup, "iommu_group link of \(path) points to '\(target)', not a group")
        }
        return number
    }

    /// The members of group `N` from `<sysfs>/kernel/iommu_groups/<N>/devices`, sorted.
    public func members(ofGroup group: Int) -> [String] {
        Self.directoryEntries("\(sysfsRoot)/kernel/iommu_groups/\(group)/devices").sorted()
    }

    /// `<dev>/vfio/devices/vfio<X>` for `<device>/vfio-dev/vfio<X>`, or nil when the device has no cdev.
    public func cdevNode(ofDevicePath path: String) -> String? {
        guard let name = Self.directoryEntries(path + "/vfio-dev").filter({ $0.hasPrefix("vfio") }).sorted().first
        else { return nil }
        return "\(devRoot)/vfio/devices/\(name)"
    }

    static func readLink(_ path: String) -> String? {
        var buffer = [CChar](repeating: 0, count: 4096)
        let count = readlink(path, &buffer, buffer.count - 1)
        guard count > 0 else { return nil }
        return String(decoding: buffer[0..<count].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    static func directoryEntries(_ path: String) -> [String] {
        guard let dir = opendir(path) else { return [] }
        defer { closedir(dir) }
        var names: [String] = []
        while let name = cqmp_readdir_name(dir) { names.append(String(cString: name)) }
        return names
    }

    private static func trimmed(_ root: String) -> String {
        var root = root
        while root.count > 1 && root.hasSuffix("/") { root.removeLast() }
        return root
    }
}
