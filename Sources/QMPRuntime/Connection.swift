import CQMPShims
import Logging

#if canImport(Glibc)
import Glibc
#endif

/// A nonblocking stream socket on a ``Reactor``: reads bytes with the descriptors that came with them,
/// writes a queue of chunks, each chunk's descriptors attached to its first bytes.
///
/// Reading: each `recvmsg` (up to 64 KiB) is delivered to ``onRead`` as `(bytes, fds)`; the handler
/// owns the fds it receives (close them or pass them on). The kernel never mixes descriptors of two
/// `sendmsg` calls in one read, but fd-less bytes sent before may come in the same read.
///
/// Writing: ``send(_:fds:)`` queues a chunk. A chunk with descriptors always starts a new `sendmsg`
/// that carries them with its first bytes; if that call is partial the rest follows without
/// descriptors. Consecutive fd-less chunks are coalesced. Write interest is on only while output is
/// pending; EAGAIN waits for POLLOUT, never spins.
///
/// Closing: EOF, ECONNRESET, EPIPE or any other socket error closes the connection and calls
/// ``onClose`` exactly once; ``close()`` does the same (reason `.local`) and is idempotent. A write
/// error met inside ``send(_:fds:)`` closes the socket at once but reports ``onClose`` on the next loop
/// round, never from within `send`. ``onOverflow`` is called from within `send`.
///
/// - Important: Use only on the reactor's thread. The connection owns its socket descriptor and the
///   descriptors queued with ``send(_:fds:)`` (closed once sent, or when the connection closes).
///   While open, the reactor's registration keeps the connection alive; after close it is released.
public final class Connection {
    /// Why a connection closed.
    public enum CloseReason: Sendable, CustomStringConvertible {
        /// The peer closed its end (read returned 0).
        case endOfFile
        /// A socket error (ECONNRESET, EPIPE, ...).
        case error(RuntimeError)
        /// ``Connection/close()`` was called.
        case local

        public var description: String {
            switch self {
            case .endOfFile: return "end of file"
            case .error(let error): return error.description
            case .local: return "closed locally"
            }
        }
    }

    private struct Chunk {
        var bytes: [UInt8]
        var offset: Int
        /// Descriptors still to be sent with this chunk's first bytes (empty once sent).
        var fds: [Int32]
        /// One `send` larger than ``Connection/maxPendingBytes`` on its own (a 64 MiB reply): its
        /// unsent bytes do not count against the bound.
        var oversized = false
    }

    /// The socket descriptor (-1 after close).
    public private(set) var fd: Int32
    /// The reactor this connection lives on.
    public let reactor: Reactor
    /// Above this many queued bytes ``onOverflow`` is called (once per crossing). A single ``send(_:fds:)``
    /// larger than the bound does not count against it while it drains (one such send at a time): a peer
    /// that reads gets a reply of any size (QEMU bounds none); one that stops reading is still cut off
    /// by what follows it.
    public var maxPendingBytes: Int
    /// Called with each read: the bytes and the descriptors received with them (the handler owns the
    /// descriptors: it closes them or keeps them). Both are the reactor's scratch buffers, valid only
    /// during the call: handing them on without a copy saves an allocation or two per read on the
    /// proxy's path.
    public var onRead: ((UnsafeRawBufferPointer, UnsafeBufferPointer<Int32>) -> Void)?
    /// Called exactly once when the connection closes, for whatever reason.
    public var onClose: ((CloseReason) -> Void)?
    /// Called when queued output exceeds ``maxPendingBytes``; typically the owner closes the
    /// connection (a client that stopped reading). If nil, the connection closes itself with
    /// `.error(...)` code `.closed`.
    public var onOverflow: (() -> Void)?
    /// Logger with connection metadata.
    public var logger: Logger

