import CQMPShims
import Glibc
import QMPRuntime
import VFIOTracking

/// The real ``MockHost``: reads sysfs as the tracker does, opens nodes under `<dev-root>`, spawns holder
/// processes.
///
/// - Important: not thread-safe; used from the mock's reactor thread only.
public final class SystemMockHost: MockHost {
    private let sysfs: VFIOSysfs
    private var holders: [Int: pid_t] = [:]

    public init(sysfs: VFIOSysfs) {
        self.sysfs = sysfs
    }

    deinit {
        for group in Array(holders.keys) { stopHolder(group: group) }
    }

    public func lookup(devicePath device: String) -> MockHostLookup {
        do {
            let group = try sysfs.group(ofDevicePath: device)
            return .found(group: group, cdevNode: sysfs.cdevNode(ofDevicePath: device))
        } catch {
            let errno = error.errno ?? ENOENT
            return error.code == .deviceNotFound ? .noDevice(errno: errno) : .noGroup(errno: errno)
        }
    }

    public func open(_ path: String) -> Result<Int32, MockHostErrno> {
        let fd = Glibc.open(path, O_RDWR | O_CLOEXEC)
        return fd >= 0 ? .success(fd) : .failure(MockHostErrno(errno))
    }

    /// An anonymous memfd named `vfio-device <name>`: `/proc/<pid>/fd` shows which device it stands for.
    public func openDevice(named name: String) -> Result<Int32, MockHostErrno> {
        let fd = cqmp_memfd("vfio-device \(name)")
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
}
