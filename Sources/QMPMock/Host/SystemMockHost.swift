import Glibc
import QMPRuntime

/// The real ``MockHost``: reads `<sysfs-root>`, opens nodes under `<dev-root>`, spawns holder processes.
///
/// - Important: not thread-safe; used from the mock's reactor thread only.
public final class SystemMockHost: MockHost {
    private let sysfsRoot: String
    private var holders: [Int: pid_t] = [:]

    public init(sysfsRoot: String) {
        self.sysfsRoot = sysfsRoot
    }

    deinit {
        for group in Array(holders.keys) { stopHolder(group: group) }
    }

    public func lookup(devicePath device: String) -> MockHostLookup {
        var st = stat()
        guard stat(device, &st) == 0 else { return .noDevice }
        guard let target = Self.readLink(device + "/iommu_group"),
            let last = target.split(separator: "/").last, let group = Int(last)
        else { return .noGroup }
        var cdev: String?
        if let names = DirectoryEntries.names(in: device + "/vfio-dev") {
            cdev = names.first { $0.hasPrefix("vfio") }
        }
        return .found(group: group, cdev: cdev)
    }

    public func open(_ path: String) -> Result<Int32, MockHostErrno> {
        let fd = Glibc.open(path, O_RDWR | O_CLOEXEC)
        return fd >= 0 ? .success(fd) : .failure(MockHostErrno(errno))
    }

    public func close(_ fd: Int32) {
        _ = Glibc.close(fd)
    }

    /// Spawns `sleep infinity` with a copy of `fd` as its descriptor 3: another process holding the group.
    public func startHolder(group: Int, fd: Int32) {
        guard holders[group] == nil else { return }
        if let pid = try? ChildSpawn.spawn(
            "sleep", arguments: ["infinity"], searchPath: true, fileActions: [.dup2(from: fd, to: 3)])
        {
            holders[group] = pid
        }
    }

    public func stopHolder(group: Int) {
        guard let pid = holders.removeValue(forKey: group) else { return }
        kill(pid, SIGKILL)
        var status: Int32 = 0
        _ = waitpid(pid, &status, 0)
    }

    /// Ends every holder process (at exit: a mock must not leave `sleep` processes behind).
    public func stopAllHolders() {
        for group in Array(holders.keys) { stopHolder(group: group) }
    }

    private static func readLink(_ path: String) -> String? {
        var buffer = [CChar](repeating: 0, count: 4096)
        let n = readlink(path, &buffer, buffer.count - 1)
        guard n > 0 else { return nil }
        return String(decoding: buffer.prefix(n).map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}
