import Glibc
import QMPWire

/// The VFIO device lifecycle: realize (`device_add`), unplug (`device_del`) and finalize.
extension MockMachine {
    /// Canonical `dddd:bb:ss.f` from QEMU's accepted `[dddd:]bb:ss.f`, or nil.
    static func canonicalBDF(_ text: String) -> String? {
        let parts = text.split(separator: ":", omittingEmptySubsequences: false)
        guard parts.count == 2 || parts.count == 3 else { return nil }
        let domain = parts.count == 3 ? String(parts[0]) : "0000"
        let bus = String(parts[parts.count - 2])
        let slotFunction = parts[parts.count - 1].split(separator: ".", omittingEmptySubsequences: false)
        guard slotFunction.count == 2, let d = UInt32(domain, radix: 16), let b = UInt32(bus, radix: 16),
            let s = UInt32(slotFunction[0], radix: 16), let f = UInt32(slotFunction[1], radix: 10),
            d <= 0xFFFF, b <= 0xFF, s <= 0x1F, f <= 7
        else { return nil }
        func hex(_ v: UInt32, _ width: Int) -> String {
            let digits = String(v, radix: 16)
            return String(repeating: "0", count: max(0, width - digits.count)) + digits
        }
        return "\(hex(d, 4)):\(hex(b, 2)):\(hex(s, 2)).\(f)"
    }

