import QMPWire
import VFIOTracking

/// What the VFIO release driver needs from the proxy: a way to ask QEMU things without disturbing
/// clients, and a way to tell every client something.
///
/// ``SidecarCore`` implements it (through ``CommanderLink``); tests use a fake.
///
/// - Important: called on the reactor thread only.
public protocol QMPUpstreamCommander: AnyObject {
    /// Sends a command of the sidecar's own to QEMU (id in the sidecar's namespace). `reply` receives
    /// the whole reply message; it never reaches a client.
    func sendInternalCommand(_ name: String, arguments: JSONValue?, reply: @escaping (QMPMessage) -> Void)
    /// Sends one complete event line (ending in CRLF) to every negotiated client.
    func broadcastEvent(_ line: [UInt8])
    /// Sends every negotiated client an event line made for what it may be told
    /// (``HolderDisclosure`` of its SO_PEERCRED uid); `line` is called once per distinct viewer.
    func broadcastEvent(disclosing line: (HolderDisclosure) -> [UInt8])
}
