#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// Which holders of a group a client may be told about: only what it could learn from `/proc` itself.
///
/// That a process holds a node shows only in `/proc/<pid>/fd`, which the kernel lets the process's
/// own user read, and root (CAP_SYS_PTRACE). So a client whose SO_PEERCRED uid is 0 sees every
/// holder; any other client sees the holders running under its own uid; a client without
/// credentials (a TCP peer) sees none. The rest is only counted: that the group is still held is no
/// secret (the timeout itself says so), whose process holds it is.
public struct HolderDisclosure: Sendable, Hashable {
    /// The client's uid (SO_PEERCRED), nil when unknown.
    public var viewer: uid_t?

    public init(viewer: uid_t?) {
        self.viewer = viewer
    }

    /// Everything, for the operator's own log.
    public static let operatorView = HolderDisclosure(viewer: 0)

    /// Whether a holder running as `owner` (nil: unknown) may be named to this viewer.
    public func mayName(owner: uid_t?) -> Bool {
        guard let viewer else { return false }
        return viewer == 0 || owner == viewer
    }

    /// `holders` split into those shown and the number hidden, in their order.
    public func split<Holder>(_ holders: [Holder], owner: (Holder) -> uid_t?) -> (shown: [Holder], hidden: Int) {
        let shown = holders.filter { mayName(owner: owner($0)) }
        return (shown, holders.count - shown.count)
    }
}
