import QMPRuntime
import Testing

#if canImport(Glibc)
import Glibc
#endif

@Suite struct DirectoryEntriesTests {
    /// Names of every length from 1 to 255 bytes (the longest a name can be), so records of every size
    /// and a short record at the end of a getdents buffer are read.
    @Test func namesOfEveryLengthAreReadInPlace() throws {
        let dir = try TempDir()
        defer { dir.remove() }
        var expected: Set<String> = []
        for length in 1...255 {
            let name = String(repeating: "abcdefghij", count: 26).prefix(length - 1) + "\(length % 10)"
            let fd = open(dir.file(String(name)), O_WRONLY | O_CREAT | O_CLOEXEC, 0o600)
            try #require(fd >= 0)
            close(fd)
            expected.insert(String(name))
        }
        let names = try #require(DirectoryEntries.names(in: dir.path))
        #expect(names.count == 255)
        #expect(Set(names) == expected)
        #expect(!names.contains(".") && !names.contains(".."))
    }

    @Test func aMissingDirectoryIsNil() {
        #expect(DirectoryEntries.names(in: "/nonexistent-qs-\(getpid())") == nil)
    }
}
