/// How many open file descriptions a watched node has, learned from inotify alone.
///
/// `IN_OPEN` fires once per `open(2)` of the inode (a new open file description); `IN_CLOSE_*` fires
/// once per description, when its *last* reference goes — copies made with `dup`, `fork`, SCM_RIGHTS or
/// `pidfd_getfd` share the description, add no open event and delay the close event until the last
/// copy is closed. So opens minus closes, counted from a moment the count was known, is the number of
/// descriptions still open anywhere: zero means nobody (QEMU or any other process) holds the node, with
/// no `/proc` scan at all.
///
/// The count is known when the watch was placed before anything could have opened the node (before
/// the `device_add` that opens it is forwarded). It is unknown after a watch placed on a node already
/// in use (cold-plug discovery, a sidecar restarted with devices attached) and after the kernel dropped
/// events (`IN_Q_OVERFLOW`); then a holder scan decides (``verified(held:)``). A legacy group node opens
/// exclusively (a second open fails with EBUSY), so its close event always means "no description left".
///
/// Pure: no I/O.
public struct OpenDescriptionCount: Sendable, Hashable {
    /// What is known.
    public enum Knowledge: Sendable, Hashable {
        /// Exactly this many descriptions are open.
        case exact(Int)
        /// Not known: a holder scan must decide.
        case unknown
    }

    /// The current knowledge.
    public private(set) var knowledge: Knowledge
    /// Whether the node opens exclusively (a legacy VFIO group node).
    public let exclusive: Bool
    /// `IN_OPEN` events seen since the watch was placed.
    public private(set) var opensSeen = 0

    /// - Parameters:
    ///   - watchedBeforeUse: the watch was placed before anyone of interest could open the node.
    ///   - exclusive: the node is a legacy group node (`/dev/vfio/<N>`, a character device).
    public init(watchedBeforeUse: Bool, exclusive: Bool) {
        self.knowledge = watchedBeforeUse ? .exact(0) : .unknown
        self.exclusive = exclusive
    }

    /// An `IN_OPEN` event.
    public mutating func opened() {
        opensSeen += 1
        if case .exact(let count) = knowledge {
            knowledge = .exact(exclusive ? 1 : count + 1)
        }
    }

    /// An `IN_CLOSE_WRITE`/`IN_CLOSE_NOWRITE` event: the last reference of one description went.
    public mutating func closed() {
        switch knowledge {
        case .exact(let count): knowledge = .exact(max(0, count - 1))
        case .unknown: if exclusive { knowledge = .exact(0) }
        }
    }

    /// The kernel dropped events (`IN_Q_OVERFLOW`): opens and closes may be missing.
    public mutating func eventsLost() {
        knowledge = .unknown
    }

    /// A `device_add` that needed the node succeeded but no open was seen: it was opened before the
    /// watch (QEMU already held it, or the fd was opened by someone else and passed in).
    public mutating func openedBeforeWatch() {
        if opensSeen == 0 { knowledge = .unknown }
    }

    /// The result of a holder scan: whether any process holds the node. Nobody holding means zero;
    /// someone holding an exclusive node means one; otherwise the number stays unknown (a scan sees
    /// fds, and several fds may share one description).
    public mutating func verified(held: Bool) {
        if !held {
            knowledge = .exact(0)
        } else if exclusive {
            knowledge = .exact(1)
        }
    }

    /// Whether the node is certainly open somewhere (nil: unknown).
    public var isOpen: Bool? {
        switch knowledge {
        case .exact(let count): count > 0
        case .unknown: nil
        }
    }
}
