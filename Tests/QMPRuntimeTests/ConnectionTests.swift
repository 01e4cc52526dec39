import QMPRuntime
import Testing

#if canImport(Glibc)
import Glibc
#endif

@Suite("Connection")
struct ConnectionTests {
    @Test("bytes go both ways; EOF closes with exactly one callback")
    func roundTrip() throws {
        let reactor = try Reactor()
        let (a, b) = try Sockets.socketPair()
        let left = Connection(fd: a, reactor: reactor)
        let right = Connection(fd: b, reactor: reactor)
        var leftReceived: [UInt8] = []
        var rightReceived: [UInt8] = []
        var closes: [String] = []
        right.onRead = { bytes, fds in
            #expect(fds.isEmpty)
            rightReceived += bytes
            if rightReceived.count == 5 { right.send(Array("pong\r\n".utf8)) }
        }
        left.onRead = { bytes, _ in
            leftReceived += bytes
            if leftReceived.count == 6 { left.close() }
        }
        left.onClose = { reason in closes.append("left:\(reason)") }
        right.onClose = { reason in
            closes.append("right:\(reason)")
            reactor.stop()
        }
        left.start()
        right.start()
        left.send(Array("pi".utf8))
        left.send(Array("ng\n".utf8))
        try runUntilStopped(reactor)
        #expect(rightReceived == Array("ping\n".utf8))
        #expect(leftReceived == Array("pong\r\n".utf8))
        #expect(closes == ["left:closed locally", "right:end of file"])
        left.close()
        right.close()
        #expect(closes.count == 2)
        #expect(reactor.registrationCount == 0)
    }

    @Test("a pipe's write end passed through a socketpair works on the other side; our copy is closed")
    func fdPassing() throws {
        let reactor = try Reactor()
        let (a, b) = try Sockets.socketPair()
        let pipe = try makePipe()
        defer { close(pipe.read) }
        let pipeIdentity = try #require(fdTarget(pipe.write))
        let sender = Connection(fd: a, reactor: reactor)
        let receiver = Connection(fd: b, reactor: reactor)
        var received: [Int32] = []
        receiver.onRead = { bytes, fds in
            #expect(Array(bytes) == Array("getfd\r\n".utf8))
            received += fds
            reactor.stop()
        }
        sender.start()
        receiver.start()
        sender.send(Array("getfd\r\n".utf8), fds: [pipe.write])
        // Sent at once (the socket had room): our copy is already closed.
        #expect(fdTarget(pipe.write) != pipeIdentity)
        try runUntilStopped(reactor)
        try #require(received.count == 1)
        let passed = received[0]
        #expect(fdTarget(passed) == pipeIdentity)
        #expect(fcntl(passed, F_GETFD) & FD_CLOEXEC != 0)
        writeAll(passed, Array("through".utf8))
        close(passed)
        // Every write end is now closed (ours by the connection, the passed one above): read sees EOF.
        var buffer = [UInt8](repeating: 0, count: 64)
        let n = read(pipe.read, &buffer, buffer.count)
        #expect(Array(buffer[0..<max(n, 0)]) == Array("through".utf8))
        #expect(read(pipe.read, &buffer, buffer.count) == 0)
        sender.close()
        receiver.close()
    }

    @Test("a partial send keeps each fd batch attached to its own chunk's first bytes")
    func partialSendWithFDs() throws {
        let reactor = try Reactor()
        let (a, b) = try Sockets.socketPair()
        var small: Int32 = 4096
        setsockopt(a, SOL_SOCKET, SO_SNDBUF, &small, socklen_t(MemoryLayout<Int32>.size))
        let first = try makePipe()
        let second = try makePipe()
        defer { close(first.read); close(second.read) }
        let firstIdentity = try #require(fdTarget(first.write))
        let secondIdentity = try #require(fdTarget(second.write))
        let chunkA = [UInt8](repeating: 0x61, count: 300_000)
        let chunkB = [UInt8](repeating: 0x62, count: 200_000)
        let sender = Connection(fd: a, reactor: reactor)
        let receiver = Connection(fd: b, reactor: reactor)
        var offset = 0
        var batches: [(start: Int, end: Int, fds: [String?])] = []
        var bytesSeen: [UInt8] = []
        receiver.onRead = { bytes, fds in
            if !fds.isEmpty {
                batches.append((offset, offset + bytes.count, fds.map(fdTarget)))
                for fd in fds { close(fd) }
            }
            offset += bytes.count
            bytesSeen += bytes
            if offset == chunkA.count + chunkB.count { reactor.stop() }
        }
        sender.start()
        sender.send(chunkA, fds: [first.write])
        sender.send(chunkB, fds: [second.write])
        #expect(sender.pendingBytes > 0, "the small send buffer should force a partial send")
        receiver.start()
        try runUntilStopped(reactor)
        #expect(bytesSeen == chunkA + chunkB)
        try #require(batches.count == 2)
        #expect(batches[0].start == 0)
        #expect(batches[0].fds == [firstIdentity])
        // The second batch arrives with a read that contains chunk B's first byte.
        #expect(batches[1].start <= chunkA.count && chunkA.count < batches[1].end)
        #expect(batches[1].fds == [secondIdentity])
        #expect(sender.pendingBytes == 0)
        sender.close()
        receiver.close()
    }