    mutating func deviceAdd(
        arguments: JSONValue,
        hotplugged: Bool,
        client: Int?,
        actions: inout [MockAction]
    ) -> JSONValue? {
        func fail(_ desc: String) -> JSONValue? {
            .object([JSONMember("class", .string("GenericError")), JSONMember("desc", .string(desc))])
        }
        guard let driverValue = arguments["driver"] else { return fail("Parameter 'driver' is missing") }
        guard case .string(let driver) = driverValue else {
            return fail("Invalid parameter type for 'driver', expected: string")
        }
        guard MockCommands.drivers.contains(driver) else { return fail("'\(driver)' is not a valid device model name") }
        var id: String?
        // QEMU 7.2 reads the id with qdict_get_try_str: a non-string id makes an anonymous device.
        if case .string(let text)? = arguments["id"] {
            guard Self.isIdentifier(text) else { return fail("Parameter 'id' expects an identifier") }
            guard !devices.contains(where: { $0.device.id == text }) else {
                return fail("Duplicate device ID '\(text)'")
            }
            id = text
        }
        func stringProperty(_ name: String) -> String? {
            guard let value = arguments[name] else { return nil }
            if case .string(let s) = value { return s }
            return String(decoding: value.qemuBytes, as: UTF8.self)
        }
        let path = id.map { "/machine/peripheral/\($0)" } ?? "/machine/peripheral-anon/device[\(nextAnon)]"
        var device = Device(id: id, path: path, driver: driver, hotplugged: hotplugged)
        if driver == "vfio-pci" {
            let sysfsDevices = configuration.sysfsRoot + "/bus/pci/devices/"
            let devicePath: String
            if let host = stringProperty("host") {
                guard let bdf = Self.canonicalBDF(host) else {
                    return fail("Property 'vfio-pci.host' doesn't take value '\(host)'")
                }
                device.bdf = bdf
                device.sysfsdev = sysfsDevices + bdf
                devicePath = sysfsDevices + bdf
            } else if let sysfsdev = stringProperty("sysfsdev") {
                // QEMU keeps the path as given; a PCI device's address is read from its last component,
                // an mdev (UUID) has none. A path under /sys is looked up under the mock's sysfs root.
                device.sysfsdev = sysfsdev
                let last = sysfsdev.split(separator: "/").last.map(String.init) ?? sysfsdev
                device.bdf = Self.canonicalBDF(last)
                device.sysfsName = last
                devicePath =
                    sysfsdev.hasPrefix("/sys/") && configuration.sysfsRoot != "/sys"
                    ? configuration.sysfsRoot + sysfsdev.dropFirst(4) : sysfsdev
            } else {
                return fail(
                    "No provided host device - Use -device vfio-pci,host=DDDD:BB:DD.F or -device vfio-pci,sysfsdev=PATH_TO_DEVICE"
                )
            }
            let bdf = device.bdf ?? device.sysfsName ?? ""
            let name = device.sysfsdev!
            if devices.contains(where: {
                ($0.device.bdf ?? $0.device.sysfsName) == bdf && $0.device.driver == "vfio-pci"
            }) {
                return fail("vfio \(bdf): device is already attached")
            }
            let group: Int
            let cdev: String?
            switch host.lookup(devicePath: devicePath) {
            case .noDevice: return fail("vfio \(name): no such host device: No such file or directory")
            case .noGroup: return fail("vfio \(name): no iommu_group found: No such file or directory")
            case .found(let g, let c):
                group = g
                cdev = c
            }
            device.group = group
            if arguments["iommufd"] != nil {
                // iommufd backend: one descriptor per device on its cdev, possibly passed in with getfd.
                if let fdname = stringProperty("fd") {
                    guard let client, let fd = clients[client]?.fdNames.removeValue(forKey: fdname) else {
                        return fail("File descriptor named '\(fdname)' not found")
                    }
                    device.cdevFD = fd
                } else {
                    guard let cdev else {
                        return fail("vfio \(name): no vfio-dev cdev found: No such file or directory")
                    }
                    let cdevPath = configuration.devRoot + "/vfio/devices/" + cdev
                    switch host.open(cdevPath) {
                    case .success(let fd): device.cdevFD = fd
                    case .failure(let errno):
                        return fail(
                            "vfio \(name): failed to open \(cdevPath): \(String(cString: strerror(errno.value)))")
                    }
                }
                actions.append(.note("opened cdev of \(bdf) (group \(group)) fd \(device.cdevFD!)"))
                device.group = nil
            } else if groups[group]?.fd == nil {
                let groupPath = configuration.devRoot + "/vfio/\(group)"
                switch host.open(groupPath) {
                case .success(let fd):
                    groups[group, default: Group()].fd = fd
                    actions.append(.note("opened group \(group) (\(groupPath)) fd \(fd) for \(bdf)"))
                    if containerFD == nil,
                        case .success(let container) = host.open(configuration.devRoot + "/vfio/vfio")
                    {
                        // A dev root without the container node is fine: only group nodes matter here.
                        containerFD = container
                    }
                    if configuration.faults.secondHolder[group] != nil {
                        host.startHolder(group: group, fd: fd)
                        actions.append(.note("fault: a second process holds group \(group)"))
                    }
                case .failure(let errno):
                    return fail(
                        "vfio \(bdf): group \(group) is not viable: failed to open \(groupPath): \(String(cString: strerror(errno.value)))"
                    )
                }
            }
            if let group = device.group { groups[group, default: Group()].members.insert(path) }
        }
        if id == nil { nextAnon += 1 }
        devices.append((path, device))
        return nil
    }

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

    mutating func finalize(path: String, now: QMPTimestamp, actions: inout [MockAction]) {
        guard let index = devices.firstIndex(where: { $0.path == path }) else { return }
        let device = devices.remove(at: index).device
        if let fd = device.cdevFD {
            host.close(fd)
            actions.append(.note("closed cdev fd \(fd) of \(device.bdf ?? path)"))
        }
        if let group = device.group {
            groups[group]?.members.remove(path)
            if groups[group]?.members.isEmpty == true, let fd = groups[group]?.fd {
                if configuration.faults.leakGroups.contains(group) {
                    actions.append(.note("fault: group \(group) fd \(fd) leaked (never closed)"))
                } else {
                    host.close(fd)
                    groups[group]?.fd = nil
                    actions.append(.note("closed group \(group) fd \(fd)"))
                    if let container = containerFD, !groups.values.contains(where: { $0.fd != nil }) {
                        host.close(container)
                        containerFD = nil
                    }
                    if let lingering = configuration.faults.secondHolder[group], let seconds = lingering {
                        schedule(.stopHolder(group: group), after: Int64(seconds * 1e9), actions: &actions)
                    }
                }
            }
        }
        if device.state != .unparented {
            sendDeviceDeleted(device, now: now, actions: &actions)
        }
    }
}
