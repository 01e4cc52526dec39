import Foundation
import QMPRuntime
import QMPSidecar
import QMPTestKit
import Testing

/// Who may connect: socket mode and group, `--allow-uid` by SO_PEERCRED (a refused peer never sees the
/// greeting), `--max-clients`, and TCP listeners only on loopback unless explicitly opted in.
@Suite struct AccessControlTests {
    /// qmp-mock plus a sidecar in front of it, in a directory others may traverse (for the nobody client).
    final class Setup {
        let dir = makeTempDir()
        let mock: SpawnedProcess
        let sidecar: SidecarInstance

        init(extra: [String]) throws {
            chmod(dir, 0o755)
            mock = try SpawnedProcess(productsDirectory + "/qmp-mock", ["--listen", "unix:\(dir)/vm.qmp"])
            sidecar = try SidecarInstance(dir: dir, upstream: "\(dir)/vm.qmp", extra: extra)
        }

        deinit {
            sidecar.terminate()
            mock.signal(SIGKILL)
            mock.waitUntilExit()
            try? FileManager.default.removeItem(atPath: dir)
        }
    }

    /// What a client running as `nobody` (65534) reads from the sidecar: the greeting, or "" when closed.
    /// (Debian's /usr/bin/python3: a python under /root is out of nobody's reach.)
    private func greetingSeenByNobody(_ path: String) throws -> String {
        let script = """
            import socket, sys
            s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); s.settimeout(10)
            data = b""
            while not data.endswith(b"\\n"):
                chunk = s.recv(4096)
                if not chunk: break
                data += chunk
            print(data.decode().strip())
            """
        let result = try SpawnedProcess.run(
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "/usr/bin/python3", "-c", script, path])
        #expect(result.status == 0, "\(result.output)")
        return result.output.trimmingCharacters(in: .whitespacesAndNewlines)
    }

    @Test func aPeerWhoseUIDIsNotAllowedNeverSeesTheGreeting() throws {
        let setup = try Setup(extra: ["--allow-uid", "0", "--socket-mode", "0666"])
        let path = setup.sidecar.listenPath
        // Allowed (the test runs as root): unchanged.
        let allowed = try TestClient.connecting(to: path)
        try allowed.negotiate()
        #expect(try allowed.command(#"{"execute": "query-status", "id": 1}"#).hasSuffix(#""id": 1}"#))
        // nobody: closed before the greeting, logged with its pid and uid.
        #expect(try greetingSeenByNobody(path) == "")
        #expect(waitFor { setup.sidecar.log.contains("client refused") })
        let refusal = try #require(setup.sidecar.log.split(separator: "\n").first { $0.contains("client refused") })
        #expect(refusal.contains("uid=65534") && refusal.contains("pid=") && !refusal.contains("pid=?"))
        #expect(refusal.contains("uid 65534 is not allowed"))
        // The allowed client did not notice.
        #expect(try allowed.command(#"{"execute": "query-status", "id": 2}"#).hasSuffix(#""id": 2}"#))
    }

    @Test func aListedUIDIsServed() throws {
        let setup = try Setup(extra: ["--allow-uid", "0", "--allow-uid", "65534", "--socket-mode", "0666"])
        #expect(try greetingSeenByNobody(setup.sidecar.listenPath).hasPrefix(#"{"QMP": {"version""#))
        #expect(!setup.sidecar.log.contains("client refused"))
    }

    @Test func rootIsRefusedWhenOnlyAnotherUIDIsAllowed() throws {
        let setup = try Setup(extra: ["--allow-uid", "65534"])
        let client = try TestClient.connecting(to: setup.sidecar.listenPath)
        #expect(client.readLine(timeout: 5) == nil)
        #expect(client.isClosed(within: 1))
        #expect(waitFor { setup.sidecar.log.contains("uid 0 is not allowed") })
    }

    @Test func socketsGetTheGroupAndModeAsked() throws {
        let setup = try Setup(extra: ["--socket-group", "nogroup", "--socket-mode", "0660"])
        var info = stat()
        #expect(lstat(setup.sidecar.listenPath, &info) == 0)
        #expect(info.st_gid == 65534)
        #expect(info.st_mode & 0o777 == 0o660)
        let defaults = try Setup(extra: [])
        #expect(lstat(defaults.sidecar.listenPath, &info) == 0)
        #expect(info.st_mode & 0o777 == 0o600)
    }

    @Test func clientsBeyondMaxClientsAreRefusedBeforeTheGreeting() throws {
        let setup = try Setup(extra: ["--max-clients", "2"])
        let path = setup.sidecar.listenPath
        let a = try TestClient.connecting(to: path)
        let b = try TestClient(path: path)
        try a.negotiate()
        try b.negotiate()
        let c = try TestClient(path: path)
        #expect(c.readLine(timeout: 5) == nil)
        #expect(waitFor { setup.sidecar.log.contains("--max-clients 2 reached") })
        // A slot frees when a client leaves.
        _ = consume b
        #expect(waitFor { setup.sidecar.log.contains("client disconnected") })
        let d = try TestClient(path: path)
        try d.negotiate()
        #expect(try a.command(#"{"execute": "query-status", "id": 1}"#).hasSuffix(#""id": 1}"#))
    }

    @Test(arguments: [("0.0.0.0", false, false), ("127.0.0.1", false, true), ("0.0.0.0", true, true)])
    func tcpListenersOnlyOnLoopbackWithoutOptIn(host: String, optIn: Bool, serves: Bool) throws {
        let dir = makeTempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let mock = try SpawnedProcess(productsDirectory + "/qmp-mock", ["--listen", "unix:\(dir)/vm.qmp"])
        defer { mock.signal(SIGKILL) }
        let listening = try Sockets.listenTCP(host: host, port: 0)
        defer { close(listening) }
        let port = try #require(Sockets.localPort(listening))
        let sidecar = try SpawnedProcess(
            productsDirectory + "/qmp-sidecar",
            ["--upstream", "unix:\(dir)/vm.qmp", "--listen-fd", "3"] + (optIn ? ["--unauthenticated-tcp-listen"] : []),
            fileActions: SpawnedProcess.stderr(to: "\(dir)/log") + [.dup2(from: listening, to: 3)])
        defer { sidecar.signal(SIGKILL) }
        let log = { (try? String(contentsOfFile: "\(dir)/log", encoding: .utf8)) ?? "" }
        if serves {
            let client = try TCPTestClient(port: port)
            #expect(client.firstLine()?.hasPrefix(#"{"QMP""#) == true, "\(log())")
        } else {
            #expect(waitFor { !sidecar.isRunning })
            #expect(sidecar.waitUntilExit() != 0)
            #expect(log().contains("reachable from the network with no authentication"))
            #expect(log().contains("--unauthenticated-tcp-listen"))
        }
    }

    /// TCP carries no peer credentials: with --allow-uid, a TCP peer is refused before the greeting —
    /// even with 65534 allowed, the overflow uid SO_PEERCRED reports on a socket without credentials.
    @Test func tcpPeersAreRefusedWhenUIDsAreRestricted() throws {
        let dir = makeTempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let mock = try SpawnedProcess(productsDirectory + "/qmp-mock", ["--listen", "unix:\(dir)/vm.qmp"])
        defer { mock.signal(SIGKILL) }
        let listening = try Sockets.listenTCP(host: "127.0.0.1", port: 0)
        defer { close(listening) }
        let port = try #require(Sockets.localPort(listening))
        let sidecar = try SpawnedProcess(
            productsDirectory + "/qmp-sidecar",
            ["--upstream", "unix:\(dir)/vm.qmp", "--listen-fd", "3", "--allow-uid", "65534"],
            fileActions: SpawnedProcess.stderr(to: "\(dir)/log") + [.dup2(from: listening, to: 3)])
        defer { sidecar.signal(SIGKILL) }
        let log = { (try? String(contentsOfFile: "\(dir)/log", encoding: .utf8)) ?? "" }
        #expect(try TCPTestClient(port: port).firstLine() == nil)
        #expect(waitFor { log().contains("peer credentials unknown") }, "\(log())")
    }

    @Test func admissionRules() {
        let open = ClientAdmission()
        let root = PeerCredentials(pid: 1, uid: 0, gid: 0)
        #expect(open.decide(peer: nil, connectedClients: 0) == .admit)
        #expect(open.decide(peer: root, connectedClients: 127) == .admit)
        #expect(open.decide(peer: root, connectedClients: 128) != .admit)
        let listed = ClientAdmission(allowedUIDs: [1000], maxClients: 4)
        #expect(listed.decide(peer: PeerCredentials(pid: 2, uid: 1000, gid: 1000), connectedClients: 0) == .admit)
        #expect(listed.decide(peer: root, connectedClients: 0) == .refuse(reason: "uid 0 is not allowed (--allow-uid)"))
        #expect(listed.decide(peer: nil, connectedClients: 0) != .admit)
    }

    @Test(
        arguments: [
            ([127, 0, 0, 1], true), ([127, 9, 9, 9], true), ([0, 0, 0, 0], false), ([10, 0, 0, 1], false),
        ] as [([UInt8], Bool)])
    func ipv4Loopback(bytes: [UInt8], loopback: Bool) {
        #expect(ListeningAddress.isLoopback(ipv4: bytes) == loopback)
    }

    @Test func ipv6Loopback() {
        #expect(ListeningAddress.isLoopback(ipv6: Array(repeating: 0, count: 15) + [1]))
        #expect(!ListeningAddress.isLoopback(ipv6: Array(repeating: 0, count: 16)))
        #expect(ListeningAddress.isLoopback(ipv6: Array(repeating: 0, count: 10) + [0xFF, 0xFF, 127, 0, 0, 1]))
        #expect(!ListeningAddress.isLoopback(ipv6: Array(repeating: 0, count: 10) + [0xFF, 0xFF, 10, 0, 0, 1]))
    }
}

/// A TCP client on loopback that reads one line.
private struct TCPTestClient {
    let fd: Int32

    init(port: UInt16) throws {
        fd = try Sockets.connect(to: .tcp(host: "127.0.0.1", port: port))
    }

    func firstLine() -> String? {
        var bytes: [UInt8] = []
        var pfd = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        while !bytes.contains(0x0A), poll(&pfd, 1, 10_000) > 0 {
            var chunk = [UInt8](repeating: 0, count: 4096)
            let n = read(fd, &chunk, chunk.count)
            if n <= 0 { break }
            bytes += chunk[..<n]
        }
        close(fd)
        return bytes.isEmpty ? nil : String(decoding: bytes, as: UTF8.self)
    }
}
