import ArgumentParser

#if canImport(Glibc)
import Glibc
#endif

/// `qmp-bench release-floor PATH...`: the floor of `qmp-bench release` — the least any watcher can
/// do. It blocks in `read` on an inotify instance watching the nodes for their last close and writes
/// one line per close event; nothing else (no QMP, no `/proc`). It prints `ready` once it watches.
struct ReleaseFloor: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "release-floor",
        abstract: "Minimal inotify watcher (the floor qmp-bench release compares with): one line per close.",
        shouldDisplay: false)

    @Argument(help: "Nodes to watch.")
    var paths: [String]

    func run() throws {
        let fd = inotify_init1(Int32(IN_CLOEXEC))
        guard fd >= 0 else { throw ValidationError("inotify_init1 failed: errno \(errno)") }
        for path in paths where inotify_add_watch(fd, path, UInt32(IN_CLOSE_WRITE) | UInt32(IN_CLOSE_NOWRITE)) < 0 {
            throw ValidationError("cannot watch \(path): errno \(errno)")
        }
        let ready = Array("ready\n".utf8)
        _ = write(STDOUT_FILENO, ready, ready.count)
        let line = Array("close\n".utf8)
        var buffer = [UInt8](repeating: 0, count: 4096)
        while true {
            let count = read(fd, &buffer, buffer.count)
            if count < 0 && errno == EINTR { continue }
            guard count > 0 else { return }
            var offset = 0
            while offset + MemoryLayout<inotify_event>.size <= count {
                let nameLength = buffer.withUnsafeBytes {
                    Int($0.loadUnaligned(fromByteOffset: offset + 12, as: UInt32.self))
                }
                offset += MemoryLayout<inotify_event>.size + nameLength
                _ = write(STDOUT_FILENO, line, line.count)
            }
        }
    }
}
