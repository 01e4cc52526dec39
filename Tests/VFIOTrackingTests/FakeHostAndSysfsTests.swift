import Glibc
import Testing
import VFIOFakeHost
import VFIOTracking

@Suite("Fake host trees and sysfs resolution")
struct FakeHostAndSysfsTests {
    @Test func specParsesGroupsDevicesAndMdevs() throws {
        let groups = try FakeHost.parse("7=0000:01:00.0,01:00.1;8=6F2A3D1C-0000-4000-8000-000000000001")
        #expect(groups.count == 2)
        #expect(groups[0] == FakeIOMMUGroup(number: 7, members: [.pci("0000:01:00.0"), .pci("0000:01:00.1")]))
        #expect(groups[1].members == [.mdev("6f2a3d1c-0000-4000-8000-000000000001")])
    }

    @Test(arguments: ["", "7", "x=0000:01:00.0", "7=", "7=zz:00.0", "7=0000:01:00.0;7=0000:02:00.0"])
    func badSpecsAreRejected(spec: String) {
        #expect(throws: FakeHostError.self) {
            let host = try FakeHost(spec: spec)
            host.removeTree()
        }
    }

    @Test func treeIsKernelShaped() throws {
        let host = try FakeHost(spec: "7=0000:01:00.0,0000:01:00.1")
        defer { host.removeTree() }
        let link = try #require(readLink("\(host.sysfsRoot)/bus/pci/devices/0000:01:00.0"))
        #expect(link == "../../../devices/pci0000:00/0000:01:00.0")
        let groupLink = try #require(readLink("\(host.sysfsRoot)/bus/pci/devices/0000:01:00.0/iommu_group"))
        #expect(groupLink == "../../../kernel/iommu_groups/7")
        var info = stat()
        #expect(stat("\(host.sysfsRoot)/bus/pci/devices/0000:01:00.1/iommu_group/devices/0000:01:00.0", &info) == 0)
        #expect(stat(host.groupNodePath(7), &info) == 0 && (info.st_mode & S_IFMT) == S_IFREG)
        #expect(host.cdevNames == ["0000:01:00.0": "vfio0", "0000:01:00.1": "vfio1"])
        #expect(stat(try #require(host.cdevNodePath(ofDevice: "01:00.1")), &info) == 0)
        #expect(host.group(ofDevice: "01:00.1") == 7)
    }

    @Test func sysfsResolvesHostSysfsdevMembersAndCdev() throws {
        let uuid = "6f2a3d1c-0000-4000-8000-000000000001"
        let host = try FakeHost(spec: "7=0000:01:00.0,0000:01:00.1;12=\(uuid)")
        defer { host.removeTree() }
        let sysfs = VFIOSysfs(sysfsRoot: host.sysfsRoot + "/", devRoot: host.devRoot)

        let byHost = try sysfs.resolve(host: "01:00.1", sysfsdev: nil)
        #expect(byHost.group == 7)
        #expect(byHost.name == "0000:01:00.1")
        #expect(byHost.cdevNode == "\(host.devRoot)/vfio/devices/vfio1")

        let bySysfsdev = try sysfs.resolve(host: nil, sysfsdev: "/sys/bus/pci/devices/0000:01:00.0")
        #expect(bySysfsdev.sysfsPath == "\(host.sysfsRoot)/bus/pci/devices/0000:01:00.0")
        #expect(bySysfsdev.group == 7)

        let mdev = try sysfs.resolve(host: nil, sysfsdev: "/sys/bus/mdev/devices/\(uuid)")
        #expect(mdev.group == 12 && mdev.name == uuid && mdev.cdevNode == nil)

        #expect(sysfs.members(ofGroup: 7) == ["0000:01:00.0", "0000:01:00.1"])
        #expect(sysfs.groupNodePath(7) == host.groupNodePath(7))
    }

    @Test func missingDeviceNamesTheFix() throws {
        let host = try FakeHost(spec: "7=0000:01:00.0")
        defer { host.removeTree() }
        let sysfs = VFIOSysfs(sysfsRoot: host.sysfsRoot, devRoot: host.devRoot)
        let error = try #require(throws: VFIOTrackingError.self) { try sysfs.resolve(host: "02:00.0", sysfsdev: nil) }
        #expect(error.code == .deviceNotFound)
        #expect(error.description.contains("--sysfs-root"))
        #expect(throws: VFIOTrackingError.self) { try sysfs.resolve(host: PCIAddress.unset, sysfsdev: nil) }
    }

    @Test func pciAddressesNormalize() {
        #expect(PCIAddress.normalized("1:0.1") == "0000:01:00.1")
        #expect(PCIAddress.normalized("0000:AF:1F.7") == "0000:af:1f.7")
        #expect(PCIAddress.normalized("00:20.0") == nil)
        #expect(PCIAddress.normalized("0000:01:00.8") == nil)
        #expect(PCIAddress.normalized("nonsense") == nil)
    }

    private func readLink(_ path: String) -> String? {
        var buffer = [CChar](repeating: 0, count: 4096)
        let count = readlink(path, &buffer, buffer.count - 1)
        guard count > 0 else { return nil }
        return String(decoding: buffer[0..<count].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}
