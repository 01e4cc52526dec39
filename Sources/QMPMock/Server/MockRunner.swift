import CQMPShims
import Glibc
import Logging
import QMPRuntime
import VFIOFakeHost
import VFIOTracking

/// Everything `qmp-mock` takes on its command line, already parsed.
public struct MockRunOptions: Sendable {
    public var listen: String = ""
    public var sysfsRoot: String?
    public var devRoot: String?
    public var fakeHostSpecs: [String] = []
    public var fakeHostRoot: String?
    public var keepFakeHost = false
    public var configuration = MockConfiguration()
    public var scenarioPath: String?
    public var replayPath: String?
    public var replayFallbackToModel = false
    /// Take the QEMU version from the recorded greeting when replaying (unless given explicitly).
    public var versionGiven = false

    public init() {}
}

/// Runs the mock as a process: builds the fake host, listens, serves until SIGINT/SIGTERM or `quit`.
public enum MockRunner {
    /// Serves until a signal or `quit`; returns the exit status (1 when a scenario or replay was not
    /// played completely, with what is missing logged).
    ///
    /// Prints one line to standard output when listening, naming the socket and the roots in use, so
    /// a script can wait for it.
    public static func run(_ options: MockRunOptions, logger: Logger) throws -> Int32 {
        var configuration = options.configuration
        var fakeHost: FakeHost?
        if !options.fakeHostSpecs.isEmpty, options.sysfsRoot != nil || options.devRoot != nil {
            // The fake tree sets both roots; a root given beside it would point the mock elsewhere.
            throw MockError.usage(
                "--fake-host builds its own sysfs and dev trees: drop --sysfs-root/--dev-root, and give "
                    + "--fake-host-root DIR to choose where the tree is built")
        }
        if !options.fakeHostSpecs.isEmpty {
            let spec = options.fakeHostSpecs.joined(separator: ";")
            if let root = options.fakeHostRoot { mkdir(root, 0o755) }
            do {
                fakeHost = try FakeHost(spec: spec, root: options.fakeHostRoot)
            } catch {
                throw MockError.usage("--fake-host \(spec): \(error)")
            }
            configuration.sysfsRoot = fakeHost!.sysfsRoot
            configuration.devRoot = fakeHost!.devRoot
        }
        if let root = options.sysfsRoot { configuration.sysfsRoot = root }
        if let root = options.devRoot { configuration.devRoot = root }
        let cleanup: @Sendable () -> Void = { [fakeHost, keep = options.keepFakeHost] in
            if !keep { fakeHost?.removeTree() }
        }

        // Everything that can fail before serving removes the fake host it leaves behind.
        let script: (any MockScript)?
        let listeningFD: Int32
        var unlinkPath: String?
        do {
            (script, configuration) = try loadScript(options, configuration)
            let address: SocketAddress
            do {
                address = try SocketAddress(parsing: options.listen)
            } catch {
                throw MockError.usage("--listen \(options.listen): \(error)")
            }
            switch address {
            case .unix(let path):
                listeningFD = try Sockets.listenUnix(path: path)
                unlinkPath = path
            case .tcp(let host, let port):
                listeningFD = try Sockets.listenTCP(host: host, port: port)
            }
        } catch {
            cleanup()
            throw error
        }

        let reactor = try Reactor(logger: logger)
        let host = SystemMockHost(sysfs: VFIOSysfs(sysfsRoot: configuration.sysfsRoot, devRoot: configuration.devRoot))
        let machine = MockMachine(configuration: configuration, host: host, script: script)
        let server: MockServer
        do {
            server = try MockServer(
                machine: machine, listeningFD: listeningFD, unlinkPath: unlinkPath, reactor: reactor, logger: logger
            ) { exitStatus in
                // QEMU exiting: its descriptors close with the process, nothing else runs.
                host.stopAllHolders()
                cleanup()
                if let unlinkPath { unlink(unlinkPath) }
                Glibc.exit(exitStatus)
            }
        } catch {
            Glibc.close(listeningFD)
            if let unlinkPath { unlink(unlinkPath) }
            cleanup()
            throw error
        }
        // SIGINT/SIGTERM end the loop; the process never touches Swift concurrency (no idle wake-ups).
        let signals = try TerminationSignals(reactor: reactor) { _ in reactor.stop() }
        print(
            "qmp-mock: listening on \(options.listen) (sysfs-root \(configuration.sysfsRoot), dev-root \(configuration.devRoot), pid \(getpid()))"
        )
        fflush(nil)
        try reactor.run()
        withExtendedLifetime(signals) {}
        let unmet = server.unmetExpectations
        for item in unmet { logger.error("script not played completely: \(item)") }
        server.close()
        host.stopAllHolders()
        cleanup()
        return unmet.isEmpty ? 0 : 1
    }

    /// The scenario or replay script of `options`; a replay also sets the greeting's version.
    private static func loadScript(_ options: MockRunOptions, _ configuration: MockConfiguration) throws(MockError)
        -> ((any MockScript)?, MockConfiguration)
    {
        var configuration = configuration
        if let path = options.scenarioPath {
            return (try ScenarioScript(parsing: try readFile(path), name: path), configuration)
        }
        if let path = options.replayPath {
            let replay = try ReplayScript(
                parsing: try readFile(path), name: path, fallbackToModel: options.replayFallbackToModel)
            if !options.versionGiven, let version = replay.greetingVersion { configuration.version = version }
            return (replay, configuration)
        }
        return (nil, configuration)
    }

    private static func readFile(_ path: String) throws(MockError) -> [UInt8] {
        let fd = Glibc.open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw MockError.syscall("open", errno: errno, "reading \(path)") }
        defer { Glibc.close(fd) }
        var out: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = Glibc.read(fd, &buffer, buffer.count)
            if n < 0 {
                if errno == EINTR { continue }
                throw MockError.syscall("read", errno: errno, "reading \(path)")
            }
            if n == 0 { break }
            out += buffer[0..<n]
        }
        return out
    }
}
