import QMPProxy

#if canImport(Glibc)
import Glibc
#endif

/// How the sidecar talks to QEMU on its own behalf and to all clients at once.
///
/// - Important: reactor thread only.
public protocol SidecarCommander: AnyObject {
    /// Sends a command of the sidecar's own; `reply` gets the whole reply line (without CRLF). The
    /// reply never reaches a client.
    ///
    /// - Parameter arguments: the text of a JSON object, or nil.
    func sendInternalCommand(_ name: String, arguments: [UInt8]?, reply: @escaping ([UInt8]) -> Void)
    /// Sends one complete event line (ending in CRLF) to every negotiated client.
    func broadcastEvent(_ line: [UInt8])
}

/// What the sidecar tells the VFIO release monitor (issue 4), in the sidecar's own terms.
///
/// An adapter onto `VFIOReleaseMonitor` (VFIOTracking) implements it; tests can use a fake.
///
/// - Important: reactor thread only.
public protocol SidecarVFIOHooks: AnyObject {
    /// Names of commands the monitor answers itself (checked before forwarding).
    var localCommandNames: Set<String> { get }
    /// The sidecar's own negotiation with QEMU succeeded.
    func upstreamReady(qemuPID: pid_t?)
    /// A client's `device_add` got a success reply; `arguments` is its arguments object's text.
    func deviceAddSucceeded(arguments: [UInt8])
    /// A `DEVICE_DELETED` event line (CRLF included); true holds it back (hold mode: the monitor
    /// broadcasts it later itself).
    func deviceDeleted(_ line: [UInt8]) -> Bool
    /// Answers a local command; nil means "not mine" (the client then gets CommandNotFound).
    func localCommand(_ name: String, arguments: [UInt8]?) -> ProxyRouter.LocalReply?
    /// QEMU went away.
    func upstreamClosed()
}