    private var registration: Reactor.RegistrationID?
    private var queue: [Chunk] = []
    private var queueHead = 0
    private var overflowSignalled = false
    private var readingEnabled = true
    private var started = false
    private var closeNotified = false
    /// Set while `send` runs: closes it causes (write errors) notify on the next loop round, so the
    /// owner never sees `onClose` re-entrantly from its own `send` call.
    private var sending = false

    /// Bytes queued and not yet accepted by the kernel.
    public private(set) var pendingBytes = 0
    /// The part of ``pendingBytes`` in oversized sends (exempt from the bound).
    private var oversizedBytes = 0
    /// Total bytes read so far.
    public private(set) var bytesRead = 0
    /// Total bytes written so far.
    public private(set) var bytesWritten = 0

    /// Wraps a connected stream socket. Call ``start()`` after setting the callbacks.
    ///
    /// - Parameters:
    ///   - fd: a connected stream socket; the connection owns it from now on and makes it nonblocking.
    ///   - maxPendingBytes: output bound before ``onOverflow`` (default 16 MiB).
    public init(fd: Int32, reactor: Reactor, maxPendingBytes: Int = 16 << 20, logger: Logger? = nil) {
        self.fd = fd
        self.reactor = reactor
        self.maxPendingBytes = maxPendingBytes
        var logger = logger ?? reactor.logger
        logger[metadataKey: "fd"] = "\(fd)"
        self.logger = logger
        try? Sockets.setNonblocking(fd)
    }

    deinit {
        // Safety net when the reactor was torn down with the connection still open.
        for index in queueHead..<queue.count {
            for pending in queue[index].fds { Glibc.close(pending) }
        }
        if fd >= 0 {
            Glibc.close(fd)
        }
    }

    /// Registers with the reactor and starts reading. Idempotent.
    public func start() {
        guard !started, fd >= 0 else { return }
        started = true
        registeredInterest = currentInterest
        registration = reactor.register(fd: fd, interest: currentInterest) { [self] events in
            self.handle(events)
        }
    }

    /// `true` once closed (by the peer, an error, or ``close()``).
    public var isClosed: Bool { fd < 0 }

    /// The pid of the peer of a unix socket (SO_PEERCRED), or nil.
    public var peerPID: pid_t? {
        fd >= 0 ? Sockets.peerPID(fd) : nil
    }

    /// Pauses or resumes reading (backpressure on the peer). Pending output still drains.
    public var isReadingEnabled: Bool {
        get { readingEnabled }
        set {
            readingEnabled = newValue
            updateInterest()
        }
    }

    /// Queues `bytes` for sending with `fds` attached to their first byte.
    ///
    /// Tries to write at once when nothing is queued. Ignored (fds closed) after close.
    /// - Important: The connection takes ownership of `fds`: they are closed once sent or when the
    ///   connection closes. Pass duplicates if you need to keep them.
    public func send(_ bytes: [UInt8], fds: [Int32]) {
        sending = true
        defer { sending = false }
        guard fd >= 0 else {
            for pending in fds { Glibc.close(pending) }
            return
        }
        guard !bytes.isEmpty else {
            // Descriptors need at least one byte to travel with; refuse rather than lose them silently.
            precondition(fds.isEmpty, "Connection.send: descriptors need at least one byte to carry them")
            return
        }
        var offset = 0
        var fds = fds
        if pendingBytes == 0 {
            // Nothing queued: write straight from the caller's bytes; only what the kernel leaves waits.
            guard let sent = fds.withUnsafeBufferPointer({ writeDirectly(bytes, fds: $0) }) else { return }
            offset = sent
            if sent > 0 { fds = [] }  // they went with the first bytes
        }
        enqueue(bytes, from: offset, fds: fds)
    }

    /// Queues `bytes` for sending, without descriptors: ``send(_:fds:)`` without an array to make and
    /// release on every write.
    public func send(_ bytes: [UInt8]) {
        sending = true
        defer { sending = false }
        guard fd >= 0, !bytes.isEmpty else { return }
        var offset = 0
        if pendingBytes == 0 {
            guard let sent = writeDirectly(bytes, fds: UnsafeBufferPointer(start: nil, count: 0)) else { return }
            offset = sent
        }
        enqueue(bytes, from: offset, fds: [])
    }

