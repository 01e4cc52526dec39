import Glibc
import QMPTestKit
import QMPWire
import Testing

/// The same `device_add` variants against qmp-mock, the sidecar's tracker and real QEMU 7.2: the mock
/// opens exactly the nodes the sidecar tracks, and fails with QEMU's texts where QEMU fails.
@Suite("qmp-mock VFIO rules against the sidecar and QEMU")
struct MockVFIODifferentialTests {
    static let mdev = "c0ffee00-0000-4000-8000-000000000001"
    static let fakeHost = [
        "7=0000:01:00.0,0000:01:00.1", "8=0000:02:00.0", "9=\(mdev)", "10=0000:04:00.0", "11=0000:05:00.0",
    ]

    /// A variant: its `device_add` arguments (without driver) and what it must leave open and tracked.
    struct Variant: CustomStringConvertible {
        var name: String
        var arguments: String
        /// Groups and device names held after it (cumulative), or nil when it must fail with `error`.
        var error: String?

        var description: String { name }
    }

    static let variants = [
        Variant(name: "host only", arguments: #""host": "01:00.0", "id": "h""#),
        Variant(name: "sysfsdev only", arguments: #""sysfsdev": "/sys/bus/pci/devices/0000:02:00.0", "id": "s""#),
        Variant(
            name: "both (sysfsdev wins)",
            arguments: #""host": "0000:05:00.0", "sysfsdev": "/sys/bus/pci/devices/0000:04:00.0", "id": "b""#),
        Variant(name: "mdev", arguments: #""sysfsdev": "/sys/bus/mdev/devices/\#(mdev)", "id": "m""#),
        Variant(name: "host in a form only QEMU's grammar reads", arguments: #""host": "0x0:001:0.1", "id": "w""#),
        Variant(
            name: "unknown device", arguments: #""host": "0000:99:00.0", "id": "u""#,
            error: "vfio ROOT/sys/bus/pci/devices/0000:99:00.0: no such host device: No such file or directory"),
        Variant(
            name: "malformed address", arguments: #""host": "0000:00:20.0", "id": "x""#,
            error: "Property 'vfio-pci.host' doesn't take value '0000:00:20.0'"),
        Variant(
            name: "malformed host beside a good sysfsdev",
            arguments: #""host": "zz", "sysfsdev": "/sys/bus/pci/devices/0000:05:00.0", "id": "z""#,
            error: "Property 'vfio-pci.host' doesn't take value 'zz'"),
    ]

    /// Groups whose node the mock holds, from `/proc/<mock>/fd`.
    static func mockGroups(_ mock: MockInstance) -> Set<Int> {
        let prefix = mock.fakeRoot + "/dev/vfio/"
        return Set(mock.openFiles().values.compactMap { $0.hasPrefix(prefix) ? Int($0.dropFirst(prefix.count)) : nil })
    }

    /// Names of the devices whose per-device descriptor the mock holds (`/memfd:vfio-device <name> (deleted)`).
    static func mockDevices(_ mock: MockInstance) -> Set<String> {
        let prefix = "/memfd:vfio-device "
        return Set(
            mock.openFiles().values.compactMap { target in
                guard target.hasPrefix(prefix) else { return nil }
                return String(target.dropFirst(prefix.count).prefix { $0 != " " })
            })
    }

    /// The sidecar's tracked groups (with at least one device) and device sysfs names.
    static func tracked(_ client: MockTestClient) throws -> (groups: Set<Int>, devices: Set<String>) {
        let reply = try #require(try client.execute(#"{"execute":"__org.qmp-sidecar_query-vfio-groups"}"#).last)
        let groups = try #require(try JSONValue(parsing: Array(reply.utf8))["return"]?.arrayValue)
        var numbers: Set<Int> = []
        var names: Set<String> = []
        for group in groups {
            let devices = group["devices"]?.arrayValue ?? []
            guard !devices.isEmpty, let number = group["group"]?.int64Value else { continue }
            numbers.insert(Int(number))
            names.formUnion(devices.compactMap { $0["sysfs"]?.stringValue })
        }
        return (numbers, names)
    }

    @Test func mockOpensExactlyWhatTheSidecarTracks() throws {
        let mock = try MockInstance(["--finalize-delay", "0.02"], fakeHost: Self.fakeHost)
        let sidecar = try SidecarInstance(upstream: mock, extra: ["--release-timeout", "5"])
        let client = try sidecar.connect().negotiated()
        let expected: [(groups: Set<Int>, devices: Set<String>)] = [
            ([7], ["0000:01:00.0"]),
            ([7, 8], ["0000:01:00.0", "0000:02:00.0"]),
            ([7, 8, 10], ["0000:01:00.0", "0000:02:00.0", "0000:04:00.0"]),
            ([7, 8, 9, 10], ["0000:01:00.0", "0000:02:00.0", "0000:04:00.0", Self.mdev]),
            ([7, 8, 9, 10], ["0000:01:00.0", "0000:01:00.1", "0000:02:00.0", "0000:04:00.0", Self.mdev]),
        ]
        for (index, variant) in Self.variants.enumerated() {
            let reply = try #require(
                try client.execute(
                    #"{"execute":"device_add","arguments":{"driver":"vfio-pci", \#(variant.arguments)},"id":"v"}"#
                ).last)
            let want = expected[min(index, expected.count - 1)]
            if let error = variant.error {
                let text = error.replacing("ROOT", with: mock.fakeRoot)
                #expect(reply == #"{"id": "v", "error": {"class": "GenericError", "desc": "\#(text)"}}"#, "\(variant)")
            } else {
                #expect(reply == #"{"return": {}, "id": "v"}"#, "\(variant)")
            }
            let sidecarView = try Self.tracked(client)
            #expect(Self.mockGroups(mock) == sidecarView.groups, "\(variant): mock's group nodes vs sidecar")
            #expect(Self.mockDevices(mock) == sidecarView.devices, "\(variant): mock's device fds vs sidecar")
            #expect(sidecarView.groups == want.groups && sidecarView.devices == want.devices, "\(variant)")
        }
    }

    /// Failing variants against real QEMU 7.2 and a mock on the real /sys and /dev: identical replies.
    @Test(.enabled(if: QEMULauncher.shouldRun, "QEMU 7.2 not installed (set QMP_SIDECAR_REQUIRE_QEMU to fail instead)"))
    func failuresAreQEMUs() throws {
        let directory = try makeTempDirectory()
        defer { removeTree(directory) }
        // A device directory with no iommu_group link, and one whose group node does not exist.
        mkdir(directory + "/nogroup", 0o755)
        mkdir(directory + "/lonely", 0o755)
        symlink("../kernel/iommu_groups/987654", directory + "/lonely/iommu_group")
        let absent = "/sys/bus/pci/devices/fffe:ff:1f.7"
        let variants = [
            #"{}"#,
            #"{"host": "zz"}"#,
            #"{"host": "0000:00:20.0"}"#,
            #"{"host": "0000:00:00.8"}"#,
            #"{"host": "fffe:ff:1f.7"}"#,
            #"{"host": "0xfffe:0ff:01f.07"}"#,
            #"{"sysfsdev": "\#(absent)"}"#,
            #"{"host": "fffe:fe:1f.7", "sysfsdev": "\#(absent)"}"#,
            #"{"host": "zz", "sysfsdev": "\#(absent)"}"#,
            #"{"sysfsdev": ""}"#,
            #"{"sysfsdev": 5}"#,
            #"{"sysfsdev": "/sys/bus/mdev/devices/c0ffee00-0000-4000-8000-00000000dead"}"#,
            #"{"sysfsdev": "\#(directory)/nogroup"}"#,
            #"{"sysfsdev": "\#(directory)/lonely/"}"#,
        ]
        let qemu = try QEMULauncher()
        defer { qemu.terminate() }
        let real = try MockTestClient(path: qemu.socketPath)
        let mock = try MockInstance([])
        let fake = try mock.connect()
        for client in [real, fake] { _ = try client.execute(#"{"execute":"qmp_capabilities"}"#) }
        for arguments in variants {
            var object = try JSONValue(parsing: Array(arguments.utf8))
            if case .object(let members) = object {
                object = .object([JSONMember("driver", .string("vfio-pci"))] + members)
            }
            let command =
                #"{"execute":"device_add","arguments":\#(String(decoding: object.qemuBytes, as: UTF8.self)),"id":1}"#
            let expected = try real.execute(command)
            #expect(expected.last?.contains(#""error""#) == true, "QEMU must refuse \(arguments)")
            #expect(try fake.execute(command) == expected, "device_add \(arguments)")
        }
        #expect(mock.openFiles().values.allSatisfy { !$0.hasPrefix("/dev/vfio") && !$0.hasPrefix("/memfd:") })
    }
}
