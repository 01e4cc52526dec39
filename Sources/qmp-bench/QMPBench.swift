import ArgumentParser

/// `qmp-bench`: benchmark programs; each prints its figures and a ratio against a baseline
/// measured in the same run.
///
/// To add a benchmark, put a `ParsableCommand` in its own file here and list it in `subcommands`.
@main
struct QMPBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "qmp-bench",
        abstract: "Benchmarks for qmp-sidecar (figures with a same-run baseline and ratio).",
        subcommands: [
            FramerBench.self, ProxyBenchmark.self, RouterBench.self, ReleaseBenchmark.self, ReleaseFloor.self,
            ShellFloor.self,
        ]
    )
}
