import CQMPShims

#if canImport(Glibc)
import Glibc
#endif

/// The state of a process as its parent sees it, read without reaping it (`waitid` with `WNOWAIT`).
public enum ChildExitStatus: Sendable, Equatable {
    /// Not a child of this process (or already reaped): its exit status cannot be known.
    case notAChild
    /// A child that has not exited yet.
    case running
    /// A child that exited: its status (128 + the signal number when a signal killed it).
    case exited(Int32)

    /// Looks `pid` up.
    public static func of(_ pid: pid_t) -> ChildExitStatus {
        var status: Int32 = 0
        switch cqmp_child_exit_status(pid, &status) {
        case 1: return .exited(status)
        case 0: return .running
        default: return .notAChild
        }
    }
}
