#if canImport(Glibc)
import Glibc
#endif

/// Listening sockets: unix and TCP listeners, inherited and socket-activated ones.
extension Sockets {
    /// Creates a unix listening socket at `path` with permissions `mode`.
    ///
    /// The socket is bound under a temporary name, given `mode` (and `group`, when set), and renamed
    /// onto `path`, so it never exists at `path` with other permissions. An existing socket file at `path` nobody listens on
    /// (connect gives ECONNREFUSED) is replaced; a live one is refused.
    /// - Returns: the listening descriptor. Caller owns it; the file at `path` stays until removed
    ///   (``Listener`` removes it on close when given the path).
    /// - Throws: ``RuntimeError`` `.addressInUse` (live listener), `.notASocket` (a file that is not a
    ///   socket), `.pathTooLong`, or `.systemCall`.
    public static func listenUnix(
        path: String, mode: mode_t = 0o600, group: gid_t? = nil, backlog: Int32 = 64
    ) throws(RuntimeError) -> Int32 {
        try checkPathLength(path)
        var info = stat()
        if lstat(path, &info) == 0 {
            guard info.st_mode & S_IFMT == S_IFSOCK else {
                throw RuntimeError(
                    code: .notASocket,
                    message:
                        "cannot listen at \(path): a file that is not a socket exists there; remove it or choose another path"
                )
            }
            if isLive(path) {
                throw RuntimeError(
                    code: .addressInUse,
                    message:
                        "cannot listen at \(path): another process is listening there (another qmp-sidecar, or QEMU itself?); stop it, choose another path, or use --take-over \(path) to put the sidecar in front of QEMU"
                )
            }
        }
        let temporary = "\(path).\(getpid()).new"
        let useTemporary = temporary.utf8.count <= SocketAddress.maxUnixPathLength
        let bindPath = useTemporary ? temporary : path
        if !useTemporary || lstat(temporary, &info) == 0 {
            unlink(bindPath)
        }
        let fd = try makeSocket(domain: AF_UNIX)
        do throws(RuntimeError) {
            try withUnixAddress(bindPath) { (pointer, length) throws(RuntimeError) in
                if bind(fd, pointer, length) != 0 {
                    throw RuntimeError.systemCall("bind", context: "listening at \(path)")
                }
            }
            if chmod(bindPath, mode) != 0 {
                let error = RuntimeError.systemCall("chmod", context: "listening at \(path)")
                unlink(bindPath)
                throw error
            }
            if let group, chown(bindPath, uid_t.max, group) != 0 {
                let error = RuntimeError.systemCall(
                    "chown", context: "giving \(path) to group \(group) (qmp-sidecar must be root or a member of it)")
                unlink(bindPath)
                throw error
            }
            if Glibc.listen(fd, backlog) != 0 {
                let error = RuntimeError.systemCall("listen", context: "listening at \(path)")
                unlink(bindPath)
                throw error
            }
            if useTemporary && rename(temporary, path) != 0 {
                let error = RuntimeError.systemCall("rename", context: "listening at \(path)")
                unlink(temporary)
                throw error
            }
            try setNonblocking(fd)
            return fd
        } catch {
            Glibc.close(fd)
            throw error
        }
    }

    /// Creates a TCP listening socket (SO_REUSEADDR) on `host:port`; port 0 picks a free port
    /// (read it back with ``localPort(_:)``).
    /// - Returns: the listening descriptor. Caller owns it.
    public static func listenTCP(host: String, port: UInt16, backlog: Int32 = 64) throws(RuntimeError) -> Int32 {
        try firstTCPSocket(host: host, port: port, passive: true, named: "\(host)") { fd, info in
            var one: Int32 = 1
            setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
            guard bind(fd, info.ai_addr, info.ai_addrlen) == 0, Glibc.listen(fd, backlog) == 0 else {
                return .systemCall("bind/listen", context: "listening at tcp:\(host):\(port)")
            }
            return nil
        }
    }

