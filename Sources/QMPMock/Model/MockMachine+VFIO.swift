import Glibc
import QMPWire
import VFIOTracking

/// The VFIO device lifecycle: realize (`device_add`), unplug (`device_del`) and finalize.
///
/// Devices resolve with the tracker's rules (``VFIOSysfs/devicePath(host:sysfsdev:)``, ``PCIAddress``), so
/// the mock opens exactly the group the sidecar tracks; the steps and error texts follow QEMU 7.2's
/// vfio-pci realize: the path, `stat`, the `iommu_group` link, the group (opened once), the
/// already-attached check, then one descriptor per device.
extension MockMachine {
    /// The sysfs and dev roots as the tracker reads them.
    var sysfs: VFIOSysfs { VFIOSysfs(sysfsRoot: configuration.sysfsRoot, devRoot: configuration.devRoot) }

    mutating func deviceAdd(
        arguments: JSONValue,
        hotplugged: Bool,
        client: Int?,
        actions: inout [MockAction]
    ) throws(MockReply) {
        func fail(_ desc: String) -> MockReply { .error("GenericError", desc) }
        guard let driverValue = arguments["driver"] else { throw fail("Parameter 'driver' is missing") }
        guard case .string(let driver) = driverValue else {
            throw fail("Invalid parameter type for 'driver', expected: string")
        }
        guard MockCommands.drivers.contains(driver) else { throw fail("'\(driver)' is not a valid device model name") }
        var id: String?
        // QEMU 7.2 reads the id with qdict_get_try_str: a non-string id makes an anonymous device.
        if case .string(let text)? = arguments["id"] {
            guard Self.isIdentifier(text) else { throw fail("Parameter 'id' expects an identifier") }
            guard !devices.contains(where: { $0.device.id == text }) else {
                throw fail("Duplicate device ID '\(text)'")
            }
            id = text
        }
        let path = id.map { "/machine/peripheral/\($0)" } ?? "/machine/peripheral-anon/device[\(nextAnon)]"
        var device = Device(id: id, path: path, driver: driver, hotplugged: hotplugged)
        if driver == "vfio-pci" {
            try realizeVFIO(&device, arguments: arguments, client: client, actions: &actions)
        }
        if id == nil { nextAnon += 1 }
        devices.append((path, device))
    }

    /// A property as QEMU's string properties take it: strings as they are, other JSON as its text.
    private static func stringProperty(_ name: String, of arguments: JSONValue) -> String? {
        guard let value = arguments[name] else { return nil }
        if case .string(let text) = value { return text }
        return String(decoding: value.qemuBytes, as: UTF8.self)
    }

    private mutating func realizeVFIO(
        _ device: inout Device, arguments: JSONValue, client: Int?, actions: inout [MockAction]
    ) throws(MockReply) {
        func fail(_ desc: String) -> MockReply { .error("GenericError", desc) }
        // Setting the properties: a malformed host fails even when sysfsdev is given.
        if let host = Self.stringProperty("host", of: arguments) {
            guard let address = PCIAddress.normalized(host) else {
                throw fail("Property 'vfio-pci.host' doesn't take value '\(host)'")
            }
            device.host = address
        }
        // Realize: sysfsdev wins over host; QEMU takes an empty sysfsdev as a path (that stat refuses).
        let sysfsdev = Self.stringProperty("sysfsdev", of: arguments)
        guard sysfsdev != nil || device.host != nil else { throw fail("No provided host device") }
        let devicePath: String
        if sysfsdev == "" {
            devicePath = ""
        } else {
            do {
                devicePath = try sysfs.devicePath(host: device.host, sysfsdev: sysfsdev)
            } catch {
                throw fail("No provided host device")
            }
        }
        device.sysfsdev = sysfsdev ?? devicePath
        let name = Self.basename(devicePath)
        device.name = name
        let group: Int
        let cdevNode: String?
        switch host.lookup(devicePath: devicePath) {
        case .noDevice(let errno):
            throw fail("vfio \(device.sysfsdev ?? ""): no such host device: \(Self.strerror(errno))")
        case .noGroup(let errno): throw fail("vfio \(name): no iommu_group found: \(Self.strerror(errno))")
        case .found(let number, let node):
            group = number
            cdevNode = node
        }
        if arguments["iommufd"] != nil {
            // iommufd backend: the device's cdev is its descriptor (passed in with getfd, or opened).
            device.deviceFD = try openCdev(cdevNode, fdname: Self.stringProperty("fd", of: arguments), client: client)
            actions.append(.note("opened cdev of \(name) (group \(group)) fd \(device.deviceFD!)"))
            return
        }
        let openedGroup = try attachGroup(group, for: name, actions: &actions)
        if devices.contains(where: { $0.device.group == group && $0.device.name == name }) {
            if openedGroup { detachGroupIfUnused(group, actions: &actions) }
            throw fail("vfio \(name): device is already attached")
        }
        switch host.openDevice(named: name) {
        case .success(let fd):
            device.deviceFD = fd
            device.group = group
            groups[group, default: Group()].members.insert(device.path)
            actions.append(.note("opened device fd \(fd) of \(name) (group \(group))"))
        case .failure(let errno):
            if openedGroup { detachGroupIfUnused(group, actions: &actions) }
            throw fail("vfio \(name): error getting device from group \(group): \(Self.strerror(errno.value))")
        }
    }

