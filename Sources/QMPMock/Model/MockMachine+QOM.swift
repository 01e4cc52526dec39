import QMPWire
import VFIOTracking

/// The QOM tree as `qom-list` and `qom-get` show it.
extension MockMachine {
    func deviceIndex(resolving path: String) -> Int? {
        if path.hasPrefix("/") { return devices.firstIndex { $0.path == path } }
        let matches = devices.indices.filter {
            devices[$0].path.hasSuffix("/" + path)
        }
        return matches.count == 1 ? matches[0] : nil
    }

    func qomList(_ path: String) -> MockReply {
        func entry(_ name: String, _ type: String) -> JSONValue {
            .object([JSONMember("name", .string(name)), JSONMember("type", .string(type))])
        }
        let containers: [String: [JSONValue]] = [
            "/": [entry("type", "string"), entry("machine", "child<pc-i440fx-7.2-machine>")],
            "/machine": [
                entry("type", "string"), entry("peripheral", "child<container>"),
                entry("peripheral-anon", "child<container>"), entry("unattached", "child<container>"),
            ],
            "/machine/peripheral": [entry("type", "string")]
                + devices.filter { $0.device.id != nil }.map { entry($0.device.id!, "child<\($0.device.driver)>") },
            "/machine/peripheral-anon": [entry("type", "string"), entry("device[0]", "child<qemu-xhci>")]
                + devices.filter { $0.device.id == nil }.map {
                    entry(String($0.path.split(separator: "/").last!), "child<\($0.device.driver)>")
                },
        ]
        if let list = containers[path] { return .success(.array(list)) }
        guard let index = deviceIndex(resolving: path) else {
            return .error("DeviceNotFound", "Device '\(path)' not found")
        }
        var list = [
            entry("type", "string"), entry("parent_bus", "link<bus>"), entry("realized", "bool"),
            entry("hotplugged", "bool"), entry("hotpluggable", "bool"),
        ]
        if devices[index].device.driver == "vfio-pci" {
            list += [entry("host", "str"), entry("sysfsdev", "str"), entry("addr", "int32"), entry("rombar", "uint32")]
        } else {
            list += [entry("port", "str"), entry("serial", "str"), entry("attached", "bool")]
        }
        return .success(.array(list))
    }

    func qomGet(_ path: String, _ property: String) -> MockReply {
        if ["/", "/machine", "/machine/peripheral", "/machine/peripheral-anon"].contains(path) {
            guard property == "type" else {
                return .error("GenericError", "Property 'container.\(property)' not found")
            }
            return .success(
                .string(path == "/" ? "container" : path == "/machine" ? "pc-i440fx-7.2-machine" : "container"))
        }
        guard let index = deviceIndex(resolving: path) else {
            return .error("DeviceNotFound", "Device '\(path)' not found")
        }
        let device = devices[index].device
        switch (property, device.driver) {
        case ("type", _): return .success(.string(device.driver))
        case ("realized", _), ("hotpluggable", _): return .success(.bool(true))
        case ("hotplugged", _): return .success(.bool(device.hotplugged))
        case ("host", "vfio-pci"): return .success(.string(device.host ?? PCIAddress.unset))
        case ("sysfsdev", "vfio-pci"): return .success(.string(device.sysfsdev ?? ""))
        case ("attached", "usb-kbd"): return .success(.bool(true))
        default: return .error("GenericError", "Property '\(device.driver).\(property)' not found")
        }
    }

    static func isIdentifier(_ id: String) -> Bool {
        guard let first = id.unicodeScalars.first, first.properties.isAlphabetic, first.isASCII else { return false }
        return id.unicodeScalars.allSatisfy {
            $0.isASCII
                && ($0.properties.isAlphabetic || ("0"..."9").contains($0) || $0 == "-" || $0 == "." || $0 == "_")
        }
    }
}
