#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// Reading directories without copying `dirent.d_name`.
///
/// `entry.pointee.d_name` is a 256-byte tuple; copying it out of a `readdir` entry reads 256 bytes
/// even when the kernel's record is shorter, past the end of the getdents buffer for the last record,
/// which can fault (it crashed `qmp-bench release`). The name is a NUL-terminated string inside the
/// record: these helpers read it in place.
public enum DirectoryEntries {
    /// The names in directory `path`, without `.` and `..`, in `readdir` order; nil when it cannot be
    /// opened.
    public static func names(in path: String) -> [String]? {
        guard let dir = opendir(path) else { return nil }
        defer { closedir(dir) }
        var names: [String] = []
        while let entry = readdir(dir) {
            let name = String(cString: name(of: entry))
            if name != "." && name != ".." { names.append(name) }
        }
        return names
    }

    /// The name of a `readdir` entry, in place (valid until the next `readdir`/`closedir` of its
    /// stream).
    public static func name(of entry: UnsafeMutablePointer<dirent>) -> UnsafePointer<CChar> {
        UnsafeRawPointer(entry).advanced(by: MemoryLayout<dirent>.offset(of: \dirent.d_name)!)
            .assumingMemoryBound(to: CChar.self)
    }
}
