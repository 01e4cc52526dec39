import QMPWire

/// Every event the model emits goes out through here.
extension MockMachine {
    mutating func sendDeviceDeleted(_ device: Device, now: QMPTimestamp, actions: inout [MockAction]) {
        var data: [JSONMember] = []
        if let id = device.id { data.append(JSONMember("device", .string(id))) }
        data.append(JSONMember("path", .string(device.path)))
        broadcast(event: "DEVICE_DELETED", data: .object(data), now: now, actions: &actions)
        if let group = device.group { groupDeviceDeleted(device, group: group, now: now, actions: &actions) }
    }

    /// Sends an event to every negotiated client (never to one still negotiating, as QEMU).
    func broadcast(event name: String, data: JSONValue?, now: QMPTimestamp, actions: inout [MockAction]) {
        let line = QMPBuilder.event(name: name, data: data, at: now)
        for id in clients.keys.sorted() where clients[id]!.negotiated {
            actions.append(.send(client: id, bytes: line))
        }
    }
}
