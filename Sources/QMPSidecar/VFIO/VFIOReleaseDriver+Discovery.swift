import Logging
import QMPWire
import VFIOTracking

/// One cold-plug discovery after an upstream negotiation: internal commands whose replies are
/// outstanding, and the completion to call when none are.
final class ColdPlugDiscovery {
    var outstanding = 0
    var completion: (() -> Void)?
    /// QOM paths whose `DEVICE_DELETED` came while discovery was running.
    var deleted: Set<String> = []

    /// Discovery may still be asking about this device: it must not track it afterwards.
    func deletedWhileRunning(_ path: String, logger: Logger) {
        deleted.insert(path)
        logger.info(
            "DEVICE_DELETED during cold-plug discovery for a device not (yet) tracked; it will not be tracked",
            metadata: ["device": "\(path)"])
    }
}

/// Cold-plugged (or already attached, after a restart) VFIO devices, found with `qom-list` and
/// `qom-get`. Their nodes were opened before any watch: their counts start unknown and one bounded
/// scan of QEMU's fds (the fallback) learns who holds them.
extension VFIOReleaseDriver {
    /// Whether cold-plug discovery is still waiting for replies.
    public var isDiscovering: Bool { discovery != nil }

    func startDiscovery(completion: (() -> Void)?) {
        let batch = ColdPlugDiscovery()
        batch.completion = completion
        discovery = batch
        if configuration.discoverColdPlugged {
            discover(under: "/machine/peripheral", batch: batch)
            discover(under: "/machine/peripheral-anon", batch: batch)
        }
        if batch.outstanding == 0 { finishDiscovery(batch) }
    }

    /// An anonymous hot-plugged device: QEMU named it `/machine/peripheral-anon/device[N]`; find which.
    func discoverAnonymous() {
        discover(under: "/machine/peripheral-anon", batch: nil)
    }

    private func finishDiscovery(_ batch: ColdPlugDiscovery) {
        guard discovery === batch else { return }
        discovery = nil
        if !batch.deleted.isEmpty {
            logger.debug(
                "cold-plug discovery done; devices deleted meanwhile were not tracked",
                metadata: ["devices": "\(batch.deleted.sorted())"])
        }
        let completion = batch.completion
        batch.completion = nil
        completion?()
    }

    private func done(_ batch: ColdPlugDiscovery?) {
        guard let batch else { return }
        batch.outstanding -= 1
        if batch.outstanding == 0 { finishDiscovery(batch) }
    }

    private func discover(under parent: String, batch: ColdPlugDiscovery?) {
        guard let commander else { return }
        batch?.outstanding += 1
        commander.sendInternalCommand("qom-list", arguments: .object([JSONMember("path", .string(parent))])) {
            [weak self] reply in
            guard let self else { return }
            defer { self.done(batch) }
            guard let entries = reply.jsonValue(.returnValue)?.arrayValue else {
                self.logger.debug("qom-list failed", metadata: ["path": "\(parent)"])
                return
            }
            for entry in entries {
                guard let name = entry["name"]?.stringValue, let type = entry["type"]?.stringValue,
                    type.hasPrefix("child<vfio-"), type.hasSuffix(">")
                else { continue }
                let driver = String(type.dropFirst("child<".count).dropLast())
                let path = parent + "/" + name
                guard self.registry.device(atPath: path) == nil else { continue }
                let id = parent == "/machine/peripheral" ? name : nil
                self.fetchProperties(of: path, driver: driver, id: id, batch: batch)
            }
        }
    }

    private func fetchProperties(of path: String, driver: String, id: String?, batch: ColdPlugDiscovery?) {
        guard let commander else { return }
        batch?.outstanding += 1
        func get(_ property: String, _ done: @escaping (String?) -> Void) {
            commander.sendInternalCommand(
                "qom-get",
                arguments: .object([JSONMember("path", .string(path)), JSONMember("property", .string(property))])
            ) { reply in done(reply.jsonValue(.returnValue)?.stringValue) }
        }
        get("host") { [weak self] host in
            get("sysfsdev") { sysfsdev in
                guard let self else { return }
                defer { self.done(batch) }
                guard self.registry.device(atPath: path) == nil else { return }
                if let batch, batch.deleted.contains(path) {
                    self.logger.info(
                        "cold-plugged VFIO device deleted before discovery finished: not tracked",
                        metadata: ["device": "\(path)"])
                    return
                }
                let description = VFIODeviceDescription(driver: driver, id: id, host: host, sysfsdev: sysfsdev)
                guard description.isVFIO else {
                    self.logger.debug(
                        "discovered device has no host/sysfsdev (gone?): not tracked", metadata: ["device": "\(path)"])
                    return
                }
                do {
                    let resolved = try self.sysfs.resolve(host: description.host, sysfsdev: description.sysfsdev)
                    self.track(description, resolved: resolved, at: path)
                } catch {
                    self.logger.warning(
                        "VFIO device not tracked: cannot resolve its IOMMU group",
                        metadata: ["device": "\(path)", "error": "\(error)"])
                }
            }
        }
    }
}
