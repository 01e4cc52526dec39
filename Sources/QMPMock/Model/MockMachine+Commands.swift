import QMPWire

/// The built-in commands, `getfd`/`closefd` and fd sets included.
extension MockMachine {
    mutating func command(
        _ name: String,
        _ arguments: [JSONMember],
        client: Int,
        fds: inout [Int32],
        now: QMPTimestamp,
        actions: inout [MockAction]
    ) -> Dispatched {
        let schema = MockCommands.schema[name] ?? []
        var args: [String: JSONValue] = [:]
        if name != "device_add" {
            switch MockCommands.check(arguments, schema) {
            case .success(let checked): args = checked
            case .failure(let reply): return Dispatched(reply: reply)
            }
        }
        switch name {
        case "qmp_capabilities":
            return Dispatched(
                reply: .error("CommandNotFound", "Capabilities negotiation is already complete, command ignored"))
        case "query-status":
            return Dispatched(
                reply: .success(
                    .object([
                        // QAPI member order of StatusInfo.
                        JSONMember("running", .bool(running)), JSONMember("singlestep", .bool(false)),
                        JSONMember("status", .string(running ? "running" : started ? "paused" : "prelaunch")),
                    ])
                )
            )
        case "query-version":
            return Dispatched(reply: .success(configuration.version.json))
        case "query-qmp-schema":
            return Dispatched(
                reply: .success(MockSchema.introspection(nativeGroupEvents: configuration.nativeGroupEvents)))
        case "query-commands":
            // The mock's own table (QEMU lists its ~200); clients such as qmp-shell use it for completion.
            let names = MockCommands.known.sorted().map { JSONValue.object([JSONMember("name", .string($0))]) }
            return Dispatched(reply: .success(.array(names)))
        case "stop":
            // QEMU sends STOP before the reply to stop.
            if running { broadcast(event: "STOP", data: nil, now: now, actions: &actions) }
            running = false
            return Dispatched(reply: .success(.object([])))
        case "cont":
            // QEMU sends RESUME before the reply to cont.
            if !running { broadcast(event: "RESUME", data: nil, now: now, actions: &actions) }
            running = true
            started = true
            return Dispatched(reply: .success(.object([])))
        case "quit":
            broadcast(
                event: "SHUTDOWN",
                data: .object([JSONMember("guest", .bool(false)), JSONMember("reason", .string("host-qmp-quit"))]),
                now: now,
                actions: &actions
            )
            var result = Dispatched(reply: .success(.object([])))
            result.after = { _, _, actions in actions.append(.exit(status: 0)) }
            return result
        case "qom-list":
            return Dispatched(reply: qomList(args["path"]!.stringValue!))
        case "qom-get":
            return Dispatched(reply: qomGet(args["path"]!.stringValue!, args["property"]!.stringValue!))
        case "device_add":
            do {
                try deviceAdd(arguments: .object(arguments), hotplugged: true, client: client, actions: &actions)
            } catch {
                return Dispatched(reply: error)
            }
            return Dispatched(reply: .success(.object([])))
        case "device_del":
            return deviceDel(args["id"]!.stringValue!, now: now, actions: &actions)
        case "getfd":
            guard !fds.isEmpty else {
                return Dispatched(reply: .error("GenericError", "No file descriptor supplied via SCM_RIGHTS"))
            }
            let fdname = args["fdname"]!.stringValue!
            if let first = fdname.first, first.isNumber {
                return Dispatched(
                    reply: .error("GenericError", "Parameter 'fdname' expects a name not starting with a digit"))
            }
            let fd = fds.removeFirst()
            if let old = clients[client]!.fdNames.updateValue(fd, forKey: fdname) { host.close(old) }
            return Dispatched(reply: .success(.object([])))
        case "closefd":
            let fdname = args["fdname"]!.stringValue!
            guard let fd = clients[client]!.fdNames.removeValue(forKey: fdname) else {
                return Dispatched(reply: .error("GenericError", "File descriptor named '\(fdname)' not found"))
            }
            host.close(fd)
            return Dispatched(reply: .success(.object([])))
        case "add-fd":
            guard !fds.isEmpty else {
                return Dispatched(reply: .error("GenericError", "No file descriptor supplied via SCM_RIGHTS"))
            }
            var setID: Int
            if case .integer(let requested)? = args["fdset-id"] {
                setID = Int(requested)
            } else {
                setID = 0
                while fdsets[setID] != nil { setID += 1 }
            }
            let fd = fds.removeFirst()
            fdsets[setID, default: []].append((fd, args["opaque"]?.stringValue))
            return Dispatched(
                reply: .success(
                    .object([JSONMember("fdset-id", .integer(Int64(setID))), JSONMember("fd", .integer(Int64(fd)))])))
        case "remove-fd":
            guard case .integer(let setID)? = args["fdset-id"], var set = fdsets[Int(setID)] else {
                let id = args["fdset-id"].map { String(decoding: $0.qemuBytes, as: UTF8.self) } ?? "?"
                return Dispatched(reply: .error("GenericError", "File descriptor named 'fdset-id:\(id)' not found"))
            }
            if case .integer(let fd)? = args["fd"] {
                guard let index = set.firstIndex(where: { Int64($0.fd) == fd }) else {
                    return Dispatched(
                        reply: .error("GenericError", "File descriptor named 'fdset-id:\(setID), fd:\(fd)' not found")
                    )
                }
                host.close(set.remove(at: index).fd)
            } else {
                set.forEach { host.close($0.fd) }
                set = []
            }
            fdsets[Int(setID)] = set.isEmpty ? nil : set
            return Dispatched(reply: .success(.object([])))
        default:
            return Dispatched(reply: .error("CommandNotFound", "The command \(name) has not been found"))
        }
    }
}
