import CQMPShims

#if canImport(Glibc)
import Glibc
#endif

/// Socket set-up: connecting, listening, inherited and socket-activated listeners, peer credentials.
///
/// Every descriptor returned is close-on-exec and nonblocking, and the caller owns it (close it, or
/// hand it to a ``Connection`` or ``Listener`` which then owns it). Functions here may block briefly
/// (`connect` on a unix socket, DNS for TCP); call them at start-up or from the reactor thread only
/// for local addresses.
public enum Sockets {
    // MARK: Connecting

    /// Connects a stream socket to `address` once.
    ///
    /// - Returns: a connected, nonblocking, close-on-exec descriptor (TCP_NODELAY on TCP). Caller owns it.
    /// - Throws: ``RuntimeError`` (`.systemCall` with the errno of `connect`, or `.invalidAddress`).
    public static func connect(to address: SocketAddress) throws(RuntimeError) -> Int32 {
        switch address {
        case .unix(let path):
            let fd = try makeSocket(domain: AF_UNIX)
            do throws(RuntimeError) {
                try withUnixAddress(path) { (pointer, length) throws(RuntimeError) in
                    if Glibc.connect(fd, pointer, length) != 0 {
                        throw RuntimeError.systemCall("connect", context: "connecting to \(address)")
                    }
                }
                try setNonblocking(fd)
                return fd
            } catch {
                Glibc.close(fd)
                throw error
            }
        case .tcp(let host, let port):
            return try connectTCP(host: host, port: port, address: address)
        }
    }

    /// Connects to `address`, retrying while the peer is not there yet (ENOENT, ECONNREFUSED, EAGAIN)
    /// until `deadline`; other errors are thrown at once.
    ///
    /// Blocks the calling thread between attempts (`interval`); meant for start-up, e.g. when QEMU
    /// has not created its QMP socket yet.
    /// - Returns: a connected descriptor as ``connect(to:)``. Caller owns it.
    /// - Throws: ``RuntimeError`` `.timedOut` naming the last error and the QEMU option to check.
    public static func connect(
        to address: SocketAddress, retryingUntil deadline: ContinuousClock.Instant,
        interval: Duration = .milliseconds(20)
    ) throws(RuntimeError) -> Int32 {
        while true {
            do {
                return try connect(to: address)
            } catch {
                guard let err = error.errno, isRetryableConnectError(err) else { throw error }
                let now = ContinuousClock.now
                if now >= deadline {
                    throw RuntimeError(
                        code: .timedOut,
                        message:
                            "\(address) not reachable in time (last error: \(String(cString: strerror(err)))): is QEMU started with -qmp \(address),server=on,wait=off?",
                        call: "connect", errno: err)
                }
                sleep(min(interval, now.duration(to: deadline)))
            }
        }
    }

    /// Whether a `connect` errno means "not listening yet" (worth a retry).
    public static func isRetryableConnectError(_ err: Int32) -> Bool {
        err == ENOENT || err == ECONNREFUSED || err == EAGAIN
    }

    /// The pid of the process at the other end of a connected unix socket (SO_PEERCRED), or nil.
    public static func peerPID(_ fd: Int32) -> pid_t? {
        guard let pid = peerCredentials(fd)?.pid, pid > 0 else { return nil }
        return pid
    }

    /// Who is at the other end of a connected unix socket (SO_PEERCRED: the credentials the peer had
    /// when it connected), or nil when the socket has none (not a unix socket).
    public static func peerCredentials(_ fd: Int32) -> PeerCredentials? {
        var pid: pid_t = 0
        var uid: uid_t = 0
        var gid: gid_t = 0
        guard cqmp_peer_credentials(fd, &pid, &uid, &gid) == 0 else { return nil }
        return PeerCredentials(pid: pid, uid: uid, gid: gid)
    }

