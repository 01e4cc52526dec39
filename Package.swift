// swift-tools-version:6.1
import PackageDescription

let package = Package(
    name: "qmp-sidecar",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "qmp-sidecar", targets: ["qmp-sidecar"]),
        .executable(name: "qmp-mock", targets: ["qmp-mock"]),
        .executable(name: "qmp-bench", targets: ["qmp-bench"]),
        .library(name: "QMPWire", targets: ["QMPWire"]),
        .library(name: "QMPMock", targets: ["QMPMock"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-metrics.git", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus.git", from: "2.4.1"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle.git", from: "2.6.0"),
    ],
    targets: [
        // C: jansson through pkg-config, and what Swift cannot import from glibc.
        .systemLibrary(
            name: "CJansson",
            pkgConfig: "jansson",
            providers: [.apt(["libjansson-dev"])]
        ),
        .target(name: "CQMPShims"),

        // Pure protocol core: no I/O.
        .target(name: "QMPWire", dependencies: ["CJansson"]),
        .target(name: "QMPProxy", dependencies: ["QMPWire"]),

        // VFIO rules, no I/O shell: device registry, group state machine, open-description counting,
        // sysfs and PCI rules (sysfs read through an injected root). The driver that owns inotify,
        // pidfd and timers is QMPSidecar/VFIO.
        .target(name: "VFIOTracking", dependencies: ["QMPWire", "CQMPShims"]),

        // Kernel-shaped fake sysfs/dev trees: qmp-mock --fake-host and the tests build hosts with it.
        .target(name: "VFIOFakeHost", dependencies: ["QMPRuntime", "VFIOTracking"]),

        // The I/O shell: one poll() reactor, sockets with SCM_RIGHTS, inotify, pidfd, timers.
        .target(
            name: "QMPRuntime",
            dependencies: ["CQMPShims", .product(name: "Logging", package: "swift-log")]
        ),

        // Products as libraries; the executables only parse arguments and run them.
        .target(
            name: "QMPSidecar",
            dependencies: [
                "QMPWire", "QMPProxy", "VFIOTracking", "QMPRuntime",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "CoreMetrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
            ]
        ),
        .target(
            name: "QMPMock",
            dependencies: [
                "QMPWire", "QMPRuntime", "VFIOTracking", "VFIOFakeHost", "CQMPShims",
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .executableTarget(
            name: "qmp-sidecar",
            dependencies: [
                "QMPSidecar", "QMPRuntime", "VFIOTracking",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .executableTarget(
            name: "qmp-mock",
            dependencies: [
                "QMPMock",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .executableTarget(
            name: "qmp-bench",
            dependencies: [
                "QMPWire", "QMPProxy", "QMPRuntime", "QMPTestKit", "VFIOTracking", "VFIOFakeHost",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),

        // Shared test fixtures: spawned processes, a QMP test client, a QEMU launcher.
        .target(name: "QMPTestKit", dependencies: ["QMPRuntime", "CQMPShims"]),

        .testTarget(name: "QMPWireTests", dependencies: ["QMPWire", "QMPTestKit"]),
        .testTarget(name: "QMPProxyTests", dependencies: ["QMPProxy", "QMPWire"]),
        .testTarget(
            name: "QMPSidecarTests",
            dependencies: [
                "QMPSidecar", "QMPProxy", "QMPWire", "CQMPShims", .product(name: "Logging", package: "swift-log"),
            ]),
        .testTarget(
            name: "VFIOTrackingTests",
            dependencies: [
                "VFIOTracking", "VFIOFakeHost", "QMPRuntime", "QMPSidecar", "QMPProxy", "QMPWire",
                "CQMPShims", .product(name: "Logging", package: "swift-log"),
            ]),
        .testTarget(name: "QMPRuntimeTests", dependencies: ["QMPRuntime", "QMPTestKit", "CQMPShims"]),
        .testTarget(
            name: "QMPMockTests", dependencies: ["QMPMock", "QMPTestKit", "CQMPShims", "qmp-mock", "qmp-sidecar"]),
        .testTarget(
            name: "IntegrationTests",
            dependencies: [
                "QMPSidecar", "QMPRuntime", "QMPTestKit", "CQMPShims", "qmp-sidecar", "qmp-mock",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            exclude: ["python"]
        ),
    ]
)

for target in package.targets where target.type != .system {
    var settings = target.swiftSettings ?? []
    settings.append(.enableUpcomingFeature("ExistentialAny"))
    settings.append(.enableUpcomingFeature("MemberImportVisibility"))
    target.swiftSettings = settings
}

// The proxy's hot path (reactor, connections, router, sidecar core) runs without dynamic exclusivity
// checks in release builds: they cost about 15 % of its instructions per round trip (callgrind), and
// strict concurrency already rules out the overlapping accesses they would catch across threads.
// qmp-bench is built the same way, so that its shell floor (a byte pump on that runtime) pays no
// check the sidecar does not pay.
for target in package.targets where ["QMPProxy", "QMPRuntime", "QMPSidecar", "qmp-bench"].contains(target.name) {
    target.swiftSettings!.append(.unsafeFlags(["-enforce-exclusivity=unchecked"], .when(configuration: .release)))
}
