import Dispatch
import Synchronization
import Testing

@testable import QMPRuntime

#if canImport(Glibc)
import Glibc
#endif

@Suite("Sockets")
struct SocketTests {
    @Test(
        "addresses parse",
        arguments: [
            ("unix:/run/x.qmp", SocketAddress.unix(path: "/run/x.qmp")),
            ("tcp:127.0.0.1:4444", SocketAddress.tcp(host: "127.0.0.1", port: 4444)),
            ("tcp:[::1]:5", SocketAddress.tcp(host: "::1", port: 5)),
            ("tcp:localhost:0", SocketAddress.tcp(host: "localhost", port: 0)),
        ])
    func parse(text: String, expected: SocketAddress) throws {
        let address = try SocketAddress(parsing: text)
        #expect(address == expected)
        #expect(address.description == text)
    }

    @Test(
        "bad addresses give errors that show the accepted forms",
        arguments: ["", "unix:", "tcp:host", "tcp::1", "tcp:h:99999", "/run/x"])
    func parseErrors(text: String) {
        #expect {
            _ = try SocketAddress(parsing: text)
        } throws: { error in
            (error as? RuntimeError)?.code == .invalidAddress && "\(error)".contains("unix:PATH or tcp:HOST:PORT")
        }
    }

    @Test("a too long unix path is refused")
    func longPath() {
        #expect(throws: RuntimeError.self) {
            _ = try SocketAddress(parsing: "unix:/" + String(repeating: "a", count: 120))
        }
    }

    @Test("listenUnix applies the mode, replaces a stale socket, refuses a live one")
    func staleAndLive() throws {
        let dir = try TempDir()
        defer { dir.remove() }
        let path = dir.file("s")
        // A stale socket: bound, then its listener closed (the file stays).
        let stale = try Sockets.listenUnix(path: path)
        close(stale)
        #expect(throws: RuntimeError.self) { _ = try Sockets.connect(to: .unix(path: path)) }
        let fd = try Sockets.listenUnix(path: path, mode: 0o640)
        defer { close(fd) }
        var info = stat()
        #expect(lstat(path, &info) == 0)
        #expect(info.st_mode & 0o777 == 0o640)
        #expect(info.st_mode & S_IFMT == S_IFSOCK)
        #expect(fcntl(fd, F_GETFL) & O_NONBLOCK != 0)
        #expect(fcntl(fd, F_GETFD) & FD_CLOEXEC != 0)
        let client = try Sockets.connect(to: .unix(path: path))
        close(client)
        #expect {
            _ = try Sockets.listenUnix(path: path)
        } throws: { error in
            (error as? RuntimeError)?.code == .addressInUse && "\(error)".contains("--take-over")
        }
        // A regular file is never replaced.
        let file = dir.file("f")
        close(open(file, O_CREAT | O_WRONLY | O_CLOEXEC, 0o600))
        #expect { _ = try Sockets.listenUnix(path: file) } throws: { ($0 as? RuntimeError)?.code == .notASocket }
    }

    @Test("connect retries until the listener appears, and times out naming the QEMU option")
    func connectRetry() async throws {
        let dir = try TempDir()
        defer { dir.remove() }
        let path = dir.file("later")
        #expect {
            _ = try Sockets.connect(to: .unix(path: path), retryingUntil: .now + .milliseconds(60))
        } throws: { error in
            (error as? RuntimeError)?.code == .timedOut && "\(error)".contains("-qmp unix:\(path),server=on")
        }
        // The listener appears from a plain thread: a Task could wait behind this test's blocking
        // connect loop when the other tests occupy the cooperative pool (2 threads on 2 cores).
        let listening = DispatchSemaphore(value: 0)
        let listenerFD = Mutex<Int32>(-1)
        DispatchQueue.global().asyncAfter(deadline: .now() + .milliseconds(50)) {
            listenerFD.withLock { $0 = (try? Sockets.listenUnix(path: path)) ?? -1 }
            listening.signal()
        }
        let fd = try Sockets.connect(to: .unix(path: path), retryingUntil: .now + .seconds(10))
        #expect(Sockets.peerPID(fd) == getpid())
        close(fd)
        listening.wait()
        close(listenerFD.withLock { $0 })
    }

    @Test("a listener accepts, and removes its socket file on close")
    func listenerAccepts() throws {
        let dir = try TempDir()
        defer { dir.remove() }
        let path = dir.file("l")
        let reactor = try Reactor()
        var served: [Connection] = []
        let listener = Listener(fd: try Sockets.listenUnix(path: path), reactor: reactor, unlinkPath: path) { fd in
            let connection = Connection(fd: fd, reactor: reactor)
            connection.onRead = { bytes, _ in connection.send(Array(bytes)) }
            connection.start()
            served.append(connection)
        }
        defer { for connection in served { connection.close() } }
        let client = try connectBlocking(path)
        defer { close(client) }
        writeAll(client, Array("echo".utf8))
        var echoed: [UInt8] = []
        let clientConnection = reactor.register(fd: client, interest: .read) { _ in
            var buffer = [UInt8](repeating: 0, count: 16)
            let n = read(client, &buffer, 16)
            echoed += buffer[0..<max(n, 0)]
            if echoed.count >= 4 { reactor.stop() }
        }
        try runUntilStopped(reactor)
        reactor.unregister(clientConnection)
        #expect(echoed == Array("echo".utf8))
        listener.close()
        var info = stat()
        #expect(lstat(path, &info) != 0)
    }

    @Test("an inherited fd is accepted only when it is a listening stream socket")
    func listenFD() throws {
        let dir = try TempDir()
        defer { dir.remove() }
        let listening = try Sockets.listenUnix(path: dir.file("i"))
        defer { close(listening) }
        #expect(try Sockets.adoptListeningSocket(listening) == listening)
        let (a, b) = try Sockets.socketPair()
        defer { close(a); close(b) }
        #expect {
            _ = try Sockets.adoptListeningSocket(a)
        } throws: { "\($0)".contains("not listening") }
        let pipe = try makePipe()
        defer { close(pipe.read); close(pipe.write) }
        #expect { _ = try Sockets.adoptListeningSocket(pipe.read) } throws: { "\($0)".contains("not a socket") }
        #expect { _ = try Sockets.adoptListeningSocket(9999) } throws: { "\($0)".contains("not open") }
    }

    @Test("take-over moves QEMU's socket aside, serves the path, and restores it")
    func takeOver() throws {
        let dir = try TempDir()
        defer { dir.remove() }
        let path = dir.file("qmp")
        let qemu = try Sockets.listenUnix(path: path, mode: 0o660)
        defer { close(qemu) }
        var qemuInfo = stat()
        #expect(lstat(path, &qemuInfo) == 0)
        let takeOver = try SocketTakeOver(path: path)
        defer { close(takeOver.listeningFD) }
        #expect(takeOver.upstreamPath == path + ".qmp-sidecar-upstream")
        var info = stat()
        #expect(lstat(takeOver.upstreamPath, &info) == 0 && info.st_ino == qemuInfo.st_ino)
        #expect(lstat(path, &info) == 0 && info.st_ino != qemuInfo.st_ino)
        #expect(info.st_mode & 0o777 == 0o660, "mode copied from QEMU's socket")
        // Clients at PATH reach us; the upstream path reaches QEMU.
        let client = try Sockets.connect(to: .unix(path: path))
        close(client)
        let accepted = accept(takeOver.listeningFD, nil, nil)
        #expect(accepted >= 0)
        close(accepted)
        let upstream = try Sockets.connect(to: .unix(path: takeOver.upstreamPath))
        close(upstream)
        let qemuAccepted = accept(qemu, nil, nil)
        #expect(qemuAccepted >= 0)
        close(qemuAccepted)
        // A second take-over while the first is active is refused with the fix.
        #expect { _ = try SocketTakeOver(path: path) } throws: { "\($0)".contains("mv ") }
        try takeOver.restore()
        try takeOver.restore()
        #expect(lstat(path, &info) == 0 && info.st_ino == qemuInfo.st_ino)
        #expect(lstat(takeOver.upstreamPath, &info) != 0)
    }

    @Test("take-over of a path where nobody listens fails with the QEMU option to use")
    func takeOverNothing() throws {
        let dir = try TempDir()
        defer { dir.remove() }
        #expect { _ = try SocketTakeOver(path: dir.file("none")) } throws: { "\($0)".contains("-qmp unix:") }
    }

    @Test("systemd activation: variables for another pid are ignored, malformed ones are errors")
    func systemdActivation() throws {
        // The environment itself is not touched: setenv races with other tests spawning processes.
        let me = "\(getpid())"
        #expect(try Sockets.adoptSystemdSockets(listenPID: nil, listenFDs: "1", firstFD: 3).isEmpty)
        #expect(try Sockets.adoptSystemdSockets(listenPID: "\(getpid() + 100_000)", listenFDs: "1", firstFD: 3).isEmpty)
        #expect(throws: RuntimeError.self) {
            _ = try Sockets.adoptSystemdSockets(listenPID: "x", listenFDs: "1", firstFD: 3)
        }
        #expect {
            _ = try Sockets.adoptSystemdSockets(listenPID: me, listenFDs: "x", firstFD: 3)
        } throws: { "\($0)".contains("LISTEN_FDS=x") }
        #expect(try Sockets.adoptSystemdSockets(listenPID: me, listenFDs: "0", firstFD: 3).isEmpty)
    }

    @Test("TCP listen on port 0, connect, and read the port back")
    func tcp() throws {
        let listening = try Sockets.listenTCP(host: "127.0.0.1", port: 0)
        defer { close(listening) }
        let port = try #require(Sockets.localPort(listening))
        #expect(port != 0)
        let client = try Sockets.connect(to: .tcp(host: "127.0.0.1", port: port))
        close(client)
    }

    @Test("after QEMU quit (it unlinks its path, i.e. ours) restore removes the stale upstream file")
    func takeOverAfterQEMUQuit() throws {
        let dir = try TempDir()
        defer { dir.remove() }
        let path = dir.file("qmp")
        let qemu = try Sockets.listenUnix(path: path)
        let takeOver = try SocketTakeOver(path: path)
        defer { close(takeOver.listeningFD) }
        // What QEMU 7.2 does on quit: unlink its configured path, close its listener.
        unlink(path)
        close(qemu)
        try takeOver.restore()
        var info = stat()
        #expect(lstat(path, &info) != 0)
        #expect(lstat(takeOver.upstreamPath, &info) != 0)
    }

    @Test("systemd activation adopts LISTEN_FDS listening sockets from the first fd on")
    func systemdActivationAdopts() throws {
        let dir = try TempDir()
        defer { dir.remove() }
        let first = try Sockets.listenUnix(path: dir.file("a"))
        let second = try Sockets.listenUnix(path: dir.file("b"))
        // Two consecutive descriptor numbers nobody else uses, as systemd passes them from 3 on.
        let base: Int32 = 900
        try #require(fcntl(base, F_GETFD) < 0 && fcntl(base + 1, F_GETFD) < 0)
        try #require(dup2(first, base) == base && dup2(second, base + 1) == base + 1)
        close(first)
        close(second)
        defer { close(base); close(base + 1) }
        let fds = try Sockets.adoptSystemdSockets(listenPID: "\(getpid())", listenFDs: "2", firstFD: base)
        #expect(fds == [base, base + 1])
        #expect(fds.allSatisfy { fcntl($0, F_GETFD) & FD_CLOEXEC != 0 && fcntl($0, F_GETFL) & O_NONBLOCK != 0 })
        let client = try Sockets.connect(to: .unix(path: dir.file("b")))
        close(client)
        let served = accept(base + 1, nil, nil)
        #expect(served >= 0)
        close(served)
        // A count that runs past the passed sockets names the bad descriptor.
        #expect(throws: RuntimeError.self) {
            _ = try Sockets.adoptSystemdSockets(listenPID: "\(getpid())", listenFDs: "3", firstFD: base)
        }
    }
}
