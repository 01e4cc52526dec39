import VFIOTracking

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// A guest-assignable device of a fake host: a PCI function or a mediated device.
public enum FakeDevice: Sendable, Hashable, CustomStringConvertible {
    /// A PCI function, by its full address `dddd:bb:ss.f`.
    case pci(String)
    /// A mediated device (`/sys/bus/mdev/devices/<uuid>`).
    case mdev(String)

    /// The sysfs name: the PCI address or the mdev UUID.
    public var name: String {
        switch self {
        case .pci(let bdf): bdf
        case .mdev(let uuid): uuid
        }
    }

    public var description: String { name }
}

/// One IOMMU group of a fake host and its member devices.
public struct FakeIOMMUGroup: Sendable, Hashable {
    /// The group number `N` of `/dev/vfio/N` and `/sys/kernel/iommu_groups/N`.
    public var number: Int
    /// The members, in the order given.
    public var members: [FakeDevice]

    public init(number: Int, members: [FakeDevice]) {
        self.number = number
        self.members = members
    }
}

/// Why a fake host could not be described or built.
public struct FakeHostError: Error, CustomStringConvertible, Sendable {
    /// What went wrong, naming the fix.
    public var message: String
    /// The failing system call and its errno, when one failed.
    public var syscall: (name: String, errno: Int32)?

    init(_ message: String, syscall: String? = nil, errno: Int32 = 0) {
        self.message = message
        self.syscall = syscall.map { ($0, errno) }
    }

    public var description: String {
        guard let syscall else { return message }
        return
            "\(message): \(syscall.name) failed: \(String(cString: strerror(syscall.errno))) (errno \(syscall.errno))"
    }
}

/// A kernel-shaped fake sysfs and dev tree under a temporary root.
///
/// The layout follows the kernel's:
/// - `<root>/sys/devices/pci0000:00/<BDF>/` is the device directory and
///   `<root>/sys/bus/pci/devices/<BDF>` a relative symlink to it;
/// - `<device>/iommu_group` is a relative symlink to `<root>/sys/kernel/iommu_groups/<N>`, whose
///   `devices/<BDF>` entries link back to the members;
/// - `<root>/dev/vfio/<N>` is the group node (a regular file here, a character device on a host) and
///   `<root>/dev/vfio/vfio` the container node;
/// - iommufd cdevs: `<device>/vfio-dev/vfio<X>/dev` (`major:minor`) and `<root>/dev/vfio/devices/vfio<X>`;
/// - mdevs: `<root>/sys/devices/virtual/mdev/<uuid>` with `iommu_group`, and
///   `<root>/sys/bus/mdev/devices/<uuid>` linking to it.
///
/// - Important: the tree is left on disk until ``removeTree()`` is called.
public final class FakeHost: Sendable {
    /// The temporary root that holds `sys/` and `dev/`.
    public let root: String
    /// What `--sysfs-root` should be: `<root>/sys`.
    public let sysfsRoot: String
    /// What `--dev-root` should be: `<root>/dev`.
    public let devRoot: String
    /// The groups, as given.
    public let groups: [FakeIOMMUGroup]
    /// The iommufd cdev name (`vfio<X>`) of each PCI device, when cdevs were created.
    public let cdevNames: [String: String]

