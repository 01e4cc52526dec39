import Glibc
import QMPRuntime
import QMPTestKit
import Testing

@testable import QMPMock

/// Watches one file for close events (IN_CLOSE_WRITE | IN_CLOSE_NOWRITE), as the sidecar does.
final class CloseWatcher {
    let fd: Int32

    init(_ path: String) throws {
        fd = inotify_init1(Int32(IN_CLOEXEC | IN_NONBLOCK))
        guard fd >= 0, inotify_add_watch(fd, path, UInt32(IN_CLOSE_WRITE | IN_CLOSE_NOWRITE)) >= 0 else {
            throw QMPTestKitError("inotify on \(path) failed: errno \(errno)")
        }
    }

    deinit { close(fd) }

    /// Waits up to `timeout` seconds for a close event; false when none came.
    func waitForClose(timeout: Double = 10) -> Bool {
        var pfd = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        guard poll(&pfd, 1, Int32(timeout * 1000)) == 1 else { return false }
        var buffer = [UInt8](repeating: 0, count: 4096)
        return read(fd, &buffer, buffer.count) > 0
    }

    /// Whether a close event is already pending (no waiting).
    var hasPendingClose: Bool {
        var pfd = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        return poll(&pfd, 1, 0) == 1
    }
}

/// Counts how many descriptors of `pid` name `path`.
func descriptorsOn(_ path: String, pid: pid_t) -> Int {
    openFilesOf(pid).values.filter { $0 == path }.count
}

@Suite("qmp-mock process: real descriptors")
struct MockProcessTests {
    static let group7 = "7=0000:01:00.0,0000:01:00.1"

    /// The two-device group as measured on QEMU 7.2: each device holds its own descriptor (here a memfd
    /// standing for `anon_inode:[vfio-device]`); the first unplug closes only that one, the second the
    /// group's node, before its event.
    @Test func twoDeviceGroupHotUnplugClosesTheNodeBeforeTheLastEvent() throws {
        let mock = try MockInstance(["--finalize-delay", "0.05"], fakeHost: [Self.group7])
        let node = mock.fakeRoot + "/dev/vfio/7"
        let client = try mock.connect().negotiated()
        for (id, bdf) in [("hostdev0", "0000:01:00.0"), ("hostdev1", "0000:01:00.1")] {
            #expect(
                try client.execute(
                    #"{"execute":"device_add","arguments":{"driver":"vfio-pci","host":"\#(bdf)","id":"\#(id)"},"id":1}"#
                )
                    == [#"{"return": {}, "id": 1}"#])
        }
        #expect(descriptorsOn(node, pid: mock.process.pid) == 1, "one open per group, as QEMU")
        let container = mock.fakeRoot + "/dev/vfio/vfio"
        #expect(descriptorsOn(container, pid: mock.process.pid) == 1, "the container, as QEMU")
        let device0 = "/memfd:vfio-device 0000:01:00.0 (deleted)"
        let device1 = "/memfd:vfio-device 0000:01:00.1 (deleted)"
        #expect(descriptorsOn(device0, pid: mock.process.pid) == 1, "a descriptor per device")
        #expect(descriptorsOn(device1, pid: mock.process.pid) == 1)
        let watcher = try CloseWatcher(node)

        #expect(
            try client.execute(#"{"execute":"device_del","arguments":{"id":"hostdev0"},"id":2}"#) == [
                #"{"return": {}, "id": 2}"#
            ])
        let first = try client.readUntil("DEVICE_DELETED")
        #expect(
            first.last?.contains(#""data": {"device": "hostdev0", "path": "/machine/peripheral/hostdev0"}"#) == true)
        #expect(descriptorsOn(node, pid: mock.process.pid) == 1, "the other device still holds the group")
        #expect(!watcher.hasPendingClose)
        #expect(descriptorsOn(device0, pid: mock.process.pid) == 0, "the first unplug closes its device's fd")
        #expect(descriptorsOn(device1, pid: mock.process.pid) == 1)

        #expect(
            try client.execute(#"{"execute":"device_del","arguments":{"id":"hostdev1"},"id":3}"#) == [
                #"{"return": {}, "id": 3}"#
            ])
        _ = try client.readUntil("DEVICE_DELETED")
        // after-close order: by the time the event is here the node is closed.
        #expect(watcher.hasPendingClose)
        #expect(descriptorsOn(node, pid: mock.process.pid) == 0)
        #expect(descriptorsOn(container, pid: mock.process.pid) == 0)
        #expect(descriptorsOn(device1, pid: mock.process.pid) == 0)
    }

