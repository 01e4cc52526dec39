import CQMPShims
import QMPRuntime
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// A unique temporary directory under /tmp (short, so socket paths fit in sun_path); removed by `remove()`.
struct TempDir {
    let path: String

    init() throws {
        var template = Array("/tmp/qs-XXXXXX".utf8CString)
        let result = template.withUnsafeMutableBufferPointer { mkdtemp($0.baseAddress!) }
        try #require(result != nil)
        path = template.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
    }

    func file(_ name: String) -> String { "\(path)/\(name)" }

    func remove() {
        for name in DirectoryEntries.names(in: path) ?? [] { unlink("\(path)/\(name)") }
        rmdir(path)
    }
}

/// Runs `reactor` on the calling thread until a handler calls `stop()` or `timeout` passes.
/// Returns false on timeout (the test then fails with a clear message).
@discardableResult
func runUntilStopped(_ reactor: Reactor, timeout: Duration = .seconds(10)) throws -> Bool {
    var timedOut = false
    let guardTimer = reactor.schedule(after: timeout) {
        timedOut = true
        reactor.stop()
    }
    try reactor.run()
    reactor.cancel(guardTimer)
    #expect(!timedOut, "reactor test timed out")
    return !timedOut
}

/// A pipe (close-on-exec); the caller owns both ends.
func makePipe(nonblocking: Bool = false) throws -> (read: Int32, write: Int32) {
    var fds: [Int32] = [-1, -1]
    let rc = fds.withUnsafeMutableBufferPointer { cqmp_pipe($0.baseAddress!, nonblocking ? 1 : 0) }
    try #require(rc == 0)
    return (fds[0], fds[1])
}

/// What /proc/self/fd/N points to ("pipe:[123]", a path, ...), or nil when N is not open.
func fdTarget(_ fd: Int32) -> String? {
    var buffer = [CChar](repeating: 0, count: 256)
    let count = readlink("/proc/self/fd/\(fd)", &buffer, buffer.count - 1)
    guard count >= 0 else { return nil }
    return String(decoding: buffer[0..<count].map { UInt8(bitPattern: $0) }, as: UTF8.self)
}

/// Number of open descriptors of this process.
func openFDCount() -> Int {
    guard let dir = opendir("/proc/self/fd") else { return -1 }
    defer { closedir(dir) }
    var count = 0
    while readdir(dir) != nil { count += 1 }
    return count - 3  // ".", ".." and the directory's own descriptor
}

func writeAll(_ fd: Int32, _ bytes: [UInt8]) {
    var offset = 0
    while offset < bytes.count {
        let n = bytes[offset...].withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        if n <= 0 { return }
        offset += n
    }
}

/// A connected unix socket to a listening path, blocking (for test clients).
func connectBlocking(_ path: String) throws -> Int32 {
    let fd = try Sockets.connect(to: .unix(path: path))
    let flags = fcntl(fd, F_GETFL)
    _ = fcntl(fd, F_SETFL, flags & ~O_NONBLOCK)
    return fd
}
