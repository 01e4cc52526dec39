import QMPRuntime

#if canImport(Glibc)
import Glibc
#endif

/// What a test can see of another process through `/proc`: its open descriptors and its memory,
/// to check that a fault leaked neither.
public enum ProcessProbe {
    /// The number of open descriptors of `pid` (`/proc/<pid>/fd`), or nil when it is gone.
    public static func openDescriptors(of pid: pid_t) -> Int? {
        DirectoryEntries.names(in: "/proc/\(pid)/fd")?.count
    }

    /// The resident set size of `pid` in KiB (`VmRSS` in `/proc/<pid>/status`), or nil.
    public static func residentKiB(of pid: pid_t) -> Int? {
        statusKiB("VmRSS:", of: pid)
    }

    /// The peak resident set size of `pid` in KiB (`VmHWM`), or nil.
    public static func peakResidentKiB(of pid: pid_t) -> Int? {
        statusKiB("VmHWM:", of: pid)
    }

    private static func statusKiB(_ field: String, of pid: pid_t) -> Int? {
        guard let file = fopen("/proc/\(pid)/status", "r") else { return nil }
        defer { fclose(file) }
        var line = [CChar](repeating: 0, count: 256)
        while fgets(&line, Int32(line.count), file) != nil {
            let text = String(decoding: line.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
            if text.hasPrefix(field) {
                return Int(text.dropFirst(field.count).split(whereSeparator: { $0 == " " || $0 == "\t" }).first ?? "")
            }
        }
        return nil
    }
}
