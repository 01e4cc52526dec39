import Logging

#if canImport(Glibc)
import Glibc
#endif

/// Puts a listener at the path where QEMU already listens, keeping QEMU reachable under another name.
///
/// `init` binds a new listening socket under a temporary name, hard-links QEMU's socket file to
/// ``upstreamPath`` (`PATH.qmp-sidecar-upstream`), then renames the new socket onto `PATH`: clients
/// never see `PATH` missing, and QEMU's socket is never gone either. (If hard links are refused it falls
/// back to renaming QEMU's socket aside, with a short window where `PATH` is missing.)
/// ``restore()`` renames QEMU's socket back onto `PATH` (atomically replacing ours).
///
/// QEMU 7.2 unlinks its `-qmp` path on a clean exit (checked here): after a take-over that removes
/// *our* socket file, so new clients get ENOENT once QEMU has quit, as they would without the sidecar.
///
/// - Important: The caller owns ``listeningFD`` (give it to a ``Listener`` without `unlinkPath`:
///   `restore()` handles the file). Call ``restore()`` on every exit path; it is idempotent.
///   Not thread-safe: use from one thread.
public final class SocketTakeOver {
    /// The path clients use; after `init` our listener is bound there.
    public let path: String
    /// Where QEMU's socket now lives: connect the upstream here.
    public let upstreamPath: String
    /// Our listening socket (nonblocking, close-on-exec); the caller owns it.
    public let listeningFD: Int32
    private let ourInode: ino_t
    private var restored = false

    /// The suffix added to `PATH` for QEMU's socket.
    public static let defaultSuffix = ".qmp-sidecar-upstream"

    /// Takes over `path`.
    ///
    /// - Parameters:
    ///   - path: where QEMU listens (`-qmp unix:PATH,server=on`).
    ///   - suffix: appended to `path` to name QEMU's socket while we own `path`.
    ///   - mode: permissions of our socket; nil copies QEMU's socket's mode (and owner, when permitted).
    ///   - group: the group of our socket (`--socket-group`); nil leaves it as created (or QEMU's).
    /// - Throws: ``RuntimeError`` `.takeOver` when nothing listens at `path`, when the upstream name is
    ///   already taken (a previous run did not restore), or a system call fails.
    public init(
        path: String, suffix: String = SocketTakeOver.defaultSuffix, mode: mode_t? = nil, group: gid_t? = nil
    ) throws(RuntimeError) {
        self.path = path
        self.upstreamPath = path + suffix
        try Sockets.checkPathLength(upstreamPath)
        var qemu = stat()
        guard lstat(path, &qemu) == 0 else {
            throw RuntimeError(
                code: .takeOver,
                message:
                    "cannot take over \(path): \(String(cString: strerror(errno))); start QEMU with -qmp unix:\(path),server=on,wait=off first",
                call: "lstat", errno: errno)
        }
        guard qemu.st_mode & S_IFMT == S_IFSOCK else {
            throw RuntimeError(code: .takeOver, message: "cannot take over \(path): it is not a unix socket")
        }
        var existing = stat()
        if lstat(upstreamPath, &existing) == 0 {
            throw RuntimeError(
                code: .takeOver,
                message:
                    "cannot take over \(path): \(upstreamPath) already exists (a previous qmp-sidecar did not restore it?); if QEMU still listens there, move it back with: mv \(upstreamPath) \(path)"
            )
        }
        guard Sockets.isLive(path) else {
            throw RuntimeError(
                code: .takeOver,
                message: "cannot take over \(path): nobody listens there (is QEMU running?)")
        }
        let temporary = path + ".qmp-sidecar-new"
        try Sockets.checkPathLength(temporary)
        unlink(temporary)
        let fd = try Sockets.makeSocket(domain: AF_UNIX)
        do throws(RuntimeError) {
            try Sockets.withUnixAddress(temporary) { (pointer, length) throws(RuntimeError) in
                if bind(fd, pointer, length) != 0 {
                    throw RuntimeError.systemCall("bind", context: "taking over \(path)")
                }
            }
            if chmod(temporary, mode ?? (qemu.st_mode & 0o7777)) != 0 {
                throw RuntimeError.systemCall("chmod", context: "taking over \(path)")
            }
            if let group {
                if chown(temporary, uid_t.max, group) != 0 {
                    throw RuntimeError.systemCall(
                        "chown",
                        context: "giving \(path) to group \(group) (qmp-sidecar must be root or a member of it)")
                }
            } else if mode == nil {
                _ = chown(temporary, qemu.st_uid, qemu.st_gid)  // best effort: only root may give files away
            }
            if listen(fd, 64) != 0 {
                throw RuntimeError.systemCall("listen", context: "taking over \(path)")
            }
            try Sockets.setNonblocking(fd)
            var ours = stat()
            guard lstat(temporary, &ours) == 0 else {
                throw RuntimeError.systemCall("lstat", context: "taking over \(path)")
            }
            if link(path, upstreamPath) != 0 {
                // No hard links here: rename aside (clients may see ENOENT for a moment).
                if rename(path, upstreamPath) != 0 {
                    throw RuntimeError.systemCall("rename", context: "moving QEMU's socket \(path) aside")
                }
            }
            if rename(temporary, path) != 0 {
                let error = RuntimeError.systemCall("rename", context: "binding at \(path)")
                _ = rename(upstreamPath, path)
                throw error
            }
            ourInode = ours.st_ino
            listeningFD = fd
        } catch {
            unlink(temporary)
            close(fd)
            throw error
        }
    }

    /// Puts QEMU's socket back at ``path`` (replacing ours) and removes ours. Idempotent.
    ///
    /// QEMU unlinks the path it was given when it exits cleanly — that removes *our* socket at
    /// ``path`` and leaves its own file at ``upstreamPath``. So: if ``path`` still is ours, QEMU's file
    /// is renamed back over it (what QEMU would have left, live or stale); if ``path`` is gone and
    /// nobody listens at ``upstreamPath``, that stale file is removed (as QEMU would have done); if
    /// something else now occupies ``path`` it is left alone and QEMU's file stays at ``upstreamPath``
    /// (the error says so). Does not close ``listeningFD``.
    public func restore() throws(RuntimeError) {
        guard !restored else { return }
        restored = true
        var current = stat()
        let pathExists = lstat(path, &current) == 0
        let pathIsOurs = pathExists && current.st_ino == ourInode
        var upstream = stat()
        guard lstat(upstreamPath, &upstream) == 0 else {
            if pathIsOurs { unlink(path) }
            return
        }
        if pathIsOurs || (!pathExists && Sockets.isLive(upstreamPath)) {
            if rename(upstreamPath, path) != 0 {
                throw RuntimeError.systemCall("rename", context: "restoring QEMU's socket \(upstreamPath) to \(path)")
            }
        } else if !pathExists {
            unlink(upstreamPath)
        } else {
            throw RuntimeError(
                code: .takeOver,
                message:
                    "not restoring \(upstreamPath) to \(path): another file now occupies \(path); move it back by hand if needed"
            )
        }
    }
}