    /// A connected pair of unix stream sockets, both nonblocking and close-on-exec. Caller owns both.
    public static func socketPair() throws(RuntimeError) -> (Int32, Int32) {
        var fds: [Int32] = [-1, -1]
        let type = Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue) | Int32(SOCK_NONBLOCK.rawValue)
        if socketpair(AF_UNIX, type, 0, &fds) != 0 {
            throw RuntimeError.systemCall("socketpair")
        }
        return (fds[0], fds[1])
    }

    // MARK: Listening

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

    // MARK: Descriptor flags

    /// Sets O_NONBLOCK on `fd`.
    public static func setNonblocking(_ fd: Int32) throws(RuntimeError) {
        let flags = fcntl(fd, F_GETFL)
        if flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) != 0 {
            throw RuntimeError.systemCall("fcntl(O_NONBLOCK)")
        }
    }

    /// Sets FD_CLOEXEC on `fd`.
    public static func setCloseOnExec(_ fd: Int32) throws(RuntimeError) {
        let flags = fcntl(fd, F_GETFD)
        if flags < 0 || fcntl(fd, F_SETFD, flags | FD_CLOEXEC) != 0 {
            throw RuntimeError.systemCall("fcntl(FD_CLOEXEC)")
        }
    }

    // MARK: Internals

    static func makeSocket(domain: Int32) throws(RuntimeError) -> Int32 {
        let type = Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue)
        let fd = socket(domain, type, 0)
        if fd < 0 {
            throw RuntimeError.systemCall("socket")
        }
        return fd
    }

    static func checkPathLength(_ path: String) throws(RuntimeError) {
        if path.utf8.count > SocketAddress.maxUnixPathLength {
            throw RuntimeError(
                code: .pathTooLong,
                message:
                    "unix socket path \(path) is longer than \(SocketAddress.maxUnixPathLength) bytes; use a shorter path"
            )
        }
    }

    /// Whether a process accepts connections at `path` (a probe connect that is closed at once).
    static func isLive(_ path: String) -> Bool {
        guard let fd = try? makeSocket(domain: AF_UNIX) else { return false }
        defer { Glibc.close(fd) }
        var live = false
        try? withUnixAddress(path) { (pointer, length) throws(RuntimeError) in
            if Glibc.connect(fd, pointer, length) == 0 {
                live = true
            } else {
                // EAGAIN: the backlog is full, which still means someone listens.
                live = errno == EAGAIN
            }
        }
        return live
    }

    static func withUnixAddress<R>(
        _ path: String, _ body: (UnsafePointer<sockaddr>, socklen_t) throws(RuntimeError) -> R
    ) throws(RuntimeError) -> R {
        try checkPathLength(path)
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            raw.initializeMemory(as: UInt8.self, repeating: 0)
            raw.copyBytes(from: path.utf8)
        }
        let length = socklen_t(MemoryLayout<sockaddr_un>.size)
        return try withUnsafePointer(to: &address) { (pointer) throws(RuntimeError) -> R in
            try pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { (raw) throws(RuntimeError) -> R in
                try body(raw, length)
            }
        }
    }

    private static func resolve(host: String, port: UInt16, passive: Bool) throws(RuntimeError) -> UnsafeMutablePointer<
        addrinfo
    > {
        var hints = addrinfo()
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        hints.ai_family = AF_UNSPEC
        if passive { hints.ai_flags = AI_PASSIVE }
        var results: UnsafeMutablePointer<addrinfo>?
        let rc = getaddrinfo(host, String(port), &hints, &results)
        guard rc == 0, let results else {
            throw RuntimeError(
                code: .invalidAddress,
                message: "cannot resolve host \(host): \(String(cString: gai_strerror(rc))); check the host name")
        }
        return results
    }

    private static func connectTCP(host: String, port: UInt16, address: SocketAddress) throws(RuntimeError) -> Int32 {
        try firstTCPSocket(host: host, port: port, passive: false, named: "\(address)") { fd, info in
            guard Glibc.connect(fd, info.ai_addr, info.ai_addrlen) == 0 else {
                return .systemCall("connect", context: "connecting to \(address)")
            }
            var one: Int32 = 1
            setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
            return nil
        }
    }

    /// Tries each address `host:port` resolves to in turn: a socket for its family, then `setUp`
    /// (bind and listen, or connect; nil on success). The first that succeeds is made non-blocking
    /// and returned; otherwise the last error is thrown.
    private static func firstTCPSocket(
        host: String, port: UInt16, passive: Bool, named name: String,
        setUp: (Int32, addrinfo) -> RuntimeError?
    ) throws(RuntimeError) -> Int32 {
        let results = try resolve(host: host, port: port, passive: passive)
        defer { freeaddrinfo(results) }
        var lastError = RuntimeError(code: .invalidAddress, message: "\(name): no usable address")
        var entry: UnsafeMutablePointer<addrinfo>? = results
        while let info = entry {
            entry = info.pointee.ai_next
            let fd: Int32
            do throws(RuntimeError) { fd = try makeSocket(domain: info.pointee.ai_family) } catch {
                lastError = error
                continue
            }
            if let error = setUp(fd, info.pointee) {
                lastError = error
                Glibc.close(fd)
                continue
            }
            do throws(RuntimeError) { try setNonblocking(fd) } catch {
                Glibc.close(fd)
                throw error
            }
            return fd
        }
        throw lastError
    }

    private static func sleep(_ duration: Duration) {
        let (seconds, attoseconds) = duration.components
        var request = timespec(tv_sec: Int(seconds), tv_nsec: Int(attoseconds / 1_000_000_000))
        var remaining = timespec()
        while nanosleep(&request, &remaining) != 0 && errno == EINTR {
            request = remaining
        }
    }
}
