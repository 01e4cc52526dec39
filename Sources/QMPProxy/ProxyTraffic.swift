/// Messages the router has seen, by direction: plain counters, read by the metrics when they are
/// written (nothing per message beyond an increment).
public struct ProxyTraffic: Sendable, Equatable {
    /// Messages (commands, negotiation, malformed input) read from clients.
    public var fromClients = 0
    /// Messages (greeting, replies, events) read from QEMU.
    public var fromQEMU = 0
    /// Commands sent to QEMU (clients' and the sidecar's own).
    public var toQEMU = 0
    /// Lines sent to clients (greetings, replies, events; an event sent to three clients counts three).
    public var toClients = 0

    public init() {}
}

/// What one client has waiting in the router: commands sent to QEMU whose reply has not come, and
/// commands not yet sent (held by the discovery gate or queued behind QEMU).
public struct ClientLoad: Sendable, Equatable {
    public var inFlight = 0
    public var queued = 0

    public init(inFlight: Int = 0, queued: Int = 0) {
        self.inFlight = inFlight
        self.queued = queued
    }
}
