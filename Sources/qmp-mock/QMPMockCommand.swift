import ArgumentParser
import Logging
import QMPMock

#if canImport(Glibc)
import Glibc
#endif

/// `qmp-mock`: a mock QEMU speaking real QMP with real VFIO group semantics.
@main
struct QMPMockCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "qmp-mock",
        abstract: "A mock QEMU 7.2 QMP monitor with VFIO semantics, fault injection, scenarios and replay.",
        discussion: """
            Serves QMP on a unix (or TCP) socket as QEMU 7.2 does, byte for byte: greeting with "oob", \
            capability negotiation, query-status, query-version, qom-list, qom-get, device_add and \
            device_del (vfio-pci, usb-kbd), getfd/closefd/add-fd/remove-fd with SCM_RIGHTS, stop, cont, \
            quit; QEMU's error texts. A vfio-pci device really opens <dev-root>/vfio/<N> (once per \
            group) and closes it when the last device of the group is finalized; with iommufd=ID on \
            the device, <dev-root>/vfio/devices/vfio<X> is opened per device instead (or the fd=NAME \
            passed with getfd is used). Full reference: docs/qmp-mock.md.

            Example: two-function group 7, cold-plugged, 200 ms finalize:
              qmp-mock --listen unix:/tmp/qs-vm.qmp --fake-host 7=0000:01:00.0,0000:01:00.1
                --device vfio-pci,host=0000:01:00.0,id=hostdev0
                --device vfio-pci,host=0000:01:00.1,id=hostdev1 --finalize-delay 0.2

            Prints one line "qmp-mock: listening on ..." on standard output once clients can connect. \
            Exit status: 0 on SIGINT/SIGTERM or quit; 1 when a --scenario or --replay was not played \
            completely (what is missing is logged); 3 after --exit-on; 64 on bad options.
            """
    )

    @Option(help: "Where to listen: unix:PATH or tcp:HOST:PORT.")
    var listen: String

    @Option(help: "sysfs root for device lookups (default /sys; not with --fake-host, see --fake-host-root).")
    var sysfsRoot: String?

    @Option(
        help:
            "dev root where vfio/<N> and vfio/devices/vfio<X> are opened (default /dev; not with --fake-host, see --fake-host-root)."
    )
    var devRoot: String?

    @Option(
        name: .customLong("device"),
        help: ArgumentHelp(
            "Cold-plugged device as QEMU's -device: DRIVER,host=BDF,id=ID (repeatable).",
            valueName: "DRIVER,key=value,..."))
    var devices: [String] = []

    @Option(
        name: .customLong("fake-host"),
        help: ArgumentHelp(
            "Create a fake sysfs/dev tree with IOMMU group N and its members, e.g. 7=0000:01:00.0,0000:01:00.1 (repeatable; sets --sysfs-root and --dev-root).",
            valueName: "N=BDF,BDF..."))
    var fakeHosts: [String] = []

    @Option(help: "Build the --fake-host tree in this directory (default: a fresh /tmp/qs-fh-XXXXXX).")
    var fakeHostRoot: String?

    @Flag(help: "Leave the --fake-host tree on disk at exit.")
    var keepFakeHost = false

    @Option(help: "Seconds between device_del and finalize (the group fd close).")
    var finalizeDelay: Double = 0

    @Option(
        help: ArgumentHelp(
            "DEVICE_DELETED before the close (QEMU < 2.11, at unparent) or after it (2.11+, from finalize).",
            valueName: "before-close|after-close"))
    var eventOrder: String = "after-close"

    @Option(help: "QEMU version in the greeting and query-version (MAJOR.MINOR.MICRO; default 7.2.0).")
    var qemuVersion: String?

    @Option(help: "The 'package' string of the version (Debian's QEMU says e.g. \"Debian 1:7.2+dfsg-7\").")
    var qemuPackage: String = ""

    @Flag(help: "Start running (query-status 'running') instead of paused in prelaunch as with -S.")
    var running = false

    @Flag(
        help:
            "Behave like a QEMU with the draft VFIO group events (contrib/qapi/vfio-group-events.json): list GROUP_RELEASED and GROUP_RELEASE_TIMEOUT in query-qmp-schema and emit them."
    )
    var nativeGroupEvents = false

    @Option(
        help: "With --native-group-events: seconds after a group's last DEVICE_DELETED before GROUP_RELEASE_TIMEOUT.")
    var nativeReleaseTimeout: Double = 30

    @Option(name: .customLong("leak-group"), help: "Fault: never close the fd of group N (repeatable).")
    var leakGroups: [Int] = []

    @Option(
        name: .customLong("second-holder"),
        help: ArgumentHelp(
            "Fault: a second process holds group N's open file; with :SECONDS it lets go that long after the mock's own close, else at mock exit (repeatable).",
            valueName: "N[:SECONDS]"))
    var secondHolders: [String] = []

    @Option(
        name: .customLong("slow-reply"),
        help: ArgumentHelp(
            "Fault: execute COMMAND only after SECONDS, holding back later commands of that client as QEMU does; * for every command (repeatable).",
            valueName: "COMMAND=SECONDS"))
    var slowReplies: [String] = []

    @Option(
        name: .customLong("drop-mid-reply"),
        help: "Fault: send half of COMMAND's reply, then close the connection (repeatable).")
    var dropMidReply: [String] = []

    @Option(
        name: .customLong("exit-on"),
        help: "Fault: exit at once (status 3, no reply) when COMMAND arrives, as a crashing QEMU (repeatable).")
    var exitOn: [String] = []

    @Option(help: "Scenario file: expected commands with canned replies and timed events (see docs/qmp-mock.md).")
    var scenario: String?

    @Option(help: "Replay the QEMU side of a 'qmp-sidecar --trace FILE' recording.")
    var replay: String?

    @Flag(help: "With --replay: answer unrecorded commands with the built-in model instead of an error.")
    var replayFallbackModel = false

    @Option(help: "Log level: trace, debug, info, notice, warning, error, critical.")
    var logLevel: String = "info"

    func validate() throws {
        guard MockEventOrder(rawValue: eventOrder) != nil else {
            throw ValidationError("--event-order must be before-close or after-close, not '\(eventOrder)'")
        }
        if let qemuVersion, MockQEMUVersion(parsing: qemuVersion) == nil {
            throw ValidationError("--qemu-version must look like 7.2.0, not '\(qemuVersion)'")
        }
        guard Logger.Level(rawValue: logLevel) != nil else {
            throw ValidationError("--log-level must be one of trace, debug, info, notice, warning, error, critical")
        }
        if scenario != nil && replay != nil { throw ValidationError("give --scenario or --replay, not both") }
        if finalizeDelay < 0 { throw ValidationError("--finalize-delay must be 0 or more seconds") }
    }

    func run() throws {
        let level = Logger.Level(rawValue: logLevel)!
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
        var options = MockRunOptions()
        options.listen = listen
        options.sysfsRoot = sysfsRoot
        options.devRoot = devRoot
        options.fakeHostSpecs = fakeHosts
        options.fakeHostRoot = fakeHostRoot
        options.keepFakeHost = keepFakeHost
        options.scenarioPath = scenario
        options.replayPath = replay
        options.replayFallbackToModel = replayFallbackModel
        var configuration = MockConfiguration()
        if let qemuVersion {
            configuration.version = MockQEMUVersion(parsing: qemuVersion, package: qemuPackage)!
            options.versionGiven = true
        } else {
            configuration.version.package = qemuPackage
        }
        configuration.finalizeDelay = finalizeDelay
        configuration.eventOrder = MockEventOrder(rawValue: eventOrder)!
        configuration.startPaused = !running
        do {
            configuration.devices = try devices.map { text throws(MockError) in try MockDeviceSpec(parsing: text) }
        } catch {
            throw ValidationError(error.description)
        }
        configuration.nativeGroupEvents = nativeGroupEvents
        configuration.nativeReleaseTimeout = nativeReleaseTimeout
        configuration.holder = MockHolder(pid: Int64(getpid()), comm: "qmp-mock")
        configuration.faults.leakGroups = Set(leakGroups)
        for item in secondHolders {
            let parts = item.split(separator: ":", maxSplits: 1)
            guard let first = parts.first, let group = Int(first), parts.count == 1 || Double(parts[1]) != nil else {
                throw ValidationError("--second-holder takes N or N:SECONDS, not '\(item)'")
            }
            configuration.faults.secondHolder[group] = parts.count == 2 ? Double(parts[1]) : .some(nil)
        }
        for item in slowReplies {
            guard let eq = item.lastIndex(of: "="), let seconds = Double(item[item.index(after: eq)...]) else {
                throw ValidationError("--slow-reply takes COMMAND=SECONDS, not '\(item)'")
            }
            configuration.faults.slowReplies[String(item[..<eq])] = seconds
        }
        configuration.faults.dropMidReply = Set(dropMidReply)
        configuration.faults.exitOnCommand = Set(exitOn)
        options.configuration = configuration

        let logger = Logger(label: "qmp-mock")
        let status: Int32
        do {
            status = try MockRunner.run(options, logger: logger)
        } catch let error as MockError where error.code == .usage || error.code == .scenario {
            throw ValidationError(error.description)
        }
        if status != 0 { throw ExitCode(status) }
    }
}
