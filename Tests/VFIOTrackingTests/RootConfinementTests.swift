import Glibc
import Testing
import VFIOFakeHost
import VFIOTracking

@Suite struct RootConfinementTests {
    @Test(arguments: [
        ("/sys", "/sys", true), ("/sys", "/sys/bus/pci", true), ("/sys/", "/sys/bus", true),
        ("/sys", "/sysx/bus", false), ("/sys", "/etc/shadow", false), ("/", "/etc", true),
        ("/tmp/r/sys", "/tmp/r", false), ("/sys", "relative/sys", false),
    ])
    func containsComparesWholeComponents(root: String, path: String, inside: Bool) {
        #expect(RootConfinement.contains(root: root, path: path) == inside)
    }

    @Test func aGroupNodeLinkedOutOfTheDevRootIsNotFollowed() throws {
        let host = try FakeHost(spec: "7=0000:01:00.0")
        defer { host.removeTree() }
        let outside = host.devRoot + "/../outside-\(getpid())"
        let fd = open(outside, O_CREAT | O_WRONLY | O_CLOEXEC, 0o600)
        close(fd)
        defer { unlink(outside) }
        let sysfs = VFIOSysfs(sysfsRoot: host.sysfsRoot, devRoot: host.devRoot)
        #expect(try sysfs.resolve(host: "01:00.0", sysfsdev: nil).group == 7)
        unlink(host.groupNodePath(7))
        #expect(symlink(outside, host.groupNodePath(7)) == 0)
        let error = try #require(throws: VFIOTrackingError.self) { try sysfs.resolve(host: "01:00.0", sysfsdev: nil) }
        #expect(error.code == .outsideRoot)
        #expect(error.description.contains("--dev-root"))
    }

    @Test func aDeviceLinkedOutOfTheSysfsRootIsNotFollowed() throws {
        let host = try FakeHost(spec: "7=0000:01:00.0;8=0000:02:00.0")
        defer { host.removeTree() }
        // A second tree whose device link leads into the first one: outside its own --sysfs-root.
        let other = try FakeHost(spec: "9=0000:03:00.0")
        defer { other.removeTree() }
        let link = other.sysfsRoot + "/bus/pci/devices/0000:02:00.0"
        #expect(symlink(host.sysfsRoot + "/bus/pci/devices/0000:02:00.0", link) == 0)
        let sysfs = VFIOSysfs(sysfsRoot: other.sysfsRoot, devRoot: other.devRoot)
        #expect(try sysfs.resolve(host: "03:00.0", sysfsdev: nil).group == 9)
        let error = try #require(throws: VFIOTrackingError.self) { try sysfs.resolve(host: "02:00.0", sysfsdev: nil) }
        #expect(error.code == .outsideRoot)
        #expect(error.description.contains("--sysfs-root"))
        // A sysfsdev outside the root altogether is refused too.
        let direct = host.sysfsRoot + "/bus/pci/devices/0000:01:00.0"
        #expect(throws: VFIOTrackingError.self) { try sysfs.resolve(host: nil, sysfsdev: direct) }
    }
}
