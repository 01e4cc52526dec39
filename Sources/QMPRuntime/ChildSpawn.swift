import CQMPShims

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// Starts child processes with a clean signal state: no signal blocked and every catchable signal at
/// its default disposition.
///
/// A `posix_spawn` child inherits the caller's signal mask and ignored signals. Swift Testing's worker
/// threads (and swift-service-lifecycle's signal handling) block SIGTERM/SIGINT, so a child spawned
/// there would ignore `kill(pid, SIGTERM)` and a test run would hang waiting for it.
public enum ChildSpawn {
    /// What to do with a descriptor in the child, in order, before `exec`.
    public enum FileAction: Sendable {
        /// `open(path, flags, mode)` as descriptor `fd`.
        case open(fd: Int32, path: String, flags: Int32, mode: mode_t = 0o644)
        /// `dup2(from, to)`.
        case dup2(from: Int32, to: Int32)
        /// Close every descriptor from `fd` up: the child keeps only what the actions before set up,
        /// not whatever the parent's other threads hold without close-on-exec at that moment.
        case closeAll(from: Int32)
    }

    /// `actions`, then every other descriptor closed: the child keeps only what `actions` set up, never
    /// what another thread holds without close-on-exec at that moment (Foundation's
    /// `String.write(toFile:)` opens its file so, for one).
    public static func isolated(_ actions: [FileAction]) -> [FileAction] {
        let highest = actions.reduce(Int32(2)) { highest, action in
            switch action {
            case .open(let fd, _, _, _): max(highest, fd)
            case .dup2(_, let to): max(highest, to)
            case .closeAll: highest
            }
        }
        return actions + [.closeAll(from: highest + 1)]
    }

    /// Spawns `executable` with `arguments` (argv[0] is `executable`) and the caller's environment.
    ///
    /// - Parameters:
    ///   - searchPath: look `executable` up in `PATH` (`posix_spawnp`).
    ///   - fileActions: descriptor set-up in the child.
    /// - Returns: the child's pid (reap it with `waitpid`).
    /// - Throws: ``RuntimeError`` naming `posix_spawn` and the executable.
    public static func spawn(
        _ executable: String, arguments: [String] = [], searchPath: Bool = false, fileActions: [FileAction] = []
    ) throws(RuntimeError) -> pid_t {
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        for action in fileActions {
            switch action {
            case .open(let fd, let path, let flags, let mode):
                posix_spawn_file_actions_addopen(&actions, fd, path, flags, mode)
            case .dup2(let from, let to):
                posix_spawn_file_actions_adddup2(&actions, from, to)
            case .closeAll(let from):
                cqmp_spawn_add_closefrom(&actions, from)
            }
        }
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        var empty = sigset_t()
        sigemptyset(&empty)
        posix_spawnattr_setsigmask(&attributes, &empty)
        var all = sigset_t()
        sigfillset(&all)
        sigdelset(&all, SIGKILL)
        sigdelset(&all, SIGSTOP)
        posix_spawnattr_setsigdefault(&attributes, &all)
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))
        let argv: [UnsafeMutablePointer<CChar>?] = ([executable] + arguments).map { strdup($0) } + [nil]
        defer { for pointer in argv { free(pointer) } }
        var pid: pid_t = 0
        let rc =
            searchPath
            ? posix_spawnp(&pid, executable, &actions, &attributes, argv, environ)
            : posix_spawn(&pid, executable, &actions, &attributes, argv, environ)
        guard rc == 0 else {
            throw RuntimeError.systemCall(
                searchPath ? "posix_spawnp" : "posix_spawn", errno: rc, context: "starting \(executable)")
        }
        return pid
    }
}