    @Test func beforeCloseOrderSendsTheEventWhileTheNodeIsOpen() throws {
        let mock = try MockInstance(
            [
                "--finalize-delay", "0.2", "--event-order", "before-close", "--device",
                "vfio-pci,host=0000:02:00.0,id=nic0",
            ], fakeHost: ["8=0000:02:00.0"])
        let node = mock.fakeRoot + "/dev/vfio/8"
        #expect(descriptorsOn(node, pid: mock.process.pid) == 1, "cold-plugged device opened its group at start")
        let watcher = try CloseWatcher(node)
        let client = try mock.connect().negotiated()
        _ = try client.execute(#"{"execute":"device_del","arguments":{"id":"nic0"}}"#)
        _ = try client.readUntil("DEVICE_DELETED")
        #expect(descriptorsOn(node, pid: mock.process.pid) == 1, "pre-2.11: event at unparent, close later")
        #expect(watcher.waitForClose(timeout: 10))
        #expect(descriptorsOn(node, pid: mock.process.pid) == 0)
    }

    @Test func iommufdOpensOneCdevPerDevice() throws {
        let mock = try MockInstance([], fakeHost: [Self.group7])
        let client = try mock.connect().negotiated()
        for (id, bdf) in [("a", "0000:01:00.0"), ("b", "0000:01:00.1")] {
            _ = try client.execute(
                #"{"execute":"device_add","arguments":{"driver":"vfio-pci","host":"\#(bdf)","id":"\#(id)","iommufd":"iommufd0"}}"#
            )
        }
        let files = Set(mock.openFiles().values)
        #expect(files.contains(mock.fakeRoot + "/dev/vfio/devices/vfio0"))
        #expect(files.contains(mock.fakeRoot + "/dev/vfio/devices/vfio1"))
        #expect(!files.contains(mock.fakeRoot + "/dev/vfio/7"))
        _ = try client.execute(#"{"execute":"device_del","arguments":{"id":"a"}}"#)
        _ = try client.readUntil("DEVICE_DELETED")
        #expect(!Set(mock.openFiles().values).contains(mock.fakeRoot + "/dev/vfio/devices/vfio0"))
    }

    @Test func getfdTakesTheDescriptorOverSCMRights() throws {
        let mock = try MockInstance([])
        let path = mock.directory + "/passed-file"
        let fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        defer { close(fd) }
        let client = try mock.connect().negotiated()
        #expect(
            try client.execute(#"{"execute":"getfd","arguments":{"fdname":"disk"}}"#, fds: [fd]) == [#"{"return": {}}"#]
        )
        #expect(descriptorsOn(path, pid: mock.process.pid) == 1)
        let added = try client.execute(#"{"execute":"add-fd","arguments":{"fdset-id":3}}"#, fds: [fd])
        #expect(added.first?.hasSuffix(#", "fdset-id": 3}}"#) == true)
        #expect(descriptorsOn(path, pid: mock.process.pid) == 2)
        #expect(try client.execute(#"{"execute":"closefd","arguments":{"fdname":"disk"}}"#) == [#"{"return": {}}"#])
        #expect(try client.execute(#"{"execute":"remove-fd","arguments":{"fdset-id":3}}"#) == [#"{"return": {}}"#])
        #expect(descriptorsOn(path, pid: mock.process.pid) == 0)
    }
}

@Suite("qmp-mock process: fault injection")
struct MockFaultProcessTests {
    @Test func leakedGroupStaysOpenAfterTheEvent() throws {
        let mock = try MockInstance(
            ["--leak-group", "8", "--device", "vfio-pci,host=0000:02:00.0,id=nic0"], fakeHost: ["8=0000:02:00.0"])
        let client = try mock.connect().negotiated()
        _ = try client.execute(#"{"execute":"device_del","arguments":{"id":"nic0"}}"#)
        _ = try client.readUntil("DEVICE_DELETED")
        #expect(descriptorsOn(mock.fakeRoot + "/dev/vfio/8", pid: mock.process.pid) == 1)
    }

    @Test func secondHolderKeepsTheGroupAfterTheMockCloses() throws {
        let mock = try MockInstance(
            ["--second-holder", "8:0.3", "--device", "vfio-pci,host=0000:02:00.0,id=nic0"], fakeHost: ["8=0000:02:00.0"]
        )
        let node = mock.fakeRoot + "/dev/vfio/8"
        let children = try #require(Self.children(of: mock.process.pid))
        #expect(children.count == 1)
        let holder = try #require(children.first)
        #expect(descriptorsOn(node, pid: holder) == 1, "the holder has its own copy")
        let watcher = try CloseWatcher(node)
        let client = try mock.connect().negotiated()
        _ = try client.execute(#"{"execute":"device_del","arguments":{"id":"nic0"}}"#)
        _ = try client.readUntil("DEVICE_DELETED")
        #expect(descriptorsOn(node, pid: mock.process.pid) == 0)
        // The last close (the holder's) is the one inotify reports.
        #expect(watcher.waitForClose(timeout: 10))
        #expect(descriptorsOn(node, pid: holder) == 0)
    }

    static func children(of pid: pid_t) -> [pid_t]? {
        let fd = open("/proc/\(pid)/task/\(pid)/children", O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var buffer = [UInt8](repeating: 0, count: 4096)
        let n = read(fd, &buffer, buffer.count)
        return String(decoding: buffer.prefix(max(0, n)), as: UTF8.self).split(separator: " ").compactMap { pid_t($0) }
    }

    @Test func dropMidReplyCutsTheLine() throws {
        let mock = try MockInstance(["--drop-mid-reply", "query-version"])
        let client = try mock.connect().negotiated()
        try client.send(#"{"execute":"query-version","id":1}"#)
        let partial = try #require(try client.readLine())
        #expect(partial.hasPrefix(#"{"return": {"qemu": "#) && !partial.hasSuffix("}"))
        #expect(try client.readLine() == nil)
    }

    @Test func exitOnCommandKillsTheMockAndClosesTheGroup() throws {
        let mock = try MockInstance(
            ["--exit-on", "device_del", "--device", "vfio-pci,host=0000:02:00.0,id=nic0"], fakeHost: ["8=0000:02:00.0"])
        let watcher = try CloseWatcher(mock.fakeRoot + "/dev/vfio/8")
        let client = try mock.connect().negotiated()
        try client.send(#"{"execute":"device_del","arguments":{"id":"nic0"}}"#)
        #expect(try client.readLine() == nil, "no reply: the process died")
        #expect(mock.process.waitForExit() == 3)
        #expect(watcher.waitForClose(timeout: 10))
    }

    @Test func slowReplyKeepsOrder() throws {
        let mock = try MockInstance(["--slow-reply", "query-version=0.2"])
        let client = try mock.connect().negotiated()
        try client.send(#"{"execute":"query-version","id":1}{"execute":"query-status","id":2}"#)
        #expect(try client.readLine()?.hasSuffix(#""id": 1}"#) == true)
        #expect(try client.readLine()?.hasSuffix(#""id": 2}"#) == true)
    }
}

@Suite("qmp-mock command line")
struct MockCommandLineTests {
    @Test func helpDocumentsEveryOption() throws {
        let directory = try makeTempDirectory()
        defer { removeTree(directory) }
        let process = try ChildProcess(
            productsDirectory() + "/qmp-mock", ["--help"], logPath: directory + "/help.log")
        var help = ""
        while let line = try? process.waitForLine(containing: "", timeout: 10) { help += line + "\n" }
        #expect(process.waitForExit() == 0)
        for option in [
            "--listen", "--sysfs-root", "--dev-root", "--device", "--fake-host", "--fake-host-root", "--keep-fake-host",
            "--finalize-delay", "--event-order", "--qemu-version", "--qemu-package", "--running", "--leak-group",
            "--second-holder", "--slow-reply", "--drop-mid-reply", "--exit-on", "--scenario", "--replay",
            "--replay-fallback-model", "--log-level",
        ] {
            #expect(help.contains("  \(option) "), "--help lacks \(option)")
        }
    }

    @Test func badOptionsNameTheFix() throws {
        let directory = try makeTempDirectory()
        defer { removeTree(directory) }
        let process = try ChildProcess(
            productsDirectory() + "/qmp-mock",
            ["--listen", "unix:\(directory)/m.sock", "--event-order", "sometimes"], logPath: directory + "/err.log")
        #expect(process.waitForExit() == 64)
        #expect(process.log.contains("--event-order must be before-close or after-close"))
    }

    /// `--fake-host` makes its own roots: given roots beside it are refused, naming `--fake-host-root`.
    @Test(arguments: [["--sysfs-root", "/nonexistent/sys"], ["--dev-root", "/nonexistent/dev"]])
    func fakeHostRefusesGivenRoots(roots: [String]) throws {
        let directory = try makeTempDirectory()
        defer { removeTree(directory) }
        let process = try ChildProcess(
            productsDirectory() + "/qmp-mock",
            ["--listen", "unix:\(directory)/m.sock", "--fake-host", "7=0000:01:00.0"] + roots,
            logPath: directory + "/err.log")
        #expect(process.waitForExit() == 64)
        #expect(process.log.contains("--fake-host-root DIR"), "log: \(process.log)")
        #expect(DirectoryEntries.names(in: directory) == ["err.log"], "nothing built, nothing listening")
    }

    @Test func deviceSpecsAndVersionsParse() throws {
        let spec = try MockDeviceSpec(parsing: "vfio-pci,host=0000:01:00.0,id=hostdev0,romfile=a,,b")
        #expect(spec.driver == "vfio-pci")
        #expect(spec.properties.map(\.0) == ["host", "id", "romfile"])
        #expect(spec.properties.last?.1 == "a,b")
        #expect(throws: MockError.self) { try MockDeviceSpec(parsing: "vfio-pci,host") }
        #expect(MockQEMUVersion(parsing: "7.2") == MockQEMUVersion(major: 7, minor: 2, micro: 0))
        #expect(MockQEMUVersion(parsing: "7.x.1") == nil)
    }
}
