import Glibc
import QMPWire

/// When the mock sends `DEVICE_DELETED` relative to closing the group fd.
public enum MockEventOrder: String, Sendable, CaseIterable {
    /// QEMU before 2.11: the event at unparent time (right after `device_del`), the close after the finalize delay.
    case beforeClose = "before-close"
    /// QEMU 2.11 and later: the close in finalize, then the event.
    case afterClose = "after-close"
}

/// A QEMU version as the greeting and `query-version` report it.
public struct MockQEMUVersion: Sendable, Equatable {
    public var major: Int
    public var minor: Int
    public var micro: Int
    /// The `package` string (Debian's QEMU says e.g. "Debian 1:7.2+dfsg-7+deb12u18").
    public var package: String

    public init(major: Int, minor: Int, micro: Int, package: String = "") {
        self.major = major
        self.minor = minor
        self.micro = micro
        self.package = package
    }

    /// Parses `7.2.0` (micro optional).
    public init?(parsing text: String, package: String = "") {
        let parts = text.split(separator: ".").map { Int($0) }
        guard (2...3).contains(parts.count), parts.allSatisfy({ $0 != nil && $0! >= 0 }) else { return nil }
        self.init(major: parts[0]!, minor: parts[1]!, micro: parts.count == 3 ? parts[2]! : 0, package: package)
    }

    /// The `{"qemu": {...}, "package": ...}` object.
    var json: JSONValue {
        .object([
            // QAPI member order (major, minor, micro): QDict output order depends on insertion order.
            JSONMember(
                "qemu",
                .object([
                    JSONMember("major", .integer(Int64(major))), JSONMember("minor", .integer(Int64(minor))),
                    JSONMember("micro", .integer(Int64(micro))),
                ])
            ),
            JSONMember("package", .string(package)),
        ])
    }
}

/// A device present from the start (`--device DRIVER,host=BDF,id=ID`), as QEMU's `-device`.
public struct MockDeviceSpec: Sendable, Equatable {
    public var driver: String
    /// Properties other than `driver`, in the order given.
    public var properties: [(String, String)]

    public init(driver: String, properties: [(String, String)]) {
        self.driver = driver
        self.properties = properties
    }

    public static func == (lhs: MockDeviceSpec, rhs: MockDeviceSpec) -> Bool {
        lhs.driver == rhs.driver && lhs.properties.elementsEqual(rhs.properties) { $0 == $1 }
    }

    /// Parses QEMU's `-device` syntax: `DRIVER,key=value,...` (`,,` is a literal comma).
    public init(parsing text: String) throws(MockError) {
        var fields: [String] = []
        var current = ""
        var chars = Array(text)
        var i = 0
        while i < chars.count {
            if chars[i] == "," {
                if i + 1 < chars.count && chars[i + 1] == "," {
                    current.append(",")
                    i += 2
                    continue
                }
                fields.append(current)
                current = ""
            } else {
                current.append(chars[i])
            }
            i += 1
        }
        fields.append(current)
        chars = []
        guard let driver = fields.first, !driver.isEmpty, !driver.contains("=") else {
            throw MockError.usage(
                "--device \(text): expected DRIVER,key=value,... e.g. vfio-pci,host=0000:01:00.0,id=hostdev0")
        }
        var properties: [(String, String)] = []
        for field in fields.dropFirst() {
            guard let eq = field.firstIndex(of: "="), eq != field.startIndex else {
                throw MockError.usage("--device \(text): property '\(field)' needs a value, as key=value")
            }
            properties.append((String(field[..<eq]), String(field[field.index(after: eq)...])))
        }
        self.init(driver: driver, properties: properties)
    }

    /// The properties as `device_add` arguments (all strings, as QEMU's -device gives them).
    var arguments: JSONValue {
        .object([JSONMember("driver", .string(driver))] + properties.map { JSONMember($0.0, .string($0.1)) })
    }
}

/// Faults to inject, all off by default.
public struct MockFaultPlan: Sendable, Equatable {
    /// Groups whose fd is never closed (a leak in QEMU): the sidecar must time out, naming the mock.
    public var leakGroups: Set<Int> = []
    /// Groups that a second process (a child of the mock) also holds, with how long it keeps its copy
    /// after the mock closes its own (nil: until the mock exits).
    public var secondHolder: [Int: Double?] = [:]
    /// Seconds to wait before executing a command, by command name; `*` applies to every command.
    public var slowReplies: [String: Double] = [:]
    /// Commands whose reply is cut in the middle, after which the connection is closed.
    public var dropMidReply: Set<String> = []
    /// Commands on whose arrival the mock process exits at once (status 3), without replying.
    public var exitOnCommand: Set<String> = []

    public init() {}

    /// The delay for `command`, in nanoseconds, or nil.
    func delay(for command: String) -> Int64? {
        guard let seconds = slowReplies[command] ?? slowReplies["*"], seconds > 0 else { return nil }
        return Int64(seconds * 1e9)
    }
}

/// Everything the mock's model needs to know, without I/O.
public struct MockConfiguration: Sendable {
    public var version = MockQEMUVersion(major: 7, minor: 2, micro: 0)
    /// Seconds between `device_del` and finalize (the group fd close).
    public var finalizeDelay: Double = 0
    public var eventOrder: MockEventOrder = .afterClose
    /// The sysfs root devices are read under (`/sys` on a real host); `sysfsdev` values and error texts
    /// of devices given by `host` name paths under it.
    public var sysfsRoot = "/sys"
    /// The dev root where group nodes (`vfio/<N>`) and cdevs (`vfio/devices/vfio<X>`) are opened.
    public var devRoot = "/dev"
    /// Cold-plugged devices, realized at start in order.
    public var devices: [MockDeviceSpec] = []
    public var faults = MockFaultPlan()
    /// `query-status` before any `cont`: QEMU started with `-S` says `prelaunch`.
    public var startPaused = true
    /// `--native-group-events`: behave like a QEMU that has contrib/qapi/vfio-group-events.json.
    public var nativeGroupEvents = false
    /// Seconds after a group's last `DEVICE_DELETED` before a native `GROUP_RELEASE_TIMEOUT`.
    public var nativeReleaseTimeout: Double = 30
    /// The process a native `GROUP_RELEASE_TIMEOUT` names as holder (the mock itself).
    public var holder = MockHolder(pid: 0, comm: "qmp-mock")

    public init() {}
}

/// A process holding a group, as `GROUP_RELEASE_TIMEOUT` names it.
public struct MockHolder: Sendable, Equatable {
    public var pid: Int64
    public var comm: String

    public init(pid: Int64, comm: String) {
        self.pid = pid
        self.comm = comm
    }
}

/// A mock failure that the user can fix; `description` says how.
public struct MockError: Error, CustomStringConvertible, Sendable {
    public struct Code: Hashable, Sendable {
        private enum Value { case usage, io, scenario }
        private let value: Value
        public static let usage = Code(value: .usage)
        public static let io = Code(value: .io)
        public static let scenario = Code(value: .scenario)
    }

    public let code: Code
    public let description: String

    public static func usage(_ message: String) -> MockError { MockError(code: .usage, description: message) }
    public static func scenario(_ message: String) -> MockError { MockError(code: .scenario, description: message) }

    /// A failed system call, with its name and errno.
    public static func syscall(_ call: String, errno: Int32, _ context: String) -> MockError {
        MockError(
            code: .io, description: "\(context): \(call) failed: \(String(cString: strerror(errno))) (errno \(errno))")
    }
}