    /// Queues what a send left from `offset` on (coalesced with a queued fd-less chunk when it may be),
    /// then checks the output bound.
    private func enqueue(_ bytes: [UInt8], from offset: Int, fds: [Int32]) {
        // One send larger than the bound is exempt while it drains, only one at a time: a peer that
        // stops reading and keeps asking for large replies is still cut off.
        let oversized = bytes.count > maxPendingBytes && oversizedBytes == 0
        if !oversized, fds.isEmpty, queue.count > queueHead, queue[queue.count - 1].fds.isEmpty,
            !queue[queue.count - 1].oversized, queue[queue.count - 1].bytes.count < 256 * 1024
        {
            queue[queue.count - 1].bytes.append(contentsOf: bytes)
        } else {
            queue.append(Chunk(bytes: bytes, offset: offset, fds: fds, oversized: oversized))
        }
        pendingBytes += bytes.count - offset
        if oversized { oversizedBytes += bytes.count - offset }
        if pendingBytes - oversizedBytes > maxPendingBytes {
            if !overflowSignalled {
                overflowSignalled = true
                logger.warning(
                    "output bound exceeded",
                    metadata: ["pending": "\(pendingBytes)", "limit": "\(maxPendingBytes)"])
                if let onOverflow {
                    onOverflow()
                } else {
                    closeNow(
                        reason: .error(
                            RuntimeError(code: .closed, message: "peer stopped reading: output bound exceeded")))
                }
            }
        } else {
            updateInterest()
        }
    }

    /// Closes the socket and the descriptors still queued; calls ``onClose`` with `.local` if it
    /// was not called yet. Idempotent.
    public func close() {
        closeNow(reason: .local)
    }

    // MARK: Internals

    private var currentInterest: Reactor.Interest {
        var interest: Reactor.Interest = []
        if readingEnabled { interest.insert(.read) }
        if pendingBytes > 0 { interest.insert(.write) }
        return interest
    }

    /// The interest last given to the reactor: most sends leave it unchanged, and asking the reactor
    /// costs a lookup.
    private var registeredInterest: Reactor.Interest?

    private func updateInterest() {
        guard let registration else { return }
        let interest = currentInterest
        if interest != registeredInterest {
            registeredInterest = interest
            reactor.setInterest(interest, for: registration)
        }
    }

    private func handle(_ events: Reactor.Events) {
        if events.contains(.writable) || (events.contains(.error) && pendingBytes > 0) {
            flush()
            if fd < 0 { return }
        }
        if events.contains(.readable) || events.contains(.error) {
            readOnce()
        }
    }

    private func readOnce() {
        guard fd >= 0 else { return }
        var fdCount = 0
        var truncated: Int32 = 0
        let socket = fd
        let buffer = reactor.readBuffer
        let fdPointer = reactor.fdBuffer
        let count = cqmp_recvmsg_fds(
            socket, buffer.baseAddress, buffer.count, fdPointer.baseAddress, fdPointer.count, &fdCount, &truncated)
        if count < 0 {
            let err = errno
            if err == EAGAIN || err == EWOULDBLOCK || err == EINTR { return }
            closeNow(reason: .error(.systemCall("recvmsg", errno: err)))
            return
        }
        if truncated != 0 {
            logger.error("received descriptors were truncated (MSG_CTRUNC): the kernel closed the extra ones")
        }
        let fds = UnsafeBufferPointer(rebasing: fdPointer[0..<fdCount])
        if count == 0 {
            for received in fds { Glibc.close(received) }
            closeNow(reason: .endOfFile)
            return
        }
        bytesRead += count
        if let onRead {
            onRead(UnsafeRawBufferPointer(rebasing: buffer[0..<count]), fds)
        } else {
            for received in fds { Glibc.close(received) }
        }
    }