    /// Builds the tree for `groups`.
    ///
    /// - Parameters:
    ///   - groups: the IOMMU groups and their members; a device may appear in one group only.
    ///   - root: an existing empty directory to build in; a fresh `/tmp/qs-fh-XXXXXX` when nil.
    ///   - iommufdCdevs: whether PCI devices get `vfio-dev/vfio<X>` cdevs (numbered in order of appearance).
    public init(groups: [FakeIOMMUGroup], root: String? = nil, iommufdCdevs: Bool = true) throws(FakeHostError) {
        var seen = Set<String>()
        var numbers = Set<Int>()
        for group in groups {
            guard group.number >= 0, numbers.insert(group.number).inserted else {
                throw FakeHostError("IOMMU group \(group.number) given twice or negative: give each group once")
            }
            for member in group.members where !seen.insert(member.name).inserted {
                throw FakeHostError("device \(member.name) is in two IOMMU groups: a device belongs to one group")
            }
        }
        let base: String
        if let root {
            base = root
        } else {
            var template = Array("/tmp/qs-fh-XXXXXX".utf8CString)
            guard let made = template.withUnsafeMutableBufferPointer({ mkdtemp($0.baseAddress!) }) else {
                throw FakeHostError(
                    "cannot create a temporary fake host root under /tmp", syscall: "mkdtemp", errno: errno)
            }
            base = String(cString: made)
        }
        self.root = base
        self.sysfsRoot = base + "/sys"
        self.devRoot = base + "/dev"
        self.groups = groups

        var cdevs: [String: String] = [:]
        var nextCdev = 0
        let sys = sysfsRoot
        let dev = devRoot
        for directory in [
            "\(sys)/devices/pci0000:00", "\(sys)/devices/virtual/mdev", "\(sys)/bus/pci/devices",
            "\(sys)/bus/mdev/devices", "\(sys)/kernel/iommu_groups", "\(dev)/vfio/devices",
        ] {
            try Self.makeDirectories(directory)
        }
        try Self.makeFile("\(dev)/vfio/vfio")
        for group in groups {
            let groupDir = "\(sys)/kernel/iommu_groups/\(group.number)"
            try Self.makeDirectories(groupDir + "/devices")
            try Self.makeFile("\(dev)/vfio/\(group.number)")
            for member in group.members {
                switch member {
                case .pci(let bdf):
                    let deviceDir = "\(sys)/devices/pci0000:00/\(bdf)"
                    try Self.makeDirectories(deviceDir)
                    try Self.makeFile(deviceDir + "/driver_override", contents: "vfio-pci\n")
                    try Self.symlink("../../../kernel/iommu_groups/\(group.number)", at: deviceDir + "/iommu_group")
                    try Self.symlink("../../../devices/pci0000:00/\(bdf)", at: "\(sys)/bus/pci/devices/\(bdf)")
                    try Self.symlink("../../../../devices/pci0000:00/\(bdf)", at: "\(groupDir)/devices/\(bdf)")
                    if iommufdCdevs {
                        let name = "vfio\(nextCdev)"
                        try Self.makeDirectories("\(deviceDir)/vfio-dev/\(name)")
                        try Self.makeFile("\(deviceDir)/vfio-dev/\(name)/dev", contents: "511:\(nextCdev)\n")
                        try Self.makeFile("\(dev)/vfio/devices/\(name)")
                        cdevs[bdf] = name
                        nextCdev += 1
                    }
                case .mdev(let uuid):
                    let deviceDir = "\(sys)/devices/virtual/mdev/\(uuid)"
                    try Self.makeDirectories(deviceDir)
                    try Self.symlink("../../../../kernel/iommu_groups/\(group.number)", at: deviceDir + "/iommu_group")
                    try Self.symlink("../../../devices/virtual/mdev/\(uuid)", at: "\(sys)/bus/mdev/devices/\(uuid)")
                    try Self.symlink("../../../../devices/virtual/mdev/\(uuid)", at: "\(groupDir)/devices/\(uuid)")
                }
            }
        }
        self.cdevNames = cdevs
    }

    /// Builds the tree described by a `--fake-host` spec (see ``parse(_:)``).
    public convenience init(spec: String, root: String? = nil, iommufdCdevs: Bool = true) throws(FakeHostError) {
        try self.init(groups: Self.parse(spec), root: root, iommufdCdevs: iommufdCdevs)
    }

    /// Parses `N=member,member[;N=member...]`.
    ///
    /// A member is a PCI address (`dddd:bb:ss.f`, or `bb:ss.f` for domain 0000) or an mdev UUID.
    /// Example: `7=0000:01:00.0,0000:01:00.1;8=02:00.0`.
    public static func parse(_ spec: String) throws(FakeHostError) -> [FakeIOMMUGroup] {
        var groups: [FakeIOMMUGroup] = []
        for part in spec.split(separator: ";", omittingEmptySubsequences: true) {
            let pieces = part.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            guard pieces.count == 2, let number = Int(pieces[0].trimmingSpaces), number >= 0 else {
                throw FakeHostError(
                    "fake host spec '\(part)' is not N=device[,device...]: write e.g. 7=0000:01:00.0,0000:01:00.1"
                )
            }
            var members: [FakeDevice] = []
            for item in pieces[1].split(separator: ",") {
                let text = item.trimmingSpaces
                if let bdf = PCIAddress.normalized(text) {
                    members.append(.pci(bdf))
                } else if isUUID(text) {
                    members.append(.mdev(text.lowercased()))
                } else {
                    throw FakeHostError(
                        "'\(text)' in fake host spec is neither a PCI address (0000:01:00.0) nor an mdev UUID"
                    )
                }
            }
            guard !members.isEmpty else {
                throw FakeHostError("IOMMU group \(number) in fake host spec has no devices: list at least one")
            }
            groups.append(FakeIOMMUGroup(number: number, members: members))
        }
        guard !groups.isEmpty else {
            throw FakeHostError("empty fake host spec: write e.g. 7=0000:01:00.0,0000:01:00.1")
        }
        return groups
    }

