import ArgumentParser

@main
struct QMPSidecarMain: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "qmp-sidecar",
        abstract: "A transparent proxy on QEMU's QMP socket that tells clients when a VFIO IOMMU group is really free.",
        discussion: """
            The proxy is the default subcommand: `qmp-sidecar --upstream unix:/run/vm1.qmp --listen \
            unix:/run/vm1.sidecar.qmp` is `qmp-sidecar proxy --upstream ...`; `qmp-sidecar help proxy` \
            lists its options (--upstream, --listen, --take-over, --metrics-file, --log-format, ...). \
            `qmp-sidecar status SOCKET` shows what a running sidecar tracks.
            """,
        subcommands: [QMPSidecarCommand.self, StatusCommand.self],
        defaultSubcommand: QMPSidecarCommand.self
    )
}