    /// The iommufd descriptor of a device: the `getfd` descriptor named `fdname`, or its cdev opened.
    private mutating func openCdev(_ node: String?, fdname: String?, client: Int?) throws(MockReply) -> Int32 {
        if let fdname {
            guard let client, let fd = clients[client]?.fdNames.removeValue(forKey: fdname) else {
                throw .error("GenericError", "File descriptor named '\(fdname)' not found")
            }
            return fd
        }
        guard let node else { throw .error("GenericError", "no vfio-dev cdev found: No such file or directory") }
        switch host.open(node) {
        case .success(let fd): return fd
        case .failure(let errno):
            throw .error("GenericError", "failed to open \(node): \(Self.strerror(errno.value))")
        }
    }

    /// Opens the group node unless it is open already (QEMU opens a group once); true when it opened it now.
    private mutating func attachGroup(_ group: Int, for name: String, actions: inout [MockAction]) throws(MockReply)
        -> Bool
    {
        guard groups[group]?.fd == nil else { return false }
        let groupPath = sysfs.groupNodePath(group)
        switch host.open(groupPath) {
        case .success(let fd):
            groups[group, default: Group()].fd = fd
            actions.append(.note("opened group \(group) (\(groupPath)) fd \(fd) for \(name)"))
            if containerFD == nil, case .success(let container) = host.open(configuration.devRoot + "/vfio/vfio") {
                // A dev root without the container node is fine: only group nodes matter here.
                containerFD = container
            }
            if configuration.faults.secondHolder[group] != nil {
                host.startHolder(group: group, fd: fd)
                actions.append(.note("fault: a second process holds group \(group)"))
            }
            return true
        case .failure(let errno):
            throw .error("GenericError", "vfio \(name): failed to open \(groupPath): \(Self.strerror(errno.value))")
        }
    }

    /// Closes a group's node once it has no device left (and the container with the last group).
    private mutating func detachGroupIfUnused(_ group: Int, actions: inout [MockAction]) {
        guard groups[group]?.members.isEmpty ?? true, let fd = groups[group]?.fd else { return }
        if configuration.faults.leakGroups.contains(group) {
            actions.append(.note("fault: group \(group) fd \(fd) leaked (never closed)"))
            return
        }
        host.close(fd)
        groups[group]?.fd = nil
        // Native group events still need the deleted devices for GROUP_RELEASED.
        if groups[group]?.deleted.isEmpty ?? true { groups[group] = nil }
        actions.append(.note("closed group \(group) fd \(fd)"))
        if let container = containerFD, !groups.values.contains(where: { $0.fd != nil }) {
            host.close(container)
            containerFD = nil
        }
        if let lingering = configuration.faults.secondHolder[group], let seconds = lingering {
            schedule(.stopHolder(group: group), after: Int64(seconds * 1e9), actions: &actions)
        }
    }

    private static func basename(_ path: String) -> String {
        path.split(separator: "/").last.map(String.init) ?? path
    }

    private static func strerror(_ errno: Int32) -> String { String(cString: Glibc.strerror(errno)) }

    mutating func deviceDel(_ idOrPath: String, now: QMPTimestamp, actions: inout [MockAction]) -> Dispatched {
        let index =
            idOrPath.hasPrefix("/")
            ? devices.firstIndex { $0.path == idOrPath }
            : devices.firstIndex { $0.device.id == idOrPath }
        guard let index, devices[index].device.state != .unparented else {
            return Dispatched(reply: .error("DeviceNotFound", "Device '\(idOrPath)' not found"))
        }
        let path = devices[index].path
        var result = Dispatched(reply: .success(.object([])))
        guard devices[index].device.state == .attached else { return result }
        devices[index].device.state = .unplugging
        let delay = Int64(configuration.finalizeDelay * 1e9)
        let eventOrder = configuration.eventOrder
        result.after = { machine, now, actions in
            if eventOrder == .beforeClose, let i = machine.devices.firstIndex(where: { $0.path == path }) {
                machine.devices[i].device.state = .unparented
                machine.sendDeviceDeleted(machine.devices[i].device, now: now, actions: &actions)
            }
            // Always through a timer, even with no delay: QEMU finalizes from an RCU callback, so a
            // command already read may be answered before the close and the event (as measured).
            machine.schedule(.finalize(path: path), after: delay, actions: &actions)
        }
        return result
    }

    /// Finalize, as QEMU's: the device's descriptor closes, then the group's when it was the last device,
    /// then DEVICE_DELETED (unless it went at unparent time).
    mutating func finalize(path: String, now: QMPTimestamp, actions: inout [MockAction]) {
        guard let index = devices.firstIndex(where: { $0.path == path }) else { return }
        let device = devices.remove(at: index).device
        if let fd = device.deviceFD {
            host.close(fd)
            actions.append(.note("closed device fd \(fd) of \(device.name ?? path)"))
        }
        if let group = device.group {
            groups[group]?.members.remove(path)
            detachGroupIfUnused(group, actions: &actions)
        }
        if device.state != .unparented {
            sendDeviceDeleted(device, now: now, actions: &actions)
        }
        if let group = device.group { groupProgressed(group, now: now, actions: &actions) }
    }
}
