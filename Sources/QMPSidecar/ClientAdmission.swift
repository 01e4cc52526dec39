import QMPRuntime

#if canImport(Glibc)
import Glibc
#endif

/// Who may become a client, decided on `accept` before anything is sent (a refused peer never sees
/// the greeting).
///
/// The socket file's mode and group (`--socket-mode`, `--socket-group`) decide who can connect at
/// all; `--allow-uid` narrows that to the listed users by the kernel's SO_PEERCRED record, which a
/// peer cannot forge; `--max-clients` bounds the sessions (each costs a socket and buffers).
public struct ClientAdmission: Sendable, Equatable {
    /// `--allow-uid` (repeatable); empty admits every peer that could open the socket.
    public var allowedUIDs: Set<uid_t>
    /// `--max-clients`.
    public var maxClients: Int

    public enum Decision: Sendable, Equatable {
        case admit
        case refuse(reason: String)
    }

    public init(allowedUIDs: Set<uid_t> = [], maxClients: Int = 128) {
        self.allowedUIDs = allowedUIDs
        self.maxClients = maxClients
    }

    /// The decision for a new peer (`nil` credentials: not a unix socket, or SO_PEERCRED failed).
    public func decide(peer: PeerCredentials?, connectedClients: Int) -> Decision {
        if !allowedUIDs.isEmpty {
            guard let peer else {
                return .refuse(reason: "peer credentials unknown (not a unix socket) and --allow-uid is set")
            }
            guard allowedUIDs.contains(peer.uid) else {
                return .refuse(reason: "uid \(peer.uid) is not allowed (--allow-uid)")
            }
        }
        guard connectedClients < maxClients else {
            return .refuse(reason: "--max-clients \(maxClients) reached")
        }
        return .admit
    }
}