    /// With nothing queued, writes `bytes` straight from the caller's array. Returns how many bytes
    /// the kernel took when some are left (0 on EAGAIN; `fds` went with the first bytes of a partial
    /// write), nil when it took them all or the write failed and the connection closed.
    private func writeDirectly(_ bytes: [UInt8], fds: UnsafeBufferPointer<Int32>) -> Int? {
        let socket = fd
        while true {
            let sent = bytes.withUnsafeBytes { raw in
                cqmp_sendmsg_fds(socket, raw.baseAddress!, raw.count, fds.baseAddress, fds.count, 0)
            }
            if sent < 0 {
                let err = errno
                if err == EINTR { continue }
                if err == EAGAIN || err == EWOULDBLOCK { return 0 }
                for pending in fds { Glibc.close(pending) }
                closeNow(reason: .error(.systemCall("sendmsg", errno: err)))
                return nil
            }
            // The kernel holds its own references to the fds now; ours go.
            for passed in fds { Glibc.close(passed) }
            bytesWritten += sent
            return sent == bytes.count ? nil : sent
        }
    }

    /// Writes queued chunks until the queue is empty or the kernel says EAGAIN.
    private func flush() {
        while queueHead < queue.count, fd >= 0 {
            let sent: Int
            let fds = queue[queueHead].fds
            let offset = queue[queueHead].offset
            let socket = fd
            sent = queue[queueHead].bytes.withUnsafeBytes { raw in
                fds.withUnsafeBufferPointer { fdPointer in
                    cqmp_sendmsg_fds(
                        socket, raw.baseAddress! + offset, raw.count - offset, fdPointer.baseAddress, fdPointer.count,
                        0)
                }
            }
            if sent < 0 {
                let err = errno
                if err == EINTR { continue }
                if err == EAGAIN || err == EWOULDBLOCK { break }
                closeNow(reason: .error(.systemCall("sendmsg", errno: err)))
                return
            }
            if !fds.isEmpty {
                // The kernel holds its own references now; ours go.
                for passed in fds { Glibc.close(passed) }
                queue[queueHead].fds = []
            }
            bytesWritten += sent
            pendingBytes -= sent
            if queue[queueHead].oversized { oversizedBytes -= sent }
            queue[queueHead].offset += sent
            if queue[queueHead].offset == queue[queueHead].bytes.count {
                queueHead += 1
            } else {
                break
            }
        }
        if queueHead == queue.count {
            queue.removeAll(keepingCapacity: queue.capacity <= 64)
            queueHead = 0
        } else if queueHead > 64 && queueHead * 2 > queue.count {
            queue.removeFirst(queueHead)
            queueHead = 0
        }
        if pendingBytes - oversizedBytes <= maxPendingBytes {
            overflowSignalled = false
        }
        updateInterest()
    }

    private func closeNow(reason: CloseReason) {
        guard fd >= 0 else { return }
        if let registration {
            reactor.unregister(registration)
            self.registration = nil
        }
        Glibc.close(fd)
        fd = -1
        for index in queueHead..<queue.count {
            for pending in queue[index].fds { Glibc.close(pending) }
        }
        queue.removeAll()
        queueHead = 0
        pendingBytes = 0
        oversizedBytes = 0
        switch reason {
        case .local: logger.debug("connection closed locally")
        case .endOfFile: logger.debug("peer closed the connection")
        case .error(let error): logger.debug("connection closed", metadata: ["error": "\(error)"])
        }
        if !closeNotified {
            closeNotified = true
            let callback = onClose
            onClose = nil
            onRead = nil
            onOverflow = nil
            if sending, case .error = reason {
                reactor.schedule(after: .zero) { callback?(reason) }
            } else {
                callback?(reason)
            }
        }
    }
}
