import QMPWire

/// Whether QEMU's monitor connection ended because QEMU shut down normally, so the sidecar can exit
/// with status 0 (a systemd unit is not marked failed after every VM shutdown).
///
/// QEMU sends `SHUTDOWN` (with `reason`: `host-qmp-quit` after `quit`, `guest-shutdown` after a guest
/// poweroff, `host-signal` after SIGTERM/SIGINT/SIGHUP) before it exits; a connection that closes after
/// it is a normal end. A connection that closes without it (QEMU killed, crashed, or the socket broke)
/// is unexpected, unless QEMU's exit status, when the sidecar can know it, is 0.
/// A `SHUTDOWN` followed by a new negotiation (QEMU started with `-no-shutdown` and resumed with
/// `system_reset`) does not count: each session starts afresh.
public struct QEMUEnding: Sendable, Equatable {
    /// How the connection ended.
    public enum Verdict: Sendable, Equatable {
        /// QEMU shut down normally: the reason (`SHUTDOWN`'s `reason`, or "exit status 0").
        case normal(reason: String)
        /// QEMU went away without shutting down.
        case unexpected
    }

    /// `SHUTDOWN`'s `reason` in this session, once seen ("unknown" before QEMU 4.0, which had none).
    public private(set) var shutdownReason: String?

    public init() {}

    /// A new QMP session with QEMU begins.
    public mutating func sessionStarted() {
        shutdownReason = nil
    }

    /// An event from QEMU (its name and its line).
    public mutating func eventReceived(name: String, line: [UInt8]) {
        guard name == "SHUTDOWN" else { return }
        let data = (try? JSONValue(parsing: line))?["data"]
        shutdownReason = data?["reason"]?.stringValue ?? "unknown"
    }

    /// The verdict once the connection closed.
    ///
    /// - Parameter exitStatus: QEMU's exit status if known (only for a child of the sidecar: waitid on
    ///   its pidfd), nil otherwise.
    public func verdict(exitStatus: Int32? = nil) -> Verdict {
        if let shutdownReason { return .normal(reason: shutdownReason) }
        if exitStatus == 0 { return .normal(reason: "exit status 0") }
        return .unexpected
    }
}