    /// `<dev>/vfio/<N>`: the group node.
    public func groupNodePath(_ group: Int) -> String { "\(devRoot)/vfio/\(group)" }

    /// The group number of a device (PCI address in any accepted form, or mdev UUID).
    public func group(ofDevice name: String) -> Int? {
        let key = PCIAddress.normalized(name) ?? name.lowercased()
        return groups.first { $0.members.contains { $0.name == key } }?.number
    }

    /// `<dev>/vfio/devices/vfio<X>`: the iommufd cdev node of a PCI device, when cdevs were created.
    public func cdevNodePath(ofDevice bdf: String) -> String? {
        let key = PCIAddress.normalized(bdf) ?? bdf
        return cdevNames[key].map { "\(devRoot)/vfio/devices/\($0)" }
    }

    /// Deletes the whole tree (the root included). Errors are ignored: it is cleanup.
    public func removeTree() {
        Self.removeRecursively(root)
    }

    private static func isUUID(_ text: String) -> Bool {
        let groups = text.split(separator: "-", omittingEmptySubsequences: false)
        guard groups.map(\.count) == [8, 4, 4, 4, 12] else { return false }
        return groups.allSatisfy { $0.allSatisfy(\.isHexDigit) }
    }

    private static func makeDirectories(_ path: String) throws(FakeHostError) {
        var current = path.hasPrefix("/") ? "" : "."
        for component in path.split(separator: "/") {
            current += "/" + component
            if mkdir(current, 0o755) != 0 && errno != EEXIST {
                throw FakeHostError("cannot create fake host directory \(current)", syscall: "mkdir", errno: errno)
            }
        }
    }

    private static func makeFile(_ path: String, contents: String = "") throws(FakeHostError) {
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard fd >= 0 else {
            throw FakeHostError("cannot create fake host file \(path)", syscall: "open", errno: errno)
        }
        defer { close(fd) }
        let bytes = Array(contents.utf8)
        if !bytes.isEmpty && write(fd, bytes, bytes.count) != bytes.count {
            throw FakeHostError("cannot write fake host file \(path)", syscall: "write", errno: errno)
        }
    }

    /// A link already there with the same target is kept: a mock restarted on the tree a killed one
    /// left (`--fake-host-root`) finds the host as a restarted QEMU does, same nodes, same inodes.
    private static func symlink(_ target: String, at path: String) throws(FakeHostError) {
        guard Glibc.symlink(target, path) == 0 else {
            let error = errno
            var existing = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
            let length = readlink(path, &existing, existing.count - 1)
            if error == EEXIST, length >= 0,
                String(decoding: existing[0..<length].map { UInt8(bitPattern: $0) }, as: UTF8.self) == target
            {
                return
            }
            throw FakeHostError("cannot create fake host symlink \(path)", syscall: "symlink", errno: error)
        }
    }

    private static func removeRecursively(_ path: String) {
        var info = stat()
        guard lstat(path, &info) == 0 else { return }
        if (info.st_mode & S_IFMT) == S_IFDIR {
            if let dir = opendir(path) {
                var names: [String] = []
                while let entry = readdir(dir) {
                    // Read the name in place: copying the 256-byte d_name can read past a short record.
                    let name = String(
                        cString: UnsafeRawPointer(entry).advanced(by: MemoryLayout<dirent>.offset(of: \dirent.d_name)!)
                            .assumingMemoryBound(to: CChar.self))
                    if name != "." && name != ".." { names.append(name) }
                }
                closedir(dir)
                for name in names { removeRecursively(path + "/" + name) }
            }
            rmdir(path)
        } else {
            unlink(path)
        }
    }
}

extension StringProtocol {
    fileprivate var trimmingSpaces: String {
        String(drop(while: { $0 == " " }).reversed().drop(while: { $0 == " " }).reversed())
    }
}
