/// Everything the VFIO release monitor can be told from the command line.
///
/// QMPSidecar maps its flags onto this: `--sysfs-root`, `--dev-root`, `--release-timeout`,
/// `--event-prefix`, `--hold-device-deleted`.
public struct VFIOConfiguration: Sendable, Equatable {
    /// Where sysfs is (`--sysfs-root`, default `/sys`). `sysfsdev` values starting with `/sys/` are read
    /// under it.
    public var sysfsRoot: String
    /// Where the device nodes are (`--dev-root`, default `/dev`): `<dev>/vfio/<N>` and
    /// `<dev>/vfio/devices/vfio<X>`.
    public var devRoot: String
    /// Where procfs is (default `/proc`); tests may point it at a fake tree.
    public var procRoot: String
    /// How long a detaching group may wait for release before `GROUP_RELEASE_TIMEOUT`
    /// (`--release-timeout`, default 30 s).
    public var releaseTimeout: Duration
    /// Prepended to both event names (`--event-prefix`, e.g. `__com.example_`).
    public var eventPrefix: String
    /// `--hold-device-deleted`: withhold `DEVICE_DELETED` of VFIO devices until their group is released.
    public var holdDeviceDeleted: Bool
    /// The name of the sidecar's own query command (QMP's downstream `__RFQDN_` convention).
    public var queryCommandName: String
    /// First interval of the backoff poll that runs only while a group is detaching.
    public var pollInitialInterval: Duration
    /// Cap of that backoff poll's interval.
    public var pollMaximumInterval: Duration
    /// Whether to discover cold-plugged devices with `qom-list`/`qom-get` once upstream is ready.
    public var discoverColdPlugged: Bool

    /// The default query command name.
    public static let defaultQueryCommandName = "__org.qmp-sidecar_query-vfio-groups"

    public init(
        sysfsRoot: String = "/sys",
        devRoot: String = "/dev",
        procRoot: String = "/proc",
        releaseTimeout: Duration = .seconds(30),
        eventPrefix: String = "",
        holdDeviceDeleted: Bool = false,
        queryCommandName: String = VFIOConfiguration.defaultQueryCommandName,
        pollInitialInterval: Duration = .milliseconds(1),
        pollMaximumInterval: Duration = .seconds(1),
        discoverColdPlugged: Bool = true
    ) {
        self.sysfsRoot = sysfsRoot
        self.devRoot = devRoot
        self.procRoot = procRoot
        self.releaseTimeout = releaseTimeout
        self.eventPrefix = eventPrefix
        self.holdDeviceDeleted = holdDeviceDeleted
        self.queryCommandName = queryCommandName
        self.pollInitialInterval = pollInitialInterval
        self.pollMaximumInterval = pollMaximumInterval
        self.discoverColdPlugged = discoverColdPlugged
    }

    /// `GROUP_RELEASED` with the prefix.
    public var releasedEventName: String { eventPrefix + "GROUP_RELEASED" }
    /// `GROUP_RELEASE_TIMEOUT` with the prefix.
    public var timeoutEventName: String { eventPrefix + "GROUP_RELEASE_TIMEOUT" }
}

extension Duration {
    /// Whole nanoseconds, clamped at zero.
    var nanosecondsValue: UInt64 {
        let (seconds, attoseconds) = components
        guard seconds >= 0 else { return 0 }
        return UInt64(seconds) * 1_000_000_000 + UInt64(attoseconds / 1_000_000_000)
    }
}