    @Test("output past maxPendingBytes calls onOverflow; closing then closes queued fds")
    func boundedOutput() throws {
        let reactor = try Reactor()
        let (a, b) = try Sockets.socketPair()
        let pipe = try makePipe()
        defer { close(pipe.read) }
        let connection = Connection(fd: a, reactor: reactor, maxPendingBytes: 64 * 1024)
        var overflows = 0
        var closeReason: String?
        connection.onOverflow = {
            overflows += 1
            connection.close()
        }
        connection.onClose = { closeReason = "\($0)" }
        connection.start()
        let block = [UInt8](repeating: 0x7a, count: 16 * 1024)
        var sent = 0
        var fdQueued = false
        while !connection.isClosed && sent < 10_000 {
            // The peer (b) never reads. Once output is queued, queue the pipe's write end too.
            if connection.pendingBytes > 0 && !fdQueued {
                fdQueued = true
                connection.send(block, fds: [pipe.write])
            } else {
                connection.send(block)
            }
            sent += 1
        }
        #expect(fdQueued)
        #expect(overflows == 1)
        #expect(connection.isClosed)
        #expect(closeReason == "closed locally")
        #expect(sent * block.count < 4 << 20, "overflow should come soon after the bound")
        // The queued write end never reached the kernel and was closed with the connection: EOF.
        var buffer = [UInt8](repeating: 0, count: 8)
        #expect(read(pipe.read, &buffer, 8) == 0)
        close(b)
    }

    @Test("one send larger than maxPendingBytes reaches a peer that reads; what follows it still counts")
    func oversizedSend() throws {
        let reactor = try Reactor()
        let (a, b) = try Sockets.socketPair()
        let connection = Connection(fd: a, reactor: reactor, maxPendingBytes: 64 * 1024)
        var overflows = 0
        connection.onOverflow = { overflows += 1 }
        connection.start()
        // A 1 MiB reply, 16 times the bound, to a peer that has not read yet: not an overflow.
        let reply = [UInt8](repeating: 0x61, count: 1 << 20)
        connection.send(reply)
        #expect(connection.pendingBytes > 64 * 1024)
        #expect(overflows == 0)
        // The peer stops reading: more than the bound queued behind the reply is an overflow.
        for _ in 0..<4 { connection.send([UInt8](repeating: 0x62, count: 20 * 1024)) }
        #expect(overflows == 1)
        // Once the peer reads, everything arrives, the reply first and whole.
        let peer = Connection(fd: b, reactor: reactor)
        var received: [UInt8] = []
        let total = reply.count + 4 * 20 * 1024
        peer.onRead = { bytes, _ in
            received += bytes
            if received.count == total { reactor.stop() }
        }
        peer.start()
        try runUntilStopped(reactor)
        #expect(received.prefix(reply.count).allSatisfy { $0 == 0x61 })
        #expect(received.suffix(4 * 20 * 1024).allSatisfy { $0 == 0x62 })
        #expect(connection.pendingBytes == 0)
        connection.close()
        peer.close()
    }

    @Test("only one oversized send at a time is exempt: a peer asking for large replies and not reading is cut off")
    func secondOversizedSendCounts() throws {
        let reactor = try Reactor()
        let (a, b) = try Sockets.socketPair()
        defer { close(b) }
        let connection = Connection(fd: a, reactor: reactor, maxPendingBytes: 64 * 1024)
        var overflows = 0
        connection.onOverflow = { overflows += 1 }
        connection.start()
        connection.send([UInt8](repeating: 0x61, count: 1 << 20))
        #expect(overflows == 0)
        connection.send([UInt8](repeating: 0x62, count: 1 << 20))
        #expect(overflows == 1)
        connection.close()
    }

    @Test("a write error inside send closes at once but reports onClose on the next round")
    func writeErrorDeferred() throws {
        let reactor = try Reactor()
        let (a, b) = try Sockets.socketPair()
        close(b)
        let connection = Connection(fd: a, reactor: reactor)
        var reasons: [String] = []
        connection.onClose = { reason in
            reasons.append("\(reason)")
            reactor.stop()
        }
        connection.start()
        connection.send(Array("lost".utf8))
        #expect(connection.isClosed)
        #expect(reasons.isEmpty)
        try runUntilStopped(reactor)
        #expect(reasons.count == 1)
        #expect(reasons.first?.contains("sendmsg") == true)
        connection.send(Array("ignored".utf8))
        connection.close()
        #expect(reasons.count == 1)
    }

    @Test("paused reading delivers nothing until resumed; peerPID names this process")
    func pauseReading() throws {
        let reactor = try Reactor()
        let (a, b) = try Sockets.socketPair()
        defer { close(b) }
        let connection = Connection(fd: a, reactor: reactor)
        #expect(connection.peerPID == getpid())
        var received: [UInt8] = []
        connection.onRead = { bytes, _ in
            received += bytes
            reactor.stop()
        }
        connection.isReadingEnabled = false
        connection.start()
        writeAll(b, Array("queued".utf8))
        reactor.schedule(after: .milliseconds(30)) {
            #expect(received.isEmpty)
            connection.isReadingEnabled = true
        }
        try runUntilStopped(reactor)
        #expect(received == Array("queued".utf8))
        connection.close()
    }
}
