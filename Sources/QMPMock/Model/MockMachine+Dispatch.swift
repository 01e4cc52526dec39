import QMPWire

/// Sessions and dispatch: per-client queues, negotiation, QEMU's dispatch checks, replies in order.
extension MockMachine {
    mutating func drain(_ client: Int, now: QMPTimestamp, actions: inout [MockAction]) {
        while let state = clients[client], !state.busy, let head = state.queue.first {
            if case .message(let message, _) = head.unit, let name = commandName(message),
                let delay = configuration.faults.delay(for: name)
            {
                clients[client]!.busy = true
                actions.append(.note("slow reply: \(name) answered after \(Double(delay) / 1e9) s"))
                schedule(.resume(client: client), after: delay, actions: &actions)
                return
            }
            clients[client]!.queue.removeFirst()
            execute(head.unit, fds: head.fds, client: client, now: now, actions: &actions)
        }
    }

    func commandName(_ message: JSONValue) -> String? {
        (message["execute"] ?? message["exec-oob"])?.stringValue
    }

    mutating func execute(
        _ unit: MockInputUnit,
        fds: [Int32],
        client: Int,
        now: QMPTimestamp,
        actions: inout [MockAction]
    ) {
        var fds = fds
        defer { fds.forEach(host.close) }
        switch unit {
        case .invalid(let desc):
            actions.append(.send(client: client, bytes: MockReply.error("GenericError", desc).line(id: nil)))
        case .message(let message, let id):
            guard case .object(let members) = message else {
                let reply = MockReply.error("GenericError", "QMP input must be a JSON object")
                actions.append(.send(client: client, bytes: reply.line(id: nil)))
                return
            }
            let name = commandName(message) ?? ""
            if configuration.faults.exitOnCommand.contains(name) {
                actions.append(.note("fault: exiting on \(name)"))
                actions.append(.exit(status: 3))
                return
            }
            let result = dispatch(members, client: client, fds: &fds, now: now, actions: &actions)
            let bytes = result.reply.line(id: id)
            if configuration.faults.dropMidReply.contains(name) {
                actions.append(.note("fault: dropping the connection in the middle of the \(name) reply"))
                actions.append(.send(client: client, bytes: Array(bytes.prefix(bytes.count / 2))))
                actions.append(.disconnect(client: client))
                return
            }
            actions.append(.send(client: client, bytes: bytes))
            for event in result.events {
                if event.delayNanoseconds <= 0 {
                    broadcast(event: event.name, data: event.data, now: now, actions: &actions)
                } else {
                    schedule(.event(event), after: max(event.delayNanoseconds, 0), actions: &actions)
                }
            }
            result.after(&self, now, &actions)
        }
    }

    struct Dispatched {
        var reply: MockReply
        var events: [MockScriptEvent] = []
        /// Work that QEMU does after the reply is on its way (unplug of usb devices, finalize with no delay).
        var after: (inout MockMachine, QMPTimestamp, inout [MockAction]) -> Void = { _, _, _ in }
    }

    mutating func dispatch(
        _ members: [JSONMember],
        client: Int,
        fds: inout [Int32],
        now: QMPTimestamp,
        actions: inout [MockAction]
    ) -> Dispatched {
        let allowOOB = clients[client]!.oob
        // qmp_dispatch_check_obj: members in QDict order.
        if let desc = QMPDispatchCheck.firstError(members, allowOOB: allowOOB) {
            return Dispatched(reply: .error("GenericError", desc))
        }
        let message = JSONValue.object(members)
        let hasOOB = message["exec-oob"] != nil
        let name = commandName(message)!
        var arguments: [JSONMember] = []
        if case .object(let args)? = message["arguments"] { arguments = args }

        if !clients[client]!.negotiated {
            guard name == "qmp_capabilities" else {
                return Dispatched(
                    reply: .error("CommandNotFound", "Expecting capabilities negotiation with 'qmp_capabilities'"))
            }
            if hasOOB {
                return Dispatched(reply: .error("GenericError", "The command \(name) does not support OOB"))
            }
            return negotiate(arguments, client: client, actions: &actions)
        }
        // Scripts answer any in-band command, including ones the model does not know.
        var stepEvents: [MockScriptEvent] = []
        if !hasOOB, var current = script {
            let decision = current.decide(command: name, arguments: message["arguments"], fdCount: fds.count)
            stepEvents = current.takePendingEvents()
            script = current
            if let decision { return Dispatched(reply: decision.reply, events: decision.events) }
        }
        guard MockCommands.known.contains(name) else {
            return Dispatched(reply: .error("CommandNotFound", "The command \(name) has not been found"))
        }
        if hasOOB {
            return Dispatched(reply: .error("GenericError", "The command \(name) does not support OOB"))
        }
        var result = command(name, arguments, client: client, fds: &fds, now: now, actions: &actions)
        result.events += stepEvents
        return result
    }

    mutating func negotiate(_ arguments: [JSONMember], client: Int, actions: inout [MockAction])
        -> Dispatched
    {
        // The mock's greeting always offers OOB.
        let oob: Bool
        switch QMPDispatchCheck.capabilities(arguments, offered: ["oob"]) {
        case .failure(let desc): return Dispatched(reply: .error("GenericError", desc))
        case .enabled(let enabled): oob = enabled.contains("oob")
        }
        clients[client]!.negotiated = true
        clients[client]!.oob = oob
        var events: [MockScriptEvent] = []
        if timersOnNegotiation, var current = script {
            timersOnNegotiation = false
            events = current.eventsAfterNegotiation()
            script = current
        }
        var result = Dispatched(reply: .success(.object([])))
        result.after = { machine, _, actions in
            for event in events {
                machine.schedule(.event(event), after: max(event.delayNanoseconds, 0), actions: &actions)
            }
        }
        return result
    }
}
