import Logging
import QMPProxy
import QMPRuntime
import QMPWire
import VFIOTracking

#if canImport(Glibc)
import Glibc
#endif

/// The QEMU side of ``SidecarCore``: connecting (with retries), a lost connection, how the sidecar
/// ends with QEMU (exit status from the way QEMU ended), pausing client reads while QEMU is behind.
extension SidecarCore {
    // MARK: Upstream

    func connectUpstream(deadline: ContinuousClock.Instant, interval: Duration = .milliseconds(20)) {
        retry = ConnectRetry(address: upstreamAddress, reactor: reactor, deadline: deadline, interval: interval) {
            result in
            self.retry = nil
            switch result {
            case .success(let fd): self.upstreamConnected(fd)
            case .failure(let error): self.fail(SidecarError(.upstream, error.message))
            }
        }
    }

    func upstreamConnected(_ fd: Int32) {
        var connectionLogger = logger
        connectionLogger[metadataKey: "upstream"] = "\(upstreamAddress)"
        let connection = Connection(fd: fd, reactor: reactor, maxPendingBytes: .max, logger: connectionLogger)
        if case .unix = upstreamAddress {
            qemuPID = configuration.qemuPID ?? connection.peerPID
        } else {
            qemuPID = configuration.qemuPID
        }
        connection.onRead = { bytes, fds in
            if fds.isEmpty, let (client, sidecarID) = self.router.expressReply(bytes, line: &self.expressReplyLine) {
                // The express lane; metrics count it as they count the general path's actions.
                if let instruments = self.instruments {
                    instruments.readFromQEMU(bytes.count)
                    instruments.replyRouted(sidecarID)
                    instruments.sentToClient(self.expressReplyLine.count)
                }
                // QEMU's backlog is as it was: no reading to pause or resume (`updateClientReading`).
                self.clients[client]?.send(self.expressReplyLine)
                self.instruments?.changed()
                return
            }
            for fd in fds { Glibc.close(fd) }
            self.instruments?.readFromQEMU(bytes.count)
            self.performRouter { router, actions in router.upstreamReceived(bytes, into: &actions) }
            self.updateClientReading()
            self.instruments?.changed()
        }
        connection.onClose = { reason in self.upstreamLost(reason.description) }
        upstream = connection
        ending.sessionStarted()
        connection.start()
        logger.info(
            "connected to QEMU",
            metadata: ["upstream": "\(upstreamAddress)", "qemu-pid": "\(qemuPID.map(String.init) ?? "unknown")"])
    }

    func upstreamLost(_ reason: String) {
        upstream = nil
        internalReplies = [:]
        gateGeneration += 1
        if let gateTimer { reactor.cancel(gateTimer) }
        gateTimer = nil
        hooks?.upstreamClosed()
        instruments?.upstreamClosed()
        instruments?.changed()
        let clientCount = clients.count
        perform(router.upstreamClosed())
        if configuration.reconnect {
            logger.warning(
                "QEMU closed the QMP connection; waiting for a new QEMU (--reconnect)",
                metadata: ["reason": "\(reason)", "clients-disconnected": "\(clientCount)"])
            connectUpstream(deadline: .now + .seconds(100 * 365 * 24 * 3600), interval: .milliseconds(100))
        } else {
            endWithQEMU(reason: reason, clientCount: clientCount)
        }
    }

    /// Without `--reconnect` the run ends with QEMU's connection: cleanly (status 0) when QEMU shut
    /// down normally (``QEMUEnding``), as a failure otherwise.
    func endWithQEMU(reason: String, clientCount: Int) {
        var exitStatus: Int32?
        if ending.verdict() == .unexpected, let pid = qemuPID {
            switch ChildExitStatus.of(pid) {
            case .running:
                // QEMU is our child and closed its monitor just before exiting: wait for its status.
                awaitChildExit(pid) { self.endWithQEMU(reason: reason, clientCount: clientCount) }
                return
            case .exited(let status): exitStatus = status
            case .notAChild: break
            }
        }
        switch ending.verdict(exitStatus: exitStatus) {
        case .normal(let shutdown):
            logger.info(
                "QEMU shut down; exiting",
                metadata: ["reason": "\(shutdown)", "clients-disconnected": "\(clientCount)"])
            stop()
        case .unexpected:
            let status = exitStatus.map { " (exit status \($0))" } ?? ""
            fail(
                SidecarError(
                    .upstreamClosed,
                    "QEMU closed the QMP connection (\(reason))\(status) without shutting down; \(clientCount) client(s) disconnected. Use --reconnect to wait for a new QEMU instead of exiting."
                ))
        }
    }

    /// Calls `then` once the child `pid` exited, or after two seconds.
    func awaitChildExit(_ pid: pid_t, then: @escaping () -> Void) {
        var done = false
        func finish() {
            guard !done else { return }
            done = true
            childExitWatcher?.cancel()
            childExitWatcher = nil
            then()
        }
        let timer = reactor.schedule(after: .seconds(2)) { finish() }
        childExitWatcher = try? ProcessExitWatcher(pid: pid, reactor: reactor) {
            self.reactor.cancel(timer)
            finish()
        }
        if childExitWatcher == nil {
            reactor.cancel(timer)
            finish()
        }
    }

    /// Backpressure: while QEMU lets more than ``upstreamBacklogLimit`` bytes of commands pile up,
    /// stop reading clients (their commands wait in their own socket buffers, as with QEMU directly);
    /// resume once QEMU has caught up to half of it.
    func updateClientReading() {
        let backlog = upstream?.pendingBytes ?? 0
        let pause = clientsPaused ? backlog > Self.upstreamBacklogLimit / 2 : backlog > Self.upstreamBacklogLimit
        if pause != clientsPaused { setClientsPaused(pause, backlog: backlog) }
    }

    @inline(never)
    private func setClientsPaused(_ pause: Bool, backlog: Int) {
        clientsPaused = pause
        logger.debug("client reading \(pause ? "paused" : "resumed")", metadata: ["upstream-backlog": "\(backlog)"])
        for (id, client) in clients.entries { client.isReadingEnabled = !pause && !fullClients.contains(id) }
    }

    func fail(_ error: SidecarError) {
        logger.error("\(error.message)")
        outcome.fail(error)
        stop()
    }

    /// Ends the run: clients and listeners closed, the reactor stopped.
    func stop() {
        for client in clients.values { client.close() }
        for listener in listeners { listener.close() }
        reactor.stop()
    }
}
