import QMPWire

/// What the VFIO release monitor needs from the proxy: a way to ask QEMU things without disturbing
/// clients, and a way to tell every client something.
///
/// VFIOTracking declares it, QMPSidecar implements it (tests use a fake).
///
/// - Important: called on the reactor thread only.
public protocol QMPUpstreamCommander: AnyObject {
    /// Sends a command of the sidecar's own to QEMU (id in the sidecar's namespace). `reply` receives
    /// the whole reply message; it never reaches a client.
    func sendInternalCommand(_ name: String, arguments: JSONValue?, reply: @escaping (QMPMessage) -> Void)
    /// Sends one complete event line (ending in CRLF) to every negotiated client.
    func broadcastEvent(_ line: [UInt8])
}

/// What the proxy does with a `DEVICE_DELETED` event after showing it to the monitor.
public enum EventDisposition: Sendable, Hashable {
    /// Forward it to the clients now.
    case forward
    /// Hold mode: drop it now; the monitor broadcasts the same bytes itself right before the group's
    /// `GROUP_RELEASED`.
    case hold
}

/// The answer to a command the sidecar answers itself (never forwarded to QEMU).
public enum LocalReply: Sendable, Hashable {
    /// `{"return": value}`.
    case success(JSONValue)
    /// `{"error": {"class": errorClass, "desc": desc}}`.
    case failure(errorClass: String, desc: String)
}
