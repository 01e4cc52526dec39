import Glibc
import QMPSidecar
import Testing
import VFIOFakeHost
import VFIOTracking

/// Holder checks against a real child process standing in for QEMU.
@Suite("Holder scanner")
struct HolderScannerTests {
    @Test func learnsRechecksAndFindsCopiesElsewhere() throws {
        let host = try FakeHost(spec: "7=0000:01:00.0")
        defer { host.removeTree() }
        let qemu = try StandInProcess()
        defer { qemu.terminate() }
        try qemu.fill(toExtraFDs: 20)
        let fd = try qemu.open(host.groupNodePath(7))
        let scanner = HolderScanner()
        let node = try #require(NodeIdentity(path: scanner.pathAsSeenBy(pid: qemu.pid, host.groupNodePath(7))))
        #expect(node == NodeIdentity(path: host.groupNodePath(7)))
        guard case .file = node else {
            Issue.record("a regular file must compare by (st_dev, st_ino), got \(node)")
            return
        }

        let learned = try #require(scanner.fds(of: qemu.pid, matching: [node]))
        #expect(learned == [fd: node])
        #expect(scanner.stillHeld(pid: qemu.pid, fds: learned) == learned)

        // A copy of the open file in a second process (inherited through fork).
        let holder = try qemu.forkHolder()
        _ = try qemu.close(fd)
        #expect(scanner.stillHeld(pid: qemu.pid, fds: learned).isEmpty)
        let holders = scanner.allHolders(of: [node])
        #expect(holders.map(\.pid) == [holder])
        #expect(holders.first?.comm.hasPrefix("python") == true)
        #expect(holders.first?.fds == [fd])

        try qemu.releaseHolder(holder)
        #expect(scanner.allHolders(of: [node]).isEmpty)
    }

    @Test func anotherFileWithTheSameNameElsewhereDoesNotMatch() throws {
        let host = try FakeHost(spec: "7=0000:01:00.0")
        let other = try FakeHost(spec: "7=0000:01:00.0")
        defer {
            host.removeTree()
            other.removeTree()
        }
        let qemu = try StandInProcess()
        defer { qemu.terminate() }
        try qemu.open(other.groupNodePath(7))
        let node = try #require(NodeIdentity(path: host.groupNodePath(7)))
        #expect(HolderScanner().fds(of: qemu.pid, matching: [node]) == [:])
    }

    @Test func characterDevicesCompareByDeviceNumber() throws {
        // /dev/null and a private mknod'ed copy would share st_rdev; here: /dev/null itself, whose rdev is 1:3.
        let node = try #require(NodeIdentity(path: "/dev/null"))
        guard case .characterDevice = node else {
            Issue.record("/dev/null must be a character device, got \(node)")
            return
        }
        let qemu = try StandInProcess()
        defer { qemu.terminate() }
        // The stand-in may inherit /dev/null as stderr: count the difference.
        try qemu.fill(toExtraFDs: 3)
        let before = try #require(HolderScanner().fds(of: qemu.pid, matching: [node]))
        try qemu.fill(toExtraFDs: 5)
        let after = try #require(HolderScanner().fds(of: qemu.pid, matching: [node]))
        #expect(after.count - before.count == 2)
        #expect(Set(before.keys).isSubset(of: Set(after.keys)))
    }

    @Test func fakeProcRootIsHonoured() throws {
        let host = try FakeHost(spec: "7=0000:01:00.0")
        defer { host.removeTree() }
        // A procfs-shaped tree: <proc>/4242/fd/9 -> the group node, <proc>/4242/comm.
        let proc = host.root + "/proc"
        for directory in [proc, proc + "/4242", proc + "/4242/fd", proc + "/self"] { mkdir(directory, 0o755) }
        symlink(host.groupNodePath(7), proc + "/4242/fd/9")
        symlink("/dev/null", proc + "/4242/fd/3")
        let commFD = open(proc + "/4242/comm", O_WRONLY | O_CREAT | O_CLOEXEC, 0o644)
        _ = write(commFD, "qemu-system-x86\n", 16)
        close(commFD)
        let scanner = HolderScanner(procRoot: proc + "/")
        let node = try #require(NodeIdentity(path: host.groupNodePath(7)))
        #expect(scanner.fds(of: 4242, matching: [node]) == [9: node])
        #expect(
            scanner.allHolders(of: [node]) == [
                NodeHolder(pid: 4242, comm: "qemu-system-x86", fds: [9], owner: getuid())
            ])
        #expect(scanner.fds(of: 4243, matching: [node]) == nil)
    }
}
