#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// What the tracker reads stays inside `--sysfs-root` and `--dev-root`, links included: a link planted
/// in a root (`<dev>/vfio/7 -> /etc/shadow`, a device directory pointing elsewhere) must not make the
/// sidecar stat, watch or list anything outside it.
///
/// ``contains(root:path:)`` is the rule, on paths whose links are already resolved; ``resolved(_:)``
/// resolves them (`realpath(3)`).
public enum RootConfinement {
    /// Whether the resolved absolute `path` is `root` or lies beneath it (`root` resolved too).
    /// Compares whole components: `/sysx` is not inside `/sys`.
    public static func contains(root: String, path: String) -> Bool {
        guard path.hasPrefix("/") else { return false }
        let base = root.hasSuffix("/") ? String(root.dropLast()) : root
        return base.isEmpty || path == base || path.hasPrefix(base + "/")
    }

    /// `path` with every link resolved, or nil when it (or a link on the way) does not exist.
    public static func resolved(_ path: String) -> String? {
        guard let pointer = realpath(path, nil) else { return nil }
        defer { free(pointer) }
        return String(cString: pointer)
    }

    /// Throws unless `path`, links resolved, stays inside `root`; a path that does not exist passes
    /// (nothing is followed).
    static func check(_ path: String, inside root: String, option: String) throws(VFIOTrackingError) {
        guard let real = resolved(path) else { return }
        let realRoot = resolved(root) ?? root
        guard contains(root: realRoot, path: real) else {
            throw VFIOTrackingError(
                .outsideRoot,
                "\(path) resolves to \(real), outside \(option) \(root): not following it (fix the link or the option)")
        }
    }
}
