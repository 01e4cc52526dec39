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
        peerCredentials(fd)?.pid
    }

    /// Who is at the other end of a connected unix socket (SO_PEERCRED: the credentials the peer had
    /// when it connected), or nil when the socket has none (not a unix socket).
    public static func peerCredentials(_ fd: Int32) -> PeerCredentials? {
        var pid: pid_t = 0
        var uid: uid_t = 0
        var gid: gid_t = 0
        // A socket without credentials (TCP) reports pid 0 and the overflow uid (nobody's): none.
        guard cqmp_peer_credentials(fd, &pid, &uid, &gid) == 0, pid > 0 else { return nil }
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

    static func resolve(host: String, port: UInt16, passive: Bool) throws(RuntimeError) -> UnsafeMutablePointer<
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
    static func firstTCPSocket(
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