    /// The local port a TCP socket is bound to, or nil.
    public static func localPort(_ fd: Int32) -> UInt16? {
        var storage = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let rc = withUnsafeMutablePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        guard rc == 0 else { return nil }
        switch Int32(storage.ss_family) {
        case AF_INET:
            return withUnsafePointer(to: &storage) {
                $0.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { UInt16(bigEndian: $0.pointee.sin_port) }
            }
        case AF_INET6:
            return withUnsafePointer(to: &storage) {
                $0.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { UInt16(bigEndian: $0.pointee.sin6_port) }
            }
        default:
            return nil
        }
    }

    /// Checks that an inherited descriptor (`--listen-fd N`) is a listening stream socket and makes it
    /// nonblocking and close-on-exec.
    ///
    /// - Returns: `fd`, which the caller now owns.
    /// - Throws: ``RuntimeError`` `.notAListeningSocket` naming what to pass instead.
    public static func adoptListeningSocket(_ fd: Int32) throws(RuntimeError) -> Int32 {
        var info = stat()
        if fstat(fd, &info) != 0 {
            throw RuntimeError(
                code: .notAListeningSocket,
                message:
                    "listen fd \(fd) is not open (\(String(cString: strerror(errno)))): pass a descriptor the parent left open across exec",
                call: "fstat", errno: errno)
        }
        guard info.st_mode & S_IFMT == S_IFSOCK else {
            throw RuntimeError(
                code: .notAListeningSocket,
                message: "listen fd \(fd) is not a socket: pass the descriptor of a stream socket after listen()")
        }
        var type: Int32 = 0
        var accepting: Int32 = 0
        var length = socklen_t(MemoryLayout<Int32>.size)
        guard getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &length) == 0 else {
            throw RuntimeError.systemCall("getsockopt(SO_TYPE)", context: "listen fd \(fd)")
        }
        length = socklen_t(MemoryLayout<Int32>.size)
        guard getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &accepting, &length) == 0 else {
            throw RuntimeError.systemCall("getsockopt(SO_ACCEPTCONN)", context: "listen fd \(fd)")
        }
        guard type == Int32(SOCK_STREAM.rawValue) else {
            throw RuntimeError(
                code: .notAListeningSocket,
                message: "listen fd \(fd) is not a stream socket: QMP needs SOCK_STREAM")
        }
        guard accepting != 0 else {
            throw RuntimeError(
                code: .notAListeningSocket,
                message: "listen fd \(fd) is a socket but not listening: call listen() on it before passing it")
        }
        try setCloseOnExec(fd)
        try setNonblocking(fd)
        return fd
    }

    /// The listening sockets passed by systemd socket activation (`LISTEN_PID`, `LISTEN_FDS`, from fd 3).
    ///
    /// Returns an empty array when the variables are absent or meant for another process. Unsets the
    /// variables so children do not inherit them. Each descriptor is checked as by
    /// ``adoptListeningSocket(_:)``.
    /// - Returns: descriptors the caller now owns.
    public static func systemdListeningSockets() throws(RuntimeError) -> [Int32] {
        let pid = getenv("LISTEN_PID").map { String(cString: $0) }
        let count = getenv("LISTEN_FDS").map { String(cString: $0) }
        let fds = try adoptSystemdSockets(listenPID: pid, listenFDs: count, firstFD: 3)
        if !fds.isEmpty {
            unsetenv("LISTEN_PID")
            unsetenv("LISTEN_FDS")
            unsetenv("LISTEN_FDNAMES")
        }
        return fds
    }

    /// The logic of ``systemdListeningSockets()`` with the environment and first descriptor given.
    static func adoptSystemdSockets(listenPID: String?, listenFDs: String?, firstFD: Int32) throws(RuntimeError)
        -> [Int32]
    {
        guard let pidText = listenPID else { return [] }
        guard let pid = Int32(pidText) else {
            throw RuntimeError(code: .socketActivation, message: "LISTEN_PID=\(pidText) is not a pid")
        }
        guard pid == getpid() else { return [] }
        let countText = listenFDs ?? ""
        guard let count = Int32(countText), count >= 0 else {
            throw RuntimeError(
                code: .socketActivation,
                message: "LISTEN_PID is set but LISTEN_FDS=\(countText) is not a count: check the .socket unit")
        }
        var fds: [Int32] = []
        for fd in firstFD..<(firstFD + count) {
            fds.append(try adoptListeningSocket(fd))
        }
        return fds
    }
}
